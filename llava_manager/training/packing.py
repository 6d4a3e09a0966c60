"""Padding-free training (`--padding_free true`): the samples of a batch packed into rows, no token attending across
samples, the same per-token losses and gradients as the padded batch.

`PackingCollator(pad_token_id, family, max_packed_tokens)` takes the samples of `data.SupervisedDataset` (image
tokens already expanded, so every length counts the image tokens) and:

- packs them into rows of at most `max_packed_tokens` tokens (`pack_rows`): greedy first-fit in arrival order (each
  sample goes to the first row with room, else opens a new one), deterministic. A sample longer than a row is
  refused with an error; `run_config.py` keeps such samples out beforehand by capping the data set's `--max_length`
  at the row length, so they are skipped and reported like any over-length sample.
- flattens each row with transformers' `DataCollatorWithFlattening`: `input_ids`, `labels` with each sample's first
  label set to -100, `position_ids` restarting at 0 for every sample. The shorter rows are filled to the longest with
  a padding segment (pad tokens, labels -100, positions 0, 1, ... of their own), so that padding is a separate
  "sample" too. No `attention_mask`. (Those padding segments are computed, as padding is in a padded batch: the
  default row length, `--max_length`, usually holds a whole batch in one row, with no padding at all; with smaller rows,
  `--token_budget` in its `packed` mode sizes the batches to fill them.)
- gives the images in packed order (row by row, sample by sample: the order of their image tokens in the batch, which
  is the order in which the model scatters the image features and in which the managers' hooks add their terms):
  `pixel_values` (anyres crops padded with zero crops to the batch's largest count, as `data.Collator` does),
  `image_sizes`, and for LLaVA-OneVision `batch_num_images` with one entry per original sample (0 for a text-only
  one), so each sample keeps its single-image (grid crops) or multi-image (base crops only) layout: the model's
  `get_image_features` and the managers' adapter both read it as a flat per-sample list.
- adds `use_cache=False` (transformers looks for packed sequences only without a cache) and flash-attention's varlen
  arguments `cu_seq_lens_q` / `cu_seq_lens_k` (int32 offsets of every segment, padding segments included, in the
  flattened rows) and `max_length_q` / `max_length_k`.

Why the losses are the padded ones: transformers' causal-LM loss shifts the labels within a row (token t is scored on
label t+1), so the last token of one sample would be scored on the first label of the next; that label is -100, and
in a padded batch the first label of a row is never scored either. The number of scored tokens (the loss's
denominator, also the Trainer's `num_items_in_batch`, which counts `labels[..., 1:]`) is the same.

Attention isolation:
- CPU (SDPA, eager; also SDPA on a GPU): with `attention_mask=None`, no cache and `position_ids` given,
  `transformers.masking_utils.create_causal_mask` (`_preprocess_mask_arguments` -> `find_packed_sequence_indices`)
  finds the samples where the positions do not increase by one and builds a block-diagonal causal mask
  (`packed_sequence_mask_function` and-ed with the causal mask, positions remapped per sample).
- GPU with flash_attention_2/3: `modeling_flash_attention_utils._flash_attention_forward` sees the four varlen
  arguments and calls `flash_attn_varlen_func` on the flattened rows with `cu_seq_lens_q/k` as the boundaries. (Its
  own position_ids-based detection handles a single row only, so the varlen arguments are always given; SDPA and
  eager ignore them, and transformers never passes them to the vision tower.)
Nothing else in these models mixes positions: norms and MLPs act per token, the vision tower per image, and the
managers add per image token (`core.patch` computes their positions from the whole batch's placeholder mask, flat
over rows, in the same order as the image features).

Token accounting, for the throughput logs: the batch's `BATCH_INFO` (`data.py`, beside the skip records) carries
`num_tokens` (real tokens, int), `num_padding` (padding tokens, int; rows x width - num_tokens) and `sample_lengths`
(a LongTensor of each sample's length in packed order). `ManagerTrainer.compute_loss` pops `BATCH_INFO` before the
model sees the batch. A model called by hand takes `data.model_inputs(batch)`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DataCollatorWithFlattening

from .data import BATCH_INFO, IGNORE_INDEX, Collator

logger = logging.getLogger(__name__)


def pack_rows(lengths: Sequence[int], row_tokens: int) -> list[list[int]]:
    """Indices of `lengths` grouped into rows of at most `row_tokens` tokens: greedy first-fit in arrival order (each
    sample goes to the first row it fits in, else a new row). Deterministic; every row's sum is <= `row_tokens`."""
    if row_tokens < 1:
        raise ValueError(f"max_packed_tokens {row_tokens}: a positive number of tokens.")
    rows: list[list[int]] = []
    room: list[int] = []
    for index, length in enumerate(lengths):
        if length > row_tokens:
            raise ValueError(
                f"a sample of {length} tokens (image tokens included) is longer than a packed row "
                f"(--max_packed_tokens {row_tokens}): it cannot be packed. Raise --max_packed_tokens, or keep "
                f"--max_length at most the row length so that such samples are skipped as over-length."
            )
        row = next((r for r, free in enumerate(room) if free >= length), None)
        if row is None:
            rows.append([])
            room.append(row_tokens)
            row = len(rows) - 1
        rows[row].append(index)
        room[row] -= length
    return rows


@dataclass
class PackingCollator(Collator):
    """`data.Collator` for padding-free training: see the module doc. `max_packed_tokens` is the row length."""

    max_packed_tokens: int = 16384

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_packed_tokens < 1:
            raise ValueError(f"--max_packed_tokens {self.max_packed_tokens}: a positive number of tokens.")
        self.flatten = DataCollatorWithFlattening(
            return_position_ids=True, separator_id=IGNORE_INDEX, return_flash_attn_kwargs=True
        )

    def __call__(self, samples: list[dict]) -> dict[str, Any]:
        lengths = [len(s["input_ids"]) for s in samples]
        rows = pack_rows(lengths, self.max_packed_tokens)
        width = max(sum(lengths[i] for i in row) for row in rows)
        input_ids, labels, position_ids, offsets = [], [], [], [torch.zeros(1, dtype=torch.int32)]
        max_length = 0
        for r, row in enumerate(rows):
            features = [{"input_ids": samples[i]["input_ids"], "labels": samples[i]["labels"]} for i in row]
            fill = width - sum(lengths[i] for i in row)
            if fill:  # a padding segment of its own: nothing attends to it, it attends to nothing real
                features.append({"input_ids": [self.pad_token_id] * fill, "labels": [IGNORE_INDEX] * fill})
            flat = self.flatten(features, return_tensors="pt")
            input_ids.append(flat["input_ids"])
            labels.append(flat["labels"])
            position_ids.append(flat["position_ids"])
            offsets.append(flat["cu_seq_lens_q"][1:] + r * width)
            max_length = max(max_length, flat["max_length_q"])
        cu_seq_lens = torch.cat(offsets)
        batch: dict[str, Any] = dict(
            input_ids=torch.cat(input_ids),
            labels=torch.cat(labels),
            position_ids=torch.cat(position_ids),
            use_cache=False,
            cu_seq_lens_q=cu_seq_lens,
            cu_seq_lens_k=cu_seq_lens,
            max_length_q=max_length,
            max_length_k=max_length,
        )
        order = [i for row in rows for i in row]
        batch.update(self.batch_images([samples[i] for i in order]))
        num_tokens = sum(lengths)
        batch[BATCH_INFO] = {
            "skipped": [record for s in samples for record in s.get("skipped", ())],
            "num_tokens": num_tokens,
            "num_padding": len(rows) * width - num_tokens,
            "sample_lengths": torch.tensor([lengths[i] for i in order], dtype=torch.long),
        }
        return batch


def build_collator(model, processor, packed_tokens: int | None = None) -> Collator:
    """The recipes' collator: `PackingCollator` with rows of at most `packed_tokens` tokens (`--padding_free`; the
    row length `run_config.packed_row_length` resolved), else the padded `data.Collator`."""
    from ..families import family_of_config

    family = family_of_config(model.config).name
    pad = processor.tokenizer.pad_token_id
    if packed_tokens is None:
        return Collator(pad, family)
    logger.info(
        "padding-free: samples packed into rows of at most %d tokens (%s attention)",
        packed_tokens,
        model.config.get_text_config()._attn_implementation,
    )
    return PackingCollator(pad, family, max_packed_tokens=packed_tokens)
