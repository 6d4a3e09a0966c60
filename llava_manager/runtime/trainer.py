"""`RunTrainer`: the HF Trainer both products train with (`training.trainer.ManagerTrainer`,
`tower.training.trainer.TowerTrainer`).

It builds the optimizer from the subclass's per-module groups (`optimizer_groups`; DeepSpeed's CPU Adam under
ZeRO-Offload, and a DeepSpeed config with its own `optimizer` section refused, since it would drop those groups),
watches every step's loss and gradients (`nonfinite.NonFiniteGuard`) and the preemption signals
(`preemption.PreemptionCallback`), commits its checkpoints (`commits.CommittedCheckpoints`, with the run state of
`save_run_state`, read back by `restore_run_state` on resume) and loads checkpoints strictly
(`core.checkpoint.StrictCheckpointLoading`).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import Trainer

from ..core.checkpoint import StrictCheckpointLoading
from .commits import CommittedCheckpoints
from .nonfinite import NonFiniteGuard
from .preemption import PreemptionCallback


class RunTrainer(CommittedCheckpoints, StrictCheckpointLoading, Trainer):
    """`Trainer` with per-module optimizer groups, the non-finite guard, preemption, committed checkpoints and
    strict checkpoint loading. Subclasses give `optimizer_groups(model)` and `lr_flags` (the command-line flags of
    their per-module learning rates, named when a DeepSpeed config would drop them)."""

    lr_flags = "the per-module learning rates"

    def __init__(self, *args, skip_nonfinite_steps: int = 0, per_module_lrs: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        ds_config = getattr(self.args, "hf_deepspeed_config", None)
        if ds_config is not None and "optimizer" in ds_config.config and per_module_lrs:
            raise ValueError(
                f"The DeepSpeed config has an 'optimizer' section, so DeepSpeed builds the optimizer and "
                f"{self.lr_flags} would be lost. Remove that section (the recipes' configs have none) or drop "
                f"those flags."
            )
        # a non-finite loss or gradient stops the run, or skips the step, before its optimizer step
        self.nonfinite = NonFiniteGuard(deepspeed=self.is_deepspeed_enabled, skip_limit=skip_nonfinite_steps)
        self.add_callback(self.nonfinite)
        # SIGTERM / SIGUSR1: a complete checkpoint at the next step boundary, then the run stops
        self.preemption = PreemptionCallback()
        self.add_callback(self.preemption)

    def optimizer_groups(self, model: nn.Module) -> list[dict]:
        """The optimizer's parameter groups (each with its "lr" and "weight_decay")."""
        raise NotImplementedError

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = self.model if model is None else model
            groups = self.optimizer_groups(model)
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            ds_config = getattr(self.args, "hf_deepspeed_config", None)
            if ds_config is not None and ds_config.is_offload():
                # ZeRO-Offload steps on the CPU: DeepSpeed's CPU Adam, with the same groups.
                from deepspeed.ops.adam import DeepSpeedCPUAdam

                optimizer_cls = DeepSpeedCPUAdam
                kwargs = {k: v for k, v in kwargs.items() if k in ("lr", "betas", "eps")}
            self.optimizer = optimizer_cls(groups, **kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, *args, **kwargs):
        result = super().compute_loss(model, inputs, *args, **kwargs)
        if model.training:  # training micro-batches only (prediction_step comes here too, in eval mode)
            self.nonfinite.observe(result[0] if isinstance(result, tuple) else result)
        return result

    def save_run_state(self, folder: Path) -> None:
        """The non-finite steps skipped so far go into each checkpoint; subclasses add their own run state."""
        if self.args.should_save:
            self.nonfinite.save(folder)

    def restore_run_state(self, checkpoint: str | Path) -> None:
        """Reads back what `save_run_state` wrote, before training resumes from `checkpoint`."""
        self.nonfinite.restore(checkpoint)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if isinstance(resume_from_checkpoint, (str, Path)):
            self.restore_run_state(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)
