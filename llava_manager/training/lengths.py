"""Estimated sample lengths for the data orders of `sampling.py` (`--group_by_modality_length`, `--token_budget`).

Lengths (`dataset_lengths`): a data set may give `modality_lengths` itself (one signed int a sample: + for samples
with images, - for text-only, as LLaVA-NeXT's); for `SupervisedDataset` they are estimated from the records without
opening an image or tokenising the whole set (`LengthEstimate`; a lazy record view may offer
`without_image_bytes()`, its rows without image data, for a faster pass):

    tokens = fixed + per_turn * turns + per_word * words + image tokens

`fixed` (BOS, system block) and `per_turn` (the template's role markers) are measured by tokenising two tiny
conversations in the data set's template; `per_word` is fitted on the first 64 records' text (tokenised exactly;
LLaVA-NeXT counts one token a word). Image tokens: a fixed number an image, what the processor writes for a square
image as large as its largest grid pinpoint (an upper bound for square images: the estimate errs on the safe side of
a budget), or for each image of a several-image sample (OneVision: base crop only); `--image_token_estimate`
overrides it. The estimate decides groups and budgets only; the real tokens still come from the processor, and
`--max_length` still skips over-long samples.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..processing.templates import IMAGE_PLACEHOLDER

logger = logging.getLogger(__name__)

PROBE_RECORDS = 64  # records tokenised exactly to fit tokens per word
LARGE_SIDE = 8192  # px: a square image every processor without grid pinpoints shrinks to its largest layout


@dataclass(frozen=True)
class LengthEstimate:
    """Estimated tokens of a record: `fixed + per_turn * turns + per_word * words + image tokens` (see the module
    docstring). The defaults are LLaVA-NeXT's word count with no image tokens."""

    fixed: float = 0.0
    per_turn: float = 0.0
    per_word: float = 1.0
    image_tokens: int = 0  # a sample's only image
    multi_image_tokens: int = 0  # each image of a sample with several

    def tokens(self, record) -> tuple[int, int]:
        """(estimated tokens, number of images) of a record; a malformed record counts as one text token (the data
        set skips it anyway)."""
        images, turns, words = _shape(record)
        text = self.fixed + self.per_turn * turns + self.per_word * words
        image = 0 if not images else self.image_tokens if images == 1 else self.multi_image_tokens * images
        return max(1, math.ceil(text) + image), images


def _shape(record) -> tuple[int, int, int]:
    """(images, turns, words) of a record (a dict, or a row of a lazy record view), never raising; `<image>`
    placeholders are not words."""
    if not isinstance(record, Mapping):
        return 0, 0, 0
    image = record.get("image")
    images = 0 if image is None else len(image) if isinstance(image, (list, tuple)) else 1
    conversations = record.get("conversations")
    turns = words = 0
    if isinstance(conversations, (list, tuple)):
        for turn in conversations:
            value = turn.get("value") if isinstance(turn, Mapping) else None
            if isinstance(value, str):
                turns += 1
                words += len(value.replace(IMAGE_PLACEHOLDER, " ").split())
    return images, turns, words


def modality_lengths(records: Sequence, estimate: LengthEstimate) -> list[int]:
    """LLaVA-NeXT's `modality_lengths`: the estimated tokens of each record, positive for samples with images,
    negative for text-only ones; never zero."""
    out = []
    for record in records:
        tokens, images = estimate.tokens(record)
        out.append(tokens if images else -tokens)
    return out


def image_token_estimate(processor) -> tuple[int, int]:
    """(tokens of a sample's only image, tokens of each image of a several-image sample) the processor writes for a
    square image as large as its largest grid pinpoint (LLaVA-1.5: every image is one crop; the families without
    pinpoints: a square image as large as the processor takes, `LARGE_SIDE` px capped by its own limits)."""
    from PIL import Image

    from ..processing.images import _crop, processor_token_count
    from ..processing.processors import family_of_processor

    family = family_of_processor(processor)
    if not hasattr(processor.image_processor, "image_grid_pinpoints") and family != "llava":
        # Qwen-VL, InternVL, Gemma 3, Pixtral: the processor's own count for a square image too large for any of
        # them (capped at its maximum pixels, tiles or size), the markers around the image tokens not counted
        count = processor._get_num_multimodal_tokens(image_sizes=[[LARGE_SIDE, LARGE_SIDE]])["num_image_tokens"][0]
        return int(count), int(count)
    if family == "llava":
        height, width = _crop(processor)
        inputs = processor.image_processor([[Image.new("RGB", (width, height))]], return_tensors="pt")
        count = processor.replace_image_token(inputs, 0).count(processor.image_token)
        return count, count
    side = max(max(p) for p in processor.image_processor.image_grid_pinpoints)
    return (
        processor_token_count(processor, side, side, family=family),
        processor_token_count(processor, side, side, multi_image=True, family=family),
    )


def calibrate(records: Sequence, template, tokenizer, image_tokens: tuple[int, int]) -> LengthEstimate:
    """The `LengthEstimate` of records in `template` (a `templates.Template`) and `tokenizer`: `fixed` and
    `per_turn` from two tiny conversations, `per_word` fitted on the first `PROBE_RECORDS` usable records."""
    from .data import SampleError, check_turns, image_files, tokenize

    def length(record, images: int) -> int:
        return len(tokenize(check_turns(record, images), template, tokenizer, [""] * images)[0])

    def tiny(exchanges: int) -> dict:
        return {"conversations": [{"from": who, "value": "x"} for _ in range(exchanges) for who in ("human", "gpt")]}

    x = len(tokenizer("x", add_special_tokens=False)["input_ids"])
    one, two = length(tiny(1), 0), length(tiny(2), 0)
    per_turn = max(0.0, (two - one) / 2 - x)
    fixed = max(0.0, one - 2 * (per_turn + x))
    rest = words = 0.0
    probed = 0
    for record in records:
        if probed == PROBE_RECORDS:
            break
        try:
            tokens = length(record, len(image_files(record)))
        except (SampleError, TypeError, AttributeError, KeyError):
            continue
        _, turns, count = _shape(record)
        rest += tokens - fixed - per_turn * turns
        words += count
        probed += 1
    per_word = rest / words if words and rest > 0 else 1.0
    return LengthEstimate(fixed, per_turn, per_word, *image_tokens)


def dataset_lengths(dataset, image_tokens: int | None = None) -> list[int]:
    """Signed estimated lengths of `dataset`'s samples (+ with images, - text-only): its own `modality_lengths`
    when it has them, else estimated from a `SupervisedDataset`'s records (`calibrate`); `image_tokens` overrides
    the tokens counted an image."""
    own = getattr(dataset, "modality_lengths", None)
    if own is not None:
        return [int(x) for x in own]
    if not all(hasattr(dataset, a) for a in ("records", "processor", "template")):
        raise TypeError(
            f"{type(dataset).__name__} has no `modality_lengths` (one signed int a sample: + with "
            f"images, - text-only) and is not a SupervisedDataset whose records could be measured."
        )
    tokens = image_token_estimate(dataset.processor) if image_tokens is None else (image_tokens, image_tokens)
    estimate = calibrate(dataset.records, dataset.template, dataset.processor.tokenizer, tokens)
    logger.info(
        "length estimate: %.1f + %.2f a turn + %.3f a word, %d tokens an image (%d each of several)",
        estimate.fixed,
        estimate.per_turn,
        estimate.per_word,
        estimate.image_tokens,
        estimate.multi_image_tokens,
    )
    # A lazy record view (parquet shards) may offer its rows without the image data, read faster (by column):
    # records with "conversations" and as many "image" entries as images.
    light = getattr(dataset.records, "without_image_bytes", None)
    return modality_lengths(light() if callable(light) else dataset.records, estimate)
