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
    def __init__(self, deepspeed: bool = False):
        self.deepspeed = deepspeed
        self.bad_loss: float | None = None

    def observe(self, loss: torch.Tensor) -> None:
        value = loss.detach().float()
        if not torch.isfinite(value).all():
            self.bad_loss = float(value.sum())

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        bad_gradients, total = 0, 0
        if not self.deepspeed and model is not None:
            for p in model.parameters():
                if p.grad is not None:
                    total += 1
                    bad_gradients += not bool(torch.isfinite(_local(p.grad)).all())
        device = next(model.parameters()).device if model is not None else torch.device("cpu")
        flag = torch.tensor([self.bad_loss is not None, bool(bad_gradients)], dtype=torch.int32, device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every process stops at the same step
        self.bad_loss, loss = None, self.bad_loss
        if flag.any():
            what = []
            if flag[0]:
                what.append(f"the loss is {loss if loss is not None else 'not finite on another process'}")
            if flag[1]:
                where = f"in {bad_gradients} of {total} parameters" if bad_gradients else "on another process"
                what.append(f"gradients are not finite ({where}, after clipping)")
            raise NonFiniteError(
                f"step {state.global_step + 1}: {' and '.join(what)}; the step was not taken and nothing of it was "
                f"saved. Resume from the newest complete checkpoint (--resume_from_checkpoint last) with a lower "
                f"learning rate, or find the batch that caused it (--logging_steps 1)."
            )
        return control
