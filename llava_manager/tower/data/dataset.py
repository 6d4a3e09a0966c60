"""From records to model inputs: `TowerDataset` decodes the images of any reader's records (an image that fails to
decode is skipped, logged and listed in `dataset.skipped`, or raises with `strict=True`); `encode_texts` and
`encode_images` turn texts and images into BridgeTower inputs with a `BridgeTowerProcessor` (`input_ids`,
`attention_mask` from the tokenizer, at most `MAX_TEXT_LENGTH` = 50 tokens, truncated; `pixel_values`, `pixel_mask`
from the image processor)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from ...processing.images import ImageError, open_image

logger = logging.getLogger(__name__)

MAX_TEXT_LENGTH = 50  # ManagerTower's fine-tuning configs use max_text_len 50 (src/config.py; 40 for some tasks)


class TowerDataset(Dataset):
    """Records of any reader of `tower.data` with their images decoded: item = {"record": the record, "images":
    [PIL RGB image, ...]} (the record's "images" list, or its one "image"). An image that fails to decode is
    skipped: the next usable record is returned in its place (so batch sizes stay the same), the skip is logged and
    kept in `self.skipped` (of this process); with `strict=True` it raises `ImageError` instead."""

    def __init__(self, records: list[dict], strict: bool = False) -> None:
        self.records, self.strict = records, strict
        self.skipped: list[dict] = []

    def __len__(self) -> int:
        return len(self.records)

    @staticmethod
    def image_paths(record: dict) -> list[str]:
        return list(record["images"]) if "images" in record else [record["image"]]

    def __getitem__(self, index: int) -> dict[str, Any]:
        for offset in range(len(self.records)):
            i = (index + offset) % len(self.records)
            try:
                images = [open_image(p) for p in self.image_paths(self.records[i])]
            except ImageError as error:
                if self.strict:
                    raise
                self.skipped.append({"index": i, "reason": error.reason, "detail": error.detail})
                logger.warning("skipping sample %d: %s", i, error)
                continue
            return {"record": self.records[i], "images": images}
        raise RuntimeError(f"no usable sample in the whole data set; the first problems: {self.skipped[:3]}")


def encode_texts(
    processor,
    texts: list[str],
    max_length: int = MAX_TEXT_LENGTH,
    padding: str | bool = "longest",
    special_tokens_mask: bool = False,
) -> dict[str, torch.Tensor]:
    """`input_ids`, `attention_mask` (and `special_tokens_mask` on request) of `texts` by the processor's tokenizer:
    `<s> text </s>`, truncated to `max_length` tokens, padded to the longest (or `padding="max_length"`, as
    ManagerTower's datasets do)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    encoded = tokenizer(
        list(texts),
        padding=padding,
        truncation=True,
        max_length=max_length,
        return_special_tokens_mask=special_tokens_mask,
        return_tensors="pt",
    )
    return dict(encoded)


def encode_images(processor, images: list[Image.Image]) -> dict[str, torch.Tensor]:
    """`pixel_values` and `pixel_mask` of `images` by the processor's image processor (resize, centre crop,
    normalise, pad to the largest with the mask)."""
    image_processor = getattr(processor, "image_processor", processor)
    encoded = image_processor(list(images), return_tensors="pt")
    return {"pixel_values": encoded["pixel_values"], "pixel_mask": encoded["pixel_mask"]}
