"""Padding-free training (`--padding_free true`): the samples of a batch packed into rows, no token attending across
samples, the same per-token losses and gradients as the padded batch.

`PackingCollator(pad_token_id, family, max_packed_tokens)` takes the samples of `data.SupervisedDataset` (image
tokens already expanded, so every length counts the image tokens) and:

- packs them into rows of at most `max_packed_tokens` tokens (`pack_rows`): greedy first-fit in arrival order (each
  sample goes to the first row with room, else opens a new one), deterministic. A sample longer than a row is
  refused with an error; `run_config.py` keeps such samples out beforehand by capping the data set's `--max_length`
  at the row length, so they are skipped and reported like any over-length sample. `max_packed_tokens="longest"`
  makes each batch's rows as long as its longest sample (so no sample is ever too long for a row).
- flattens each row with transformers' `DataCollatorWithFlattening`: `input_ids`, `labels` with each sample's first
  label set to -100, `position_ids` restarting at 0 for every sample. The shorter rows are filled to the longest with
  a padding segment (pad tokens, labels -100, positions 0, 1, ... of their own), so that padding is a separate
  "sample" too. No `attention_mask`. (Those padding segments are computed, as padding is in a padded batch: rows of
  `--max_length` usually hold a whole batch in one row, with no padding at all; with smaller rows, `--token_budget`
  in its `packed` mode sizes the batches to fill them.)
- gives the images in packed order (row by row, sample by sample: the order of their image tokens in the batch, which
  is the order in which the model scatters the image features and in which the managers' hooks add their terms):
  `pixel_values` (anyres crops padded with zero crops to the batch's largest count, as `data.Collator` does),
  `image_sizes`, and for LLaVA-OneVision `batch_num_images` with one entry per original sample (0 for a text-only
  one), so each sample keeps its single-image (grid crops) or multi-image (base crops only) layout: the model's
  `get_image_features` and the managers' adapter both read it as a flat per-sample list.
- for the families with M-RoPE (the Qwen-VL families: their bare model has `get_rope_index`), gives `position_ids`
  of shape (4, rows, width): row 0 the text positions above (0, 1, ... per sample: the sample boundaries, from which
  the model builds the packed mask), rows 1-3 each sample's temporal / height / width positions as the model
  computes them for that sample alone (`RopeIndex`: the model's own `get_rope_index` on the sample's tokens, token
  types and `image_grid_thw`); the padding segment counts 0, 1, ... on all four. The Qwen-VL text models take such
  4-row positions as "packed" (they split off row 0 for the mask). The family's token-type input
  (`mm_token_type_ids`, Gemma 3's `token_type_ids`) is computed on the packed rows.
- refuses (`packing_refusal`) a language model with linear-attention layers (Qwen3.5, Qwen3.5-MoE) unless
  flash-linear-attention runs on a GPU: their recurrent state would flow from one packed sample into the next
  (transformers itself refuses packed rows there without those kernels).
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

The default row length follows the attention kernel (`default_row_length`; `--max_packed_tokens` unset or `auto`,
resolved by `build_collator` from the language model's `config._attn_implementation`; a number or `longest` given by
the user always wins):
- flash-attention (flash_attention_2/3/4 and the Hub kernels: transformers' rule, "flash" in the name): whole batches
  in one row (`--max_length`). The varlen kernel costs each sample's own length squared, whatever the row's length.
- SDPA, eager and any other kernel: rows as long as the batch's longest sample (`longest`). These isolate the samples
  with a mask over the whole row, so a row of W tokens costs W^2 attention whatever it holds; a row no wider than the
  padded batch's rows costs no more than one of them, and packing only removes padding and rows. Whole-batch rows
  there run slower than padded batches (`python benchmarks/packing.py` sweeps the row length; its numbers are in
  docs/benchmarks.md).

Token accounting, for the throughput logs: the batch's `BATCH_INFO` (`data.py`, beside the skip records) carries
`num_tokens` (real tokens, int), `num_padding` (padding tokens, int; rows x width - num_tokens) and `sample_lengths`
(a LongTensor of each sample's length in packed order). `ManagerTrainer.compute_loss` pops `BATCH_INFO` before the
model sees the batch. A model called by hand takes `data.model_inputs(batch)`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DataCollatorWithFlattening

from .data import BATCH_INFO, IGNORE_INDEX, Collator

logger = logging.getLogger(__name__)

LONGEST = "longest"  # --max_packed_tokens: each batch's rows as long as its longest sample
AUTO = "auto"  # --max_packed_tokens unset: `default_row_length` of the model's attention kernel


def row_length(value: int | str | None) -> int | str:
    """A `--max_packed_tokens` value checked: a positive number of tokens (int), `"longest"`, or `"auto"` (also for
    None, the flag left out). Anything else is a `ValueError` naming the flag and what it takes."""
    if value is None:
        return AUTO
    given = value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in (AUTO, LONGEST):
            return word
        value = int(word) if word.lstrip("+-").isdigit() else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"--max_packed_tokens {given}: give a positive number of tokens, {LONGEST!r} (each batch's rows as long "
            f"as its longest sample) or {AUTO!r} (the default: chosen by the model's attention kernel, see "
            f"llava_manager/training/packing.py)."
        )
    return value


def uses_varlen_attention(attn_implementation: str | None) -> bool:
    """Whether the kernel runs packed rows through flash-attention's varlen path (each sample attends within its
    `cu_seq_lens` segment, costing its own length squared): transformers' own test, "flash" in the name
    (flash_attention_2/3/4, Hub kernels such as kernels-community/flash-attn2 or vllm-flash-attn3). None is
    transformers' default, SDPA (eager where a model has no SDPA)."""
    return attn_implementation is not None and "flash" in attn_implementation


def default_row_length(attn_implementation: str | None, max_length: int) -> tuple[int | str, str]:
    """(row length, why) of `--max_packed_tokens` left out, for the language model's attention kernel: one row per
    batch (`max_length` tokens) with flash-attention's varlen kernel, else rows as long as each batch's longest
    sample (see the module doc)."""
    name = attn_implementation or "sdpa (transformers' default)"
    if uses_varlen_attention(attn_implementation):
        return max_length, (
            f"{name} runs packed rows through flash-attention's varlen kernel, each sample costing its own length "
            f"squared: whole batches in one row of up to --max_length {max_length} tokens"
        )
    return LONGEST, (
        f"{name} attention masks a packed row as a whole, a row of W tokens costing W^2: rows no wider than the "
        f"padded batch's keep a packed step no dearer than the padded one (benchmarks/packing.py; whole batches in "
        f"one row pay only with a flash-attention kernel)"
    )


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


class RopeIndex:
    """The bare model's own `get_rope_index` (M-RoPE: 3 positions a token, temporal / height / width for vision
    tokens), run on a stand-in that holds only the model's config: a collator computes each sample's positions
    without the model's weights. The Qwen-VL families' `get_rope_index` and `get_vision_position_ids` read nothing
    else of the model."""

    def __init__(self, base_class: type, config) -> None:
        self.base_class, self.config = base_class, config

    def __getattr__(self, name: str):
        if name in ("base_class", "config"):
            raise AttributeError(name)
        return inspect.getattr_static(self.base_class, name).__get__(self, self.base_class)

    def __call__(self, input_ids: torch.Tensor, **inputs) -> torch.Tensor:
        """(3, 1, n) positions of one sample (`input_ids` of shape (1, n), its token types and grids)."""
        return self.base_class.get_rope_index(self, input_ids, **inputs)[0]


def rope_index(adapter, config) -> RopeIndex | None:
    """A `RopeIndex` for a family whose positions are not one per token (its bare model has `get_rope_index`)."""
    return RopeIndex(adapter.base_class, config) if hasattr(adapter.base_class, "get_rope_index") else None


def packing_refusal(adapter, config) -> str | None:
    """Why `--padding_free` cannot keep the samples of a packed row apart for this model, or None. Linear-attention
    layers (Qwen3.5's Gated DeltaNet) carry a state from token to token: transformers keeps packed samples apart
    there only with flash-linear-attention's kernels on a GPU (`cu_seq_lens`), and refuses packed rows otherwise."""
    if config is None:
        return None
    text = config.get_text_config()
    if "linear_attention" not in (getattr(text, "layer_types", None) or ()):
        return None
    from transformers.utils.import_utils import is_flash_linear_attention_available

    if is_flash_linear_attention_available() and torch.cuda.is_available():
        return None
    return (
        f"--padding_free with {adapter.title}: its language model's linear-attention layers carry a state across "
        f"the packed samples unless flash-linear-attention's kernels run them on a GPU (not available here). Train "
        f"with padded batches (drop --padding_free; --group_by_modality_length or --token_budget keep the padding "
        f"small), or install flash-linear-attention on a CUDA machine."
    )


@dataclass
class PackingCollator(Collator):
    """`data.Collator` for padding-free training: see the module doc. `max_packed_tokens` is the row length: a
    number of tokens, `"longest"` (each batch's longest sample), or `"auto"` (the default: `default_row_length` of
    `model_config`'s attention kernel, one row of 16,384 tokens, the stages' --max_length, with flash-attention;
    `build_collator` resolves it with the run's --max_length instead). `row_choice` says what was chosen and why."""

    max_packed_tokens: int | str = AUTO
    row_choice: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.max_packed_tokens = row_length(self.max_packed_tokens)
        if self.max_packed_tokens == AUTO:
            text = self.model_config.get_text_config() if self.model_config is not None else None
            attention = getattr(text, "_attn_implementation", None)
            self.max_packed_tokens, self.row_choice = default_row_length(attention, 16384)
        elif not self.row_choice:
            self.row_choice = f"--max_packed_tokens {self.max_packed_tokens} as given"
        refusal = packing_refusal(self.adapter, self.model_config)
        if refusal:
            raise ValueError(refusal)
        self.flatten = DataCollatorWithFlattening(
            return_position_ids=True, separator_id=IGNORE_INDEX, return_flash_attn_kwargs=True
        )
        self.rope_index = rope_index(self.adapter, self.model_config) if self.model_config is not None else None
        if self.rope_index is None and hasattr(self.adapter.base_class, "get_rope_index"):
            raise ValueError(
                f"--padding_free with {self.adapter.title}: its M-RoPE positions come from the model's config; pass "
                f"model_config (build_collator does)."
            )

    def sample_positions(self, sample: dict) -> torch.Tensor:
        """M-RoPE positions (3, n) of one sample, as the model computes them for the sample on its own."""
        input_ids = torch.as_tensor(sample["input_ids"]).view(1, -1)
        inputs = self.token_inputs(input_ids)  # a new dict each call
        if "image_grid_thw" in sample:
            inputs["image_grid_thw"] = sample["image_grid_thw"]
        return self.rope_index(input_ids, **inputs).view(3, -1)

    def mrope_positions(self, samples: list[dict], row: list[int], fill: int) -> torch.Tensor:
        """(3, width) positions of one packed row: each sample's own M-RoPE positions, then the padding segment's
        0, 1, ... on all three axes."""
        parts = [self.sample_positions(samples[i]) for i in row]
        if fill:
            parts.append(torch.arange(fill).expand(3, -1))
        return torch.cat(parts, dim=1)

    def __call__(self, samples: list[dict]) -> dict[str, Any]:
        lengths = [len(s["input_ids"]) for s in samples]
        rows = pack_rows(lengths, max(lengths) if self.max_packed_tokens == LONGEST else self.max_packed_tokens)
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
            if self.rope_index is None:
                position_ids.append(flat["position_ids"])
            else:  # (4, 1, width): the text positions (sample boundaries for the mask), then M-RoPE's three
                mrope = self.mrope_positions(samples, row, fill)
                position_ids.append(torch.cat([flat["position_ids"].view(1, -1), mrope]).unsqueeze(1))
            offsets.append(flat["cu_seq_lens_q"][1:] + r * width)
            max_length = max(max_length, flat["max_length_q"])
        cu_seq_lens = torch.cat(offsets)
        batch: dict[str, Any] = dict(
            input_ids=torch.cat(input_ids),
            labels=torch.cat(labels),
            position_ids=torch.cat(position_ids, dim=-2),
            use_cache=False,
            cu_seq_lens_q=cu_seq_lens,
            cu_seq_lens_k=cu_seq_lens,
            max_length_q=max_length,
            max_length_k=max_length,
        )
        order = [i for row in rows for i in row]
        batch.update(self.token_inputs(batch["input_ids"]))
        batch.update(self.batch_images([samples[i] for i in order]))
        num_tokens = sum(lengths)
        batch[BATCH_INFO] = {
            "skipped": [record for s in samples for record in s.get("skipped", ())],
            "num_tokens": num_tokens,
            "num_padding": len(rows) * width - num_tokens,
            "sample_lengths": torch.tensor([lengths[i] for i in order], dtype=torch.long),
        }
        return batch


def build_collator(model, processor, packed_tokens: int | str | None = None, max_length: int = 16384) -> Collator:
    """The recipes' collator: `PackingCollator` with rows of `packed_tokens` (`--padding_free`; the value
    `run_config.packed_row_length` resolved: a number of tokens, `"longest"`, or `"auto"`, chosen here by the language
    model's attention kernel with `default_row_length`, one row being `max_length` tokens), else the padded
    `data.Collator`. The choice and its reason are logged."""
    from ..families import family_of_config

    family = family_of_config(model.config).name
    pad = processor.tokenizer.pad_token_id
    if packed_tokens is None:
        return Collator(pad, family, model.config)
    attention = model.config.get_text_config()._attn_implementation
    row = row_length(packed_tokens)
    if row == AUTO:
        row, why = default_row_length(attention, max_length)
        why = f"default --max_packed_tokens {row}: {why}; --max_packed_tokens N (or longest) sets another"
    else:
        why = f"--max_packed_tokens {row} as given ({attention} attention)"
    described = "as long as each batch's longest sample" if row == LONGEST else f"of at most {row} tokens"
    logger.info("padding-free: samples packed into rows %s (%s)", described, why)
    return PackingCollator(pad, family, model.config, max_packed_tokens=row, row_choice=why)
