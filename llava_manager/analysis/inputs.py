"""Analysis inputs: images and prompts from a folder or a LLaVA JSON file, encoded one sample at a time."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from ..data import IMAGE_PLACEHOLDER
from ..prompts import chat_prompt

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
DEFAULT_PROMPT = "Describe the image in detail."


def load_samples(source: str | Path, image_folder: str | Path | None = None, limit: int | None = None,
                 prompt: str = DEFAULT_PROMPT) -> list[tuple[Image.Image, str]]:
    """(image, prompt) pairs. A folder: its images, each with the text of a same-named `.txt` file as prompt, else
    `prompt`. A LLaVA JSON file: samples with one image, the first human turn as prompt (images relative to
    `image_folder`, default the JSON's folder)."""
    source = Path(source)
    pairs = []
    if source.is_dir():
        for path in sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            text = path.with_suffix(".txt")
            pairs.append((path, text.read_text().strip() if text.exists() else prompt))
    elif source.suffix in (".json", ".jsonl"):
        from ..data import read_records

        folder = Path(image_folder) if image_folder else source.parent
        for record in read_records(source):
            if isinstance(record.get("image"), str) and record.get("conversations"):
                text = record["conversations"][0]["value"].replace(IMAGE_PLACEHOLDER, "").strip()
                pairs.append((folder / record["image"], text or prompt))
    else:
        raise ValueError(f"inputs {source}: give a folder of images or a LLaVA .json/.jsonl file.")
    pairs = pairs[:limit] if limit else pairs
    if not pairs:
        raise ValueError(f"inputs {source}: no images found.")
    return [(Image.open(path).convert("RGB"), text) for path, text in pairs]


def encode(processor, image: Image.Image, prompt: str, device=None, prompt_format: str = "qwen_1_5") -> dict:
    """Model inputs of one sample in `prompt_format` (see `llava_manager.prompts`), with the images' token positions
    marked by the processor's image token."""
    text = chat_prompt(processor, prompt, 1, prompt_format)
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    return {k: v.to(device) if device is not None else v for k, v in inputs.items()}
