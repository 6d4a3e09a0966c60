"""Stops a run at the first step whose loss or gradients are not finite, before the optimizer takes it.

Every micro-batch's loss is watched (`NonFiniteGuard.observe`, from `compute_loss`); before each optimizer step the
gradients are checked too (not under DeepSpeed, whose engine holds them and steps inside `backward`: there the loss
alone decides, after that step), and all processes agree. A non-finite step raises `NonFiniteError` naming the step,
so no checkpoint or export of it is written: the newest complete checkpoint is the last good state.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from transformers import TrainerCallback


class NonFiniteError(FloatingPointError):
    """A training step with a non-finite loss or gradient."""


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor  # FSDP2 shards gradients as DTensors


class NonFiniteGuard(TrainerCallback):
    """Watches the step's losses and gradients on their device; the step's one host sync is the check itself."""

    def __init__(self, deepspeed: bool = False):
        self.deepspeed = deepspeed
        self.loss_sum: torch.Tensor | None = None  # the step's micro-batch losses, summed: non-finite if any is

    def observe(self, loss: torch.Tensor) -> None:
        value = loss.detach().float().sum()
        self.loss_sum = value if self.loss_sum is None else self.loss_sum + value

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
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every process stops at the same step
        if flag.any():
            what = []
            if flag[0]:
                shown = float(loss) if not torch.isfinite(loss) else "not finite on another process"
                what.append(f"the loss is {shown}")
            if flag[1]:
                bad = int(bad_gradients)
                where = f"in {bad} of {len(grads)} parameters" if bad else "on another process"
                what.append(f"gradients are not finite ({where}, after clipping)")
            raise NonFiniteError(
                f"step {state.global_step + 1}: {' and '.join(what)}; the step was not taken and nothing of it was "
                f"saved. Resume from the newest complete checkpoint (--resume_from_checkpoint last) with a lower "
                f"learning rate, or find the batch that caused it (--logging_steps 1)."
            )
        return control
