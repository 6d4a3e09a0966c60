"""Supervised data for the recipes: LLaVA conversation JSON (+ image folder) and LLaVA-NeXT data YAML mixtures,
tokenised with the loss on answer tokens only.

A sample is `{"id", "image" (optional; a file name or a list of them), "conversations": [{"from": "human" | "gpt" |
"system", "value": "..."}]}`; rows of parquet / arrow shards (`shards.py`, the LLaVA-OneVision data release's
layout) have the same shape with the image held in memory, `{"bytes": <encoded image>, "path": name}`. Human turns
hold one `<image>` placeholder per image (one is put in front of the first turn when missing, as LLaVA does).
Labels: the text of each assistant turn and its end-of-turn token; everything else is -100. Images go through
`images.open_image` (EXIF orientation applied, any PIL mode to RGB: 16-bit scaled, transparency on white). A sample
that cannot be used (missing or corrupt image, an image the model cannot represent, malformed conversation, longer
than the maximum length, no answer tokens) is skipped and reported with the batch, or raises at once with
`strict=True`.
"""

from __future__ import annotations

import json
import logging
import random
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..processing.images import ImageError, open_image, unsupported_reason
from ..processing.processors import images_kwargs, process_images
from ..processing.templates import IMAGE_PLACEHOLDER, TEMPLATES, Template

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# What a sample keeps of the image processor's output: what the families' forwards take.
IMAGE_KEYS = ("pixel_values", "image_sizes", "image_grid_thw")


class SampleError(ValueError):
    """A sample that cannot be trained on; `reason` is a short category for the summary."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# ---------------------------------------------------------------------------------------------------------------------
# Loading: JSON / JSONL files and YAML mixtures


def read_records(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix == ".jsonl":
        with path.open() as f:
            return [json.loads(line) for line in f if line.strip()]
    records = json.loads(path.read_text())
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of samples, got {type(records).__name__}.")
    return records


def strategy_indices(size: int, strategy: str, seed: int = 0) -> range | list[int] | None:
    """The rows of a `size`-row source that LLaVA-NeXT's `sampling_strategy` keeps, in their order: None for `all`;
    `first:N%`, `end:N%` (a range), `random:N%` (seeded; a list); a count instead of N% (at most `size`)."""
    if strategy == "all":
        return None
    kind, _, amount = strategy.partition(":")
    if kind not in ("first", "end", "random") or not amount:
        raise ValueError(
            f"sampling_strategy {strategy!r}: use 'all', 'first:N%', 'end:N%' or 'random:N%' (or a count)."
        )
    try:
        count = int(size * float(amount[:-1]) / 100) if amount.endswith("%") else int(amount)
    except ValueError:
        raise ValueError(
            f"sampling_strategy {strategy!r}: the amount must be a percentage like 10% or a count."
        ) from None
    count = max(0, min(count, size))
    if kind == "first":
        return range(count)
    if kind == "end":
        return range(size - count, size)
    # the indices random.Random(seed).sample(records, count) picks: the records chosen are the same
    return random.Random(seed).sample(range(size), count)


def sample_records(records, strategy: str, seed: int = 0):
    """LLaVA-NeXT's `sampling_strategy`: `all`, `first:N%`, `end:N%`, `random:N%` (or a count instead of N%).
    A list gives a list; a lazy record view (`shards.ShardRecords`, `shards.MixedRecords`) a view."""
    chosen = strategy_indices(len(records), strategy, seed)
    if chosen is None:
        return records
    if isinstance(records, list):
        return [records[i] for i in chosen]
    return records.select(chosen)


def load_records(data_path: str | Path, seed: int = 0):
    """Samples from a LLaVA JSON/JSONL file, from parquet / arrow shards with image bytes (a `.parquet` / `.arrow`
    file, a folder of them, or a glob: the layout of the LLaVA-OneVision data release, see `shards.py`), or from
    a YAML mixture `datasets: [{json_path | data_files, sampling_strategy}]` (relative paths resolve against the
    YAML's folder; `random:` sampling is seeded). JSON alone gives a list of records, as always; with shards, a
    lazy sequence of records (`shards.ShardRecords` / `MixedRecords`) that reads rows from `datasets`'
    memory-mapped Arrow tables on access (parquet is converted into the `datasets` cache once)."""
    from . import shards

    data_path = Path(data_path) if not isinstance(data_path, Path) else data_path
    if data_path.suffix not in (".yaml", ".yml"):
        if shards.is_shard_source(data_path):
            return shards.shard_records(shards.resolve_data_files(data_path), source=str(data_path))
        return read_records(data_path)
    parts = []
    for entry in shards.mixture_entries(data_path):
        records = (
            read_records(entry.path) if entry.kind == "json" else shards.shard_records(entry.files, source=entry.name)
        )
        chosen = sample_records(records, entry.strategy, seed)
        logger.info("data mixture: %d samples from %s (%s)", len(chosen), entry.name, entry.strategy)
        parts.append(chosen)
    if all(isinstance(part, list) for part in parts):
        return [record for part in parts for record in part]
    return shards.MixedRecords(parts)


# ---------------------------------------------------------------------------------------------------------------------
# One sample: images, conversation checks, tokens and labels


def _is_image_ref(image) -> bool:
    """A file name, or an image held in memory as `datasets` stores one: `{"bytes": <encoded image>, "path": name}`
    (`bytes` None: the image is the file `path`)."""
    if isinstance(image, str):
        return bool(image)
    if not isinstance(image, dict):
        return False
    data, path = image.get("bytes"), image.get("path")
    return isinstance(data, (bytes, bytearray, memoryview)) or (data is None and isinstance(path, str) and bool(path))


def image_name(image) -> str:
    """How an image of `image_files` is named in messages: its file name, else `<N bytes>`."""
    if isinstance(image, str):
        return image
    return image.get("path") or f"<{memoryview(image['bytes']).nbytes} bytes>"


def image_files(record: dict) -> list:
    """The images of a record: file names (relative to the image folder), or in-memory images `{"bytes", "path"}`
    (rows of parquet / arrow shards, `shards.py`)."""
    image = record.get("image")
    if image is None:
        return []
    files = image if isinstance(image, list) else [image]
    if not all(_is_image_ref(f) for f in files):
        raise SampleError(
            "malformed",
            f"'image' must be a file name, an image {{'bytes', 'path'}} or a list of them, got {reprlib.repr(image)}",
        )
    return files


def check_turns(record: dict, num_images: int) -> list[tuple[str, str]]:
    """(role, text) pairs after the checks: alternating user/assistant turns after an optional system turn, ending
    with the assistant, one `<image>` per image."""
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise SampleError("malformed", "'conversations' must be a non-empty list of {from, value}")
    turns = []
    for turn in conversations:
        if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
            raise SampleError(
                "malformed", f"a turn must be {{'from': one of {sorted(ROLES)}, 'value': str}}, got {turn!r}"
            )
        turns.append((ROLES[turn["from"]], turn["value"]))
    body = turns[1:] if turns[0][0] == "system" else turns
    expected = ["user", "assistant"] * (len(body) // 2)
    if len(body) < 2 or len(body) % 2 or [role for role, _ in body] != expected:
        raise SampleError("malformed", "turns must alternate human, gpt, ... and end with gpt")
    placeholders = sum(text.count(IMAGE_PLACEHOLDER) for _, text in body)
    if placeholders == 0 and num_images:
        first = 1 if turns[0][0] == "system" else 0
        turns[first] = ("user", (IMAGE_PLACEHOLDER + "\n") * num_images + turns[first][1])
    elif placeholders != num_images:
        raise SampleError("malformed", f"{placeholders} <image> placeholders for {num_images} images")
    return turns


def tokenize(
    turns: list[tuple[str, str]], template: Template, tokenizer, image_tokens: list[str]
) -> tuple[list[int], list[int]]:
    """Token ids and labels of a checked conversation. `image_tokens[k]` replaces the k-th `<image>` (the processor's
    own expansion, so the count matches the model's packing). BOS goes first, once, when the template or the
    tokenizer asks for it (`Template.bos`); a `whole_text` template is tokenised in one piece, a token labelled when
    its characters overlap labelled text (SentencePiece's word-start marker joins a token to the text after it)."""
    images = iter(image_tokens)

    def expand(text: str) -> str:
        parts = text.split(IMAGE_PLACEHOLDER)
        return parts[0] + "".join(next(images) + part for part in parts[1:])

    pieces: list[tuple[str, bool]] = []  # (text, labelled)
    system = [text for role, text in turns if role == "system"]
    if template.system and (system or template.default_system):  # no block where neither gives a system text
        pieces.append((template.system.format(system[0] if system else template.default_system), False))
    for role, text in turns:
        if role == "user":
            if not template.keep_user_text:
                text = IMAGE_PLACEHOLDER * text.count(IMAGE_PLACEHOLDER)
            pieces.append((template.user.format(expand(text)), False))
        elif role == "assistant":
            pieces += [
                (template.assistant, False),
                (text, True),
                (template.end_of_turn, True),
                (template.after_turn, False),
            ]
    pieces = [(text, labelled) for text, labelled in pieces if text]

    input_ids, labels = [], []
    if template.bos or (getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None):
        if tokenizer.bos_token_id is None:
            raise ValueError(
                f"template {template.name!r} starts with a BOS token, but the tokenizer has none; "
                f"choose the template of this model's LLM with --template."
            )
        input_ids.append(tokenizer.bos_token_id)
        labels.append(IGNORE_INDEX)
    if not template.whole_text:
        for text, labelled in pieces:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            input_ids.extend(ids)
            labels.extend(ids if labelled else [IGNORE_INDEX] * len(ids))
        return input_ids, labels
    spans, start = [], 0
    for text, labelled in pieces:
        if labelled:
            spans.append((start, start + len(text)))
        start += len(text)
    encoded = tokenizer("".join(text for text, _ in pieces), add_special_tokens=False, return_offsets_mapping=True)
    for token, (begin, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        input_ids.append(token)
        labels.append(token if any(begin < b and a < end for a, b in spans) else IGNORE_INDEX)
    return input_ids, labels


def check_template(template: Template, tokenizer) -> None:
    """The tokenizer knows the template's own tokens (e.g. Qwen's `<|im_start|>`, Llama's `</s>`) as single tokens:
    a conversation in another LLM's format would otherwise train as ordinary text, silently wrong."""
    vocab = tokenizer.get_vocab()
    missing = [token for token in template.special_tokens if token not in vocab]
    if missing:
        raise ValueError(
            f"template {template.name!r} writes {missing}, which the tokenizer does not have as tokens: "
            f"it is another LLM's format. Choose this model's with --template: one of "
            f"{sorted(TEMPLATES)}."
        )


class SupervisedDataset(Dataset):
    """LLaVA conversations, tokenised, with images through the processor's image processor.

    `__getitem__` never raises for a bad sample unless `strict`: it records why the sample was skipped and returns
    the next usable one (so batch sizes, and a resumed run, stay the same), with the skips under `"skipped"`.
    An image the model cannot represent (`images.unsupported_reason`, checked against `model_config` when given, else
    against the layout the processor implies) is skipped as "unsupported image" with the reason.
    """

    def __init__(
        self,
        records: list[dict],
        processor,
        image_folder: str | Path | None = None,
        template: str = "qwen_1_5",
        max_length: int = 16384,
        strict: bool = False,
        model_config=None,
    ) -> None:
        if template not in TEMPLATES:
            raise ValueError(f"template {template!r}: use one of {sorted(TEMPLATES)}.")
        if not records:
            raise ValueError("the data set is empty.")
        self.records = records
        self.processor = processor
        self.image_folder = Path(image_folder) if image_folder else None
        self.template = TEMPLATES[template]
        check_template(self.template, processor.tokenizer)
        self.max_length = max_length
        self.strict = strict
        self.model_config = model_config
        self.images_kwargs = images_kwargs(processor)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        skipped = []
        for attempt in range(len(self.records)):
            i = (index + attempt) % len(self.records)
            try:
                sample = self.build(self.records[i])
            except SampleError as error:
                name = self.records[i].get("id", "?") if isinstance(self.records[i], dict) else "?"
                if self.strict:
                    raise ValueError(
                        f"sample {i} (id {name!r}): {error}. Run without --strict_data to skip such samples."
                    ) from error
                skipped.append({"index": i, "id": str(name), "reason": error.reason, "detail": str(error)})
                continue
            sample["skipped"] = skipped
            return sample
        raise RuntimeError(f"no usable sample in the whole data set; the first problems: {skipped[:3]}")

    def load_image(self, name) -> Image.Image:
        """The image `name` (under `image_folder`; or an in-memory image `{"bytes", "path"}`, decoded from its
        bytes), upright and in RGB; "missing image" / "corrupt image" / "unsupported image" (over PIL's pixel
        limit) raise `SampleError`."""
        if isinstance(name, dict):
            if name.get("bytes") is None:  # an image stored by path only
                name = name["path"]
            else:
                try:
                    return open_image(name["bytes"], name=image_name(name))
                except ImageError as error:
                    raise SampleError(error.reason, error.detail) from error
        path = self.image_folder / name if self.image_folder else Path(name)
        try:
            return open_image(path)
        except ImageError as error:
            raise SampleError(error.reason, error.detail) from error

    def build(self, record: dict) -> dict[str, Any]:
        if not isinstance(record, dict):
            raise SampleError("malformed", f"a sample must be a JSON object, got {type(record).__name__}")
        files = image_files(record)
        turns = check_turns(record, len(files))
        out: dict[str, Any] = {}
        image_tokens = []
        if files:
            images = [self.load_image(name) for name in files]
            for name, image in zip(files, images):
                reason = unsupported_reason(self.processor, image, self.model_config, multi_image=len(images) > 1)
                if reason:
                    raise SampleError("unsupported image", f"{image_name(name)}: {reason}")
            try:
                image_inputs, image_tokens = process_images(self.processor, images, self.images_kwargs)
            except Exception as error:  # e.g. Qwen's limit on aspect ratios; a sample, not the run
                sizes = ", ".join(f"{image_name(name)} ({i.width}x{i.height})" for name, i in zip(files, images))
                raise SampleError("unsupported image", f"{sizes}: the image processor failed: {error!r}") from error
            # (images, 3, H, W) for LLaVA-1.5, Gemma 3; (images, crops, 3, H, W) and image_sizes for the anyres
            # families; (tiles, 3, H, W) for InternVL; (patches, C x T x P x P) and image_grid_thw for Qwen-VL.
            out.update({k: image_inputs[k] for k in IMAGE_KEYS if k in image_inputs})
        input_ids, labels = tokenize(turns, self.template, self.processor.tokenizer, image_tokens)
        if len(input_ids) > self.max_length:
            raise SampleError("over-length", f"{len(input_ids)} tokens > max length {self.max_length}")
        if all(label == IGNORE_INDEX for label in labels):
            raise SampleError("malformed", "no answer tokens")
        out.update(input_ids=torch.tensor(input_ids), labels=torch.tensor(labels))
        return out


BATCH_INFO = "batch_info"  # the batch's key for what is not a model input (skip records, token accounting)


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch without `BATCH_INFO`: what the model takes, for a model called by hand."""
    return {k: v for k, v in batch.items() if k != BATCH_INFO}


@dataclass
class Collator:
    """Right-pads tokens (labels with -100) and batches the images as `family`'s forward takes them (a `FAMILIES`
    key; default LLaVA-OneVision): LLaVA-1.5's and Gemma 3's `(images, 3, H, W)` pixels and InternVL's tiles are
    concatenated (Pixtral's images of different sizes padded to the largest first, with `image_sizes`); the anyres
    families' `(images, crops, 3, H, W)` are padded with zero crops to the batch's largest crop count, with
    `image_sizes`; the Qwen-VL families' flattened patch rows are concatenated, with `image_grid_thw`. OneVision
    also gets `batch_num_images` (images per sample: a sample with several gets base crops only). The token-type
    input the family's forward takes (`Family.token_type_key`: Gemma 3's `token_type_ids`, Qwen-VL's
    `mm_token_type_ids`) comes from the placeholder tokens (`Family.token_inputs`), which needs `model_config`. What
    is not a model input travels under one key, `BATCH_INFO`: the samples' skip records (`"skipped"`, for the
    trainer to count). `packing.PackingCollator` is the padding-free variant (`--padding_free true`)."""

    pad_token_id: int
    family: str = "llava_onevision"
    model_config: Any = None

    def __post_init__(self) -> None:
        import inspect

        from ..families import get_family

        self.adapter = get_family(self.family)
        forward = inspect.signature(self.adapter.model_class.forward).parameters
        self.takes_num_images = "batch_num_images" in forward
        if self.adapter.token_type_key is not None and self.model_config is None:
            raise ValueError(
                f"{self.adapter.title}'s forward takes `{self.adapter.token_type_key}`, which the collator computes "
                f"from the model's config: pass model_config (build_collator does)."
            )

    def token_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The family's token-type input for `input_ids` (none for most families)."""
        if self.adapter.token_type_key is None:
            return {}
        return self.adapter.token_inputs(self.model_config, input_ids)

    def __call__(self, samples: list[dict]) -> dict[str, Any]:
        length = max(len(s["input_ids"]) for s in samples)
        input_ids = torch.full((len(samples), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
        for row, s in enumerate(samples):
            n = len(s["input_ids"])
            input_ids[row, :n], labels[row, :n], attention_mask[row, :n] = s["input_ids"], s["labels"], 1
        batch: dict[str, Any] = dict(input_ids=input_ids, labels=labels, attention_mask=attention_mask)
        batch.update(self.token_inputs(input_ids))
        batch.update(self.batch_images(samples))
        batch[BATCH_INFO] = {"skipped": [record for s in samples for record in s.get("skipped", ())]}
        return batch

    def batch_images(self, samples: list[dict]) -> dict[str, Any]:
        """The images of `samples`, in the samples' order (the order of their image tokens in the batch), as the
        family's forward takes them; {} when no sample has one. Shared with `packing.PackingCollator`."""
        with_images = [s for s in samples if "pixel_values" in s]
        if not with_images:
            return {}
        batch: dict[str, Any] = {}
        pixels = [s["pixel_values"] for s in with_images]
        if pixels[0].dim() == 5:  # anyres: pad every image to the batch's largest crop count
            crops = max(pv.shape[1] for pv in pixels)
            pixels = [
                torch.cat([pv, pv.new_zeros((pv.shape[0], crops - pv.shape[1], *pv.shape[2:]))], dim=1) for pv in pixels
            ]
        elif pixels[0].dim() == 4 and len({pv.shape[-2:] for pv in pixels}) > 1:
            # images at their own size (Pixtral): zero-padded at the bottom and right, as its processor pads a batch
            height, width = max(pv.shape[-2] for pv in pixels), max(pv.shape[-1] for pv in pixels)
            pixels = [torch.nn.functional.pad(pv, (0, width - pv.shape[-1], 0, height - pv.shape[-2])) for pv in pixels]
        batch["pixel_values"] = torch.cat(pixels)
        for key in ("image_sizes", "image_grid_thw"):
            if key in with_images[0]:
                batch[key] = torch.cat([s[key] for s in with_images])
        if self.takes_num_images:
            batch["batch_num_images"] = torch.tensor([len(s.get("pixel_values", ())) for s in samples])
        return batch
