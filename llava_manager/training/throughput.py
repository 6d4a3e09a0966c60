"""Throughput in the training logs, per logging interval, and a summary of the run for the cost plan.

Log keys (every logger and `trainer_state.json` see them; `ManagerTrainer` puts the callback first in line):

- `tokens_per_second`: real tokens through the LLM (text and image tokens, not padding), summed over processes.
- `samples_per_second`: samples (sequences, packed or not), summed over processes.
- `padding_fraction`: padding tokens / computed tokens (padding + real) of the interval; for padding-free batches
  (`packing.py`) the filler of rows shorter than the batch's longest, often 0.
- `mfu` (on a GPU whose peak is known): model FLOPs per second / (peak FLOPs per second per GPU x processes).

(Not `train_samples_per_second` / `train_tokens_per_second`: those are the Trainer's whole-run figures, and the
W&B logger files `train_samples_per_second` under the run summary, where a per-interval value would be lost.)

The last log of a run (the Trainer's summary with `train_runtime`) gets the whole run's `train_tokens_per_second`,
`train_padding_fraction` and `train_mfu`, and the main process writes `{output_dir}/throughput.json` (samples/s and
tokens/s in total and per device, padding, MFU, world size, device name), which `python -m llava_manager.cost
--throughput` reads. That summary leaves out the first optimizer step (start-up, allocation, autotuning) when the run
has more than one, and, like the interval figures, the time spent evaluating and saving checkpoints.

Model FLOPs (`ModelFlops`), the useful work of a training step, without gradient-checkpointing recomputation and
without padding (so MFU is MFU, not hardware utilisation):

    flops = sum over parts p of  c_p x N_p x T_p  +  attention
    c_p   = 2 (forward) + 2 (activation gradients, when p or a part before it trains)
                        + 2 x (trainable share of p's parameters) (weight gradients)

for the parts in pipeline order vision tower -> projector -> managers -> LLM, with N_p the part's parameters taking
part in matmuls (the LLM's input embedding is a lookup and does not count; a tied LM head does) and T_p the tokens
it processes: the LLM the real tokens; the vision tower, projector and managers the image tokens of the batch, a
proxy for vision patches (LLaVA-1.5 and the OneVision base crop: one token a patch; anyres grids lose a few to
unpadding and gain the row newlines), plus frames x patches per frame for videos. Everything trained gives the usual
6 N T; the frozen vision tower of Stage-1 gives 2 N T, its frozen LLM (the projector trains, so gradients pass
through it) 4 N T. Attention, per layer and sequence of length s, with d = heads x head dim:

    LLM (causal):          2 d s^2 forward (half of Q K^T and of A V), x 3 with activation gradients
    vision tower (full):   4 d P^2 forward per crop of P patches (crops = vision tokens / P), x 3 likewise

(PaLM's 6 N + 12 L d s per token counts the masked half of causal attention too; flash attention skips it.)
MFU = model FLOPs / seconds / (peak x processes), the peak a GPU's dense bf16 tensor-core rate (`GPU_PEAK_TFLOPS`,
found by `torch.cuda.get_device_name`) or `--peak_tflops` (e.g. the fp32/TF32 rate when training without bf16).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from .data import BATCH_INFO

logger = logging.getLogger(__name__)

# Dense (no sparsity) bf16 tensor-core peaks per GPU, TFLOP/s, from NVIDIA's data sheets. Matched in this order
# against `torch.cuda.get_device_name()` (e.g. "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "NVIDIA H200").
GPU_PEAK_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H200 NVL", 835.0),
    ("H200", 989.0),  # SXM
    ("GH200", 989.0),
    ("A100", 312.0),  # SXM and PCIe
    ("A800", 312.0),
    ("H800", 989.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
]

COUNTS = ("samples", "tokens", "padding", "sum_squared_lengths", "vision_tokens")  # the order of a counts vector


def peak_tflops_for(device_name: str, table: list[tuple[str, float]] = GPU_PEAK_TFLOPS) -> float | None:
    """The dense bf16 peak of the GPU `device_name`, TFLOP/s; None for a GPU the table does not know."""
    for pattern, tflops in table:
        if pattern.lower() in device_name.lower():
            return tflops
    return None


def sequence_lengths(inputs: dict) -> tuple[torch.Tensor, int]:
    """(real length of each sample, tokens computed) of a training batch.

    - `packing.PackingCollator`'s batches: its `sample_lengths` (its `cu_seq_lens_q` also bounds the padding
      segments that fill the shorter rows).
    - Other padding-free batches: the samples' boundaries from `cu_seq_lens_q` (flash-attention's cumulative
      lengths), else from where `position_ids` restart at 0; tokens after the last boundary are padding.
    - Padded batches: each row's `attention_mask` sum.
    - Neither: every token is real, one sample a row.
    """
    input_ids = inputs["input_ids"]
    computed = input_ids.numel()
    info = inputs.get(BATCH_INFO) or {}
    if info.get("sample_lengths") is not None:
        return torch.as_tensor(info["sample_lengths"], device=input_ids.device), computed
    cu = inputs.get("cu_seq_lens_q")
    if cu is not None:
        return cu.diff().flatten(), computed
    position_ids = inputs.get("position_ids")
    if position_ids is not None and inputs.get("attention_mask") is None:  # every row starts a sample at 0
        flat = position_ids.flatten()
        starts = (flat == 0).nonzero().flatten()
        ends = torch.cat([starts[1:], starts.new_tensor([flat.numel()])])
        return ends - starts, computed
    mask = inputs.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        return mask.sum(dim=1), computed
    return torch.full((input_ids.shape[0],), input_ids.shape[1], device=input_ids.device), computed


def count_batch(inputs: dict, image_token_id: int | None = None, patches_per_frame: int = 0) -> torch.Tensor:
    """The counts (`COUNTS`) of one micro-batch as an int64 tensor on the batch's device (no host sync)."""
    lengths, computed = sequence_lengths(inputs)
    lengths = lengths.to(torch.int64)
    input_ids = inputs["input_ids"]
    tokens = lengths.sum()
    vision = (input_ids == image_token_id).sum() if image_token_id is not None else tokens.new_zeros(())
    videos = inputs.get("pixel_values_videos")
    if videos is not None and patches_per_frame:
        vision = vision + videos.numel() // (videos.shape[-1] * videos.shape[-2] * videos.shape[-3]) * patches_per_frame
    return torch.stack(
        [tokens.new_tensor(len(lengths)), tokens, computed - tokens, (lengths * lengths).sum(), vision.to(torch.int64)]
    )


def _numel(p: torch.nn.Parameter) -> int:
    return getattr(p, "ds_numel", None) or p.numel()  # ZeRO-3 partitions leave numel() at 0


def model_parameters(model) -> dict:
    """`trainer.module_parameters` (vision tower, projector, managers, LLM), for a model with or without managers."""
    from ..core.patch import has_manager
    from .parts import module_parameters

    if has_manager(model):
        return module_parameters(model)
    from .parts import vision_parts

    parts = {**vision_parts(model.model), "managers": []}
    seen = {id(p) for ps in parts.values() for p in ps}
    parts["llm"] = [p for p in model.parameters() if id(p) not in seen]
    return parts


@dataclass
class ModelFlops:
    """Model FLOPs of a training step from its counts (see the module doc for the formula)."""

    llm: float  # c x N of the LLM, per token
    vision: float  # c x N of vision tower, projector and managers, per vision token
    llm_attention: float  # (2 or 6) x layers x d, times the sum of squared sample lengths
    vision_attention: float  # (4 or 12) x layers x d x P, per vision token

    @classmethod
    def of(cls, model) -> ModelFlops:
        parts = model_parameters(model)
        config = model.config
        text = config.get_text_config()
        embedding = model.get_input_embeddings().weight
        head = model.get_output_embeddings()
        coefficient, upstream = {}, False
        sizes = {}
        for part in ("vision_tower", "projector", "managers", "llm"):
            params = [p for p in parts[part] if not (part == "llm" and p is embedding)]
            if part == "llm" and head is not None and head.weight is embedding:
                params.append(head.weight)  # tied: the lookup is free, the head's matmul is not
            total = sum(_numel(p) for p in params)
            trainable = sum(_numel(p) for p in params if p.requires_grad) / max(total, 1)
            backward = upstream or trainable > 0
            coefficient[part] = 2 + 2 * backward + 2 * trainable
            sizes[part] = total
            upstream = backward
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        llm_attention = (
            (2 + 4 * (coefficient["llm"] > 2)) * text.num_hidden_layers * text.num_attention_heads * head_dim
        )
        vision_config = getattr(config, "vision_config", None)
        vision_attention = 0.0
        if vision_config is not None:
            layers, width, patches = vision_shape(vision_config)
            vision_attention = (4 + 8 * (coefficient["vision_tower"] > 2)) * layers * width * patches
        vision = sum(coefficient[p] * sizes[p] for p in ("vision_tower", "projector", "managers"))
        return cls(
            llm=coefficient["llm"] * sizes["llm"],
            vision=vision,
            llm_attention=llm_attention,
            vision_attention=vision_attention,
        )

    def __call__(self, counts: dict[str, float]) -> float:
        return (
            self.llm * counts["tokens"]
            + self.llm_attention * counts["sum_squared_lengths"]
            + (self.vision + self.vision_attention) * counts["vision_tokens"]
        )


def _media_ids(model) -> tuple[int | None, int]:
    config = model.config
    image = getattr(config, "image_token_id", None)
    if image is None:
        image = getattr(config, "image_token_index", None)
    vision = getattr(config, "vision_config", None)
    patches = vision_shape(vision)[2] if vision is not None else 0
    return image, patches


def _side(value) -> int:
    """A size given as an int or a (height, width) pair (InternVL), as one side."""
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def vision_shape(vision_config) -> tuple[int, int, int]:
    """(layers, width, patches a crop) of a vision tower config, whatever the family names them (the Qwen-VL ViTs'
    `depth` and `embed_dim`); 0 patches where images have no fixed size (Qwen-VL, Pixtral: attention over each
    image's own patches, not counted)."""
    layers = getattr(vision_config, "num_hidden_layers", None) or getattr(vision_config, "depth", 0)
    width = getattr(vision_config, "embed_dim", None) or vision_config.hidden_size
    size, patch = getattr(vision_config, "image_size", None), getattr(vision_config, "patch_size", None)
    fixed = size is not None and patch is not None and not hasattr(vision_config, "spatial_merge_size")
    fixed = fixed and getattr(vision_config, "model_type", None) != "pixtral"
    patches = (_side(size) // _side(patch)) ** 2 if fixed else 0
    return layers, width, patches


class ThroughputCallback(TrainerCallback):
    """Throughput keys in the logs (module doc). `ManagerTrainer.compute_loss` calls `count` with every training
    micro-batch; the counts stay on the device until a log, where they are summed over processes (all processes log
    at the same steps, so the all-reduce is collective-safe)."""

    def __init__(
        self,
        peak_tflops: float | None = None,
        device_name: str | None = None,
        table: list[tuple[str, float]] = GPU_PEAK_TFLOPS,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.peak_tflops_arg, self.device_name_arg, self.table, self.clock = peak_tflops, device_name, table, clock
        self.intervals: list[dict] = []  # per log: the summed counts, seconds, and the logged values
        self.summary: dict | None = None
        self.stage: str | None = None  # the constructor's stage; recorded in throughput.json for `llava_manager.cost`
        self._pending = self._local_total = self._warm_local = None
        self._image_token_id, self._patches_per_frame = None, 0
        self.flops: ModelFlops | None = None
        self.world_size, self.device, self.device_name, self.peak_tflops = 1, torch.device("cpu"), "cpu", None
        self._first_step, self._last = 1, clock()  # `trainer.evaluate()` alone ticks too
        self._seconds = self._interval_seconds = self._warm_seconds = 0.0

    # -- counting (called by the trainer) ----------------------------------------------------------------------------

    def count(self, inputs: dict) -> None:
        counts = count_batch(inputs, self._image_token_id, self._patches_per_frame)
        self._pending = counts if self._pending is None else self._pending + counts
        self._local_total = counts if self._local_total is None else self._local_total + counts

    # -- time: training only, evaluation and checkpoint saving left out ----------------------------------------------

    def _tick(self, training: bool) -> None:
        now = self.clock()
        if training:
            self._interval_seconds += now - self._last
            self._seconds += now - self._last
        self._last = now

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.world_size = max(args.world_size, 1)
        self.device = args.device
        self.device_name = self.device_name_arg or (
            torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else args.device.type
        )
        self.peak_tflops = self.peak_tflops_arg
        if self.peak_tflops is None and args.device.type == "cuda":
            self.peak_tflops = peak_tflops_for(self.device_name, self.table)
            if self.peak_tflops is None:
                logger.warning(
                    "no mfu in the logs: the peak of %r is not in the table; give --peak_tflops", self.device_name
                )
        if model is not None:
            self._image_token_id, self._patches_per_frame = _media_ids(model)
            try:
                self.flops = ModelFlops.of(model)
            except (AttributeError, KeyError, TypeError, ValueError) as error:  # not a LLaVA model (e.g. wrapped)
                logger.warning("no mfu in the logs: the model's FLOPs are not countable here (%r)", error)
                self.flops = None
        self._pending = self._local_total = self._warm_local = None
        self._first_step = state.global_step + 1
        self._seconds = self._interval_seconds = self._warm_seconds = 0.0
        self._last = self.clock()

    def on_step_end(self, args, state, control, **kwargs):
        self._tick(True)
        if state.global_step == self._first_step:  # what the summary leaves out (start-up)
            self._warm_seconds = self._seconds
            self._warm_local = None if self._local_total is None else self._local_total.clone()

    def on_evaluate(self, args, state, control, **kwargs):
        self._tick(False)

    def on_save(self, args, state, control, **kwargs):
        self._tick(False)

    # -- logs ------------------------------------------------------------------------------------------------------

    def _reduce(self, vectors: list[torch.Tensor | None]) -> list[dict[str, float]]:
        """Each local counts vector summed over processes (zeros for None), as dicts."""
        device = next((v.device for v in vectors if v is not None), self.device)  # NCCL: on the GPU
        stacked = torch.stack(
            [torch.zeros(len(COUNTS), dtype=torch.int64, device=device) if v is None else v.to(device) for v in vectors]
        )
        if self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stacked)
        return [dict(zip(COUNTS, row)) for row in stacked.tolist()]

    def rates(self, counts: dict[str, float], seconds: float) -> dict[str, float]:
        """The log values of `counts` (summed over processes) trained in `seconds`."""
        computed = counts["tokens"] + counts["padding"]
        seconds = max(seconds, 1e-9)
        out = {
            "tokens_per_second": round(counts["tokens"] / seconds, 3),
            "samples_per_second": round(counts["samples"] / seconds, 3),
            "padding_fraction": round(counts["padding"] / computed, 6) if computed else 0.0,
        }
        if self.flops is not None and self.peak_tflops:
            mfu = self.flops(counts) / seconds / (self.peak_tflops * 1e12 * self.world_size)
            out["mfu"] = float(f"{mfu:.6g}")
        return out

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        if "loss" in logs:
            self._tick(True)
            (counts,) = self._reduce([self._pending])
            self._pending = None
            values = self.rates(counts, self._interval_seconds)
            self.intervals.append({"step": state.global_step, "seconds": self._interval_seconds, **counts, **values})
            self._interval_seconds = 0.0
        elif "train_runtime" in logs:  # the Trainer's summary of the run
            values = {f"train_{k}": v for k, v in self.finish(args, state).items()}
        else:
            return
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)  # the trainer recorded the logs before calling back

    def finish(self, args, state) -> dict[str, float]:
        """The run's summary (first step left out when there were more); written to `throughput.json`."""
        total, warm = self._reduce([self._local_total, self._warm_local])
        seconds = self._seconds
        steps = state.global_step - self._first_step + 1
        left_out = steps > 1 and self._warm_local is not None
        if left_out:
            total = {k: total[k] - warm[k] for k in COUNTS}
            seconds -= self._warm_seconds
            steps -= 1
        values = self.rates(total, seconds)
        self.summary = {
            "stage": self.stage,
            **values,
            "samples_per_second_per_device": round(values["samples_per_second"] / self.world_size, 3),
            "tokens_per_second_per_device": round(values["tokens_per_second"] / self.world_size, 3),
            "mfu": values.get("mfu"),
            "peak_tflops": self.peak_tflops,
            "world_size": self.world_size,
            "device": self.device_name,
            "samples": total["samples"],
            "tokens": total["tokens"],
            "padding_tokens": total["padding"],
            "seconds": round(seconds, 3),
            "steps": steps,
            "first_step_left_out": left_out,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "output_dir": str(args.output_dir),
        }
        if state.is_world_process_zero and args.output_dir:
            path = Path(args.output_dir) / "throughput.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.summary, indent=1))
        return values
