"""Non-finite steps: by default the run stops at the first step whose loss or gradients are not finite, before the
optimizer takes it; with `--skip_nonfinite_steps N` such steps are skipped, counted and logged, and the run stops
when more than N come in a row.

Every micro-batch's loss is watched (`NonFiniteGuard.observe`, from `compute_loss`); before each optimizer step the
gradients are checked too (not under DeepSpeed, whose engine holds them and steps inside `backward`: there the loss
alone decides, after that step), and all processes agree. A step that stops the run raises `NonFiniteError` naming
the step, so no checkpoint or export of it is written: the newest complete checkpoint is the last good state.

A skipped step drops the step's gradients (every parameter's `grad` set to None), so the optimizer changes nothing:
no update, no weight decay, no moment or step count of Adam's moves. The learning-rate schedule and the step count
go on, as for the data. The log shows the step's real loss (NaN or inf: the recipes turn off the Trainer's
`logging_nan_inf_filter`) and `nonfinite_skipped`, the steps skipped in the whole run; the skipped steps are part of
every checkpoint (`nonfinite_skipped.json`) and of the output folder at the end.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """A training step with a non-finite loss or gradient."""


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor  # FSDP2 shards gradients as DTensors


class NonFiniteGuard(TrainerCallback):
    """Watches the step's losses and gradients on their device; the step's one host sync is the check itself.
    `skip_limit` > 0 skips up to that many non-finite steps in a row (`skipped`: their numbers, the whole run's)."""

    FILE = "nonfinite_skipped.json"

    def __init__(self, deepspeed: bool = False, skip_limit: int = 0):
        if skip_limit < 0:
            raise ValueError(f"--skip_nonfinite_steps {skip_limit}: use 0 (stop at the first) or a positive count.")
        if skip_limit and deepspeed:
            raise ValueError(
                "--skip_nonfinite_steps needs the optimizer step to be skippable; under DeepSpeed the engine steps "
                "inside backward. Leave it out (the run then stops at the first non-finite step) or train with "
                "FSDP2 / without an engine."
            )
        self.deepspeed, self.skip_limit = deepspeed, skip_limit
        self.loss_sum: torch.Tensor | None = None  # the step's micro-batch losses, summed: non-finite if any is
        self.skipped: list[int] = []
        self.in_a_row = 0

    def observe(self, loss: torch.Tensor) -> None:
        value = loss.detach().float().sum()
        self.loss_sum = value if self.loss_sum is None else self.loss_sum + value

    def save(self, folder: Path) -> None:
        if not (self.skip_limit or self.skipped):
            return
        (Path(folder) / self.FILE).write_text(json.dumps({"skipped_steps": self.skipped}))

    def restore(self, checkpoint: str | Path) -> None:
        path = Path(checkpoint) / self.FILE
        if path.is_file():
            self.skipped = json.loads(path.read_text())["skipped_steps"]

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        device = next(model.parameters()).device if model is not None else torch.device("cpu")
        loss = self.loss_sum.to(device) if self.loss_sum is not None else torch.zeros((), device=device)
        self.loss_sum = None
        grads = (
            []
            if self.deepspeed or model is None
            else [_local(p.grad) for p in model.parameters() if p.grad is not None]
        )
        bad_gradients = (
            torch.stack([~torch.isfinite(g).all() for g in grads]).sum().to(device)
            if grads
            else torch.zeros((), dtype=torch.long, device=device)
        )
        flag = torch.stack([~torch.isfinite(loss), bad_gradients > 0]).to(torch.int32)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every process decides the same for the step
        if not flag.any():
            self.in_a_row = 0
            return control
        step = state.global_step + 1
        what = []
        if flag[0]:
            shown = float(loss) if not torch.isfinite(loss) else "not finite on another process"
            what.append(f"the loss is {shown}")
        if flag[1]:
            bad = int(bad_gradients)
            where = f"in {bad} of {len(grads)} parameters" if bad else "on another process"
            what.append(f"gradients are not finite ({where}, after clipping)")
        what = " and ".join(what)
        self.in_a_row += 1
        if self.in_a_row > self.skip_limit:
            in_a_row = f" ({self.in_a_row} in a row, more than --skip_nonfinite_steps {self.skip_limit})"
            raise NonFiniteError(
                f"step {step}: {what}{in_a_row if self.skip_limit else ''}; the step was not taken and nothing of "
                f"it was saved. Resume from the newest complete checkpoint (--resume_from_checkpoint last) with a "
                f"lower learning rate, or find the batch that caused it (--logging_steps 1)"
                f"{'' if self.skip_limit else '; --skip_nonfinite_steps N skips up to N such steps in a row'}."
            )
        for p in model.parameters():
            p.grad = None  # the optimizer then leaves every parameter and its state as they are
        self.skipped.append(step)
        logger.warning(
            "step %d: %s; skipped (%d in a row, %d in the run; --skip_nonfinite_steps %d)",
            step,
            what,
            self.in_a_row,
            len(self.skipped),
            self.skip_limit,
        )
        return control
