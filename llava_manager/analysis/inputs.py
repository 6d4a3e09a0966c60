"""Analysis inputs: images and prompts from a folder or a LLaVA JSON file, encoded one sample at a time."""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

from ..processing.images import ImageError, open_image, unsupported_reason
from ..processing.prompts import chat_prompt
from ..processing.templates import IMAGE_PLACEHOLDER

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
DEFAULT_PROMPT = "Describe the image in detail."


def load_samples(
    source: str | Path,
    image_folder: str | Path | None = None,
    limit: int | None = None,
    prompt: str = DEFAULT_PROMPT,
    processor=None,
) -> list[tuple[Image.Image, str]]:
    """(image, prompt) pairs. A folder: its images, each with the text of a same-named `.txt` file as prompt, else
    `prompt`. A LLaVA JSON file: samples with one image, the first human turn as prompt (images relative to
    `image_folder`, default the JSON's folder). Images are upright RGB (`images.open_image`); a missing or corrupt
    one, or one `processor` (when given) cannot represent, is skipped with a warning naming it and why."""
    source = Path(source)
    pairs = []
    if source.is_dir():
        for path in sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            text = path.with_suffix(".txt")
            pairs.append((path, text.read_text().strip() if text.exists() else prompt))
    elif source.suffix in (".json", ".jsonl"):
        from ..training.data import read_records

        folder = Path(image_folder) if image_folder else source.parent
        for record in read_records(source):
            if isinstance(record.get("image"), str) and record.get("conversations"):
                text = record["conversations"][0]["value"].replace(IMAGE_PLACEHOLDER, "").strip()
                pairs.append((folder / record["image"], text or prompt))
    else:
        raise ValueError(f"inputs {source}: give a folder of images or a LLaVA .json/.jsonl file.")
    if not pairs:
        raise ValueError(f"inputs {source}: no images found.")
    samples = []
    for path, text in pairs:
        if limit and len(samples) == limit:
            break
        try:
            image = open_image(path)
        except ImageError as error:
            logger.warning("inputs: skipping %s", error)
            continue
        reason = unsupported_reason(processor, image) if processor is not None else None
        if reason:
            logger.warning("inputs: skipping unsupported image: %s: %s", path, reason)
            continue
        samples.append((image, text))
    if not samples:
        raise ValueError(f"inputs {source}: none of its {len(pairs)} images could be used (see the warnings).")
    return samples


def encode(processor, image: Image.Image, prompt: str, device=None, prompt_format: str = "qwen_1_5") -> dict:
    """Model inputs of one sample in `prompt_format` (see `llava_manager.processing.prompts`), with the images'
    token positions
    marked by the processor's image token."""
    text = chat_prompt(processor, prompt, 1, prompt_format)
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    return {k: v.to(device) if device is not None else v for k, v in inputs.items()}
