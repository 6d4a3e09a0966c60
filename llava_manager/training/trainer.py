"""The HF Trainer, with per-module learning rates, manager weight norms in the logs and a count of skipped samples."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from ..core.checkpoint import StrictCheckpointLoading
from ..core.patch import get_managers

logger = logging.getLogger(__name__)


def module_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The parameters of each trainable part, found by module (not by name): vision_tower, projector (with the
    image newline of the anyres families; LLaVA-1.5 has none), llm (language model and head) and managers."""
    inner = model.model
    managers = [p for m in get_managers(model) for p in m.parameters()]
    newline = getattr(inner, "image_newline", None)
    parts = {
        "vision_tower": list(inner.vision_tower.parameters()),
        "projector": list(inner.multi_modal_projector.parameters()) + ([newline] if newline is not None else []),
        "managers": managers,
    }
    seen = {id(p) for ps in parts.values() for p in ps}
    parts["llm"] = [p for p in model.parameters() if id(p) not in seen]
    return parts


def set_trainable(model: nn.Module, modules: set[str]) -> None:
    """Train the chosen parts and the managers; freeze the rest."""
    for name, params in module_parameters(model).items():
        for p in params:
            p.requires_grad_(name == "managers" or name in modules)


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, decay_names: set[str],
                     vision_tower_lr: float | None = None, manager_lr: float | None = None) -> list[dict]:
    """Optimizer groups by module and decay. Managers get no weight decay: it would pull them back to zero."""
    names = {id(p): n for n, p in model.named_parameters()}
    lrs = {"vision_tower": vision_tower_lr or lr, "projector": lr, "llm": lr, "managers": manager_lr or lr}
    groups = []
    parts = module_parameters(model)
    for part in ("llm", "projector", "vision_tower", "managers"):  # the first group's lr is the one the Trainer logs
        params = [p for p in parts[part] if p.requires_grad]
        decays = [part != "managers" and names[id(p)] in decay_names for p in params]
        decay = [p for p, d in zip(params, decays) if d]
        no_decay = [p for p, d in zip(params, decays) if not d]
        groups += [{"params": ps, "lr": lrs[part], "weight_decay": wd}
                   for ps, wd in ((decay, weight_decay), (no_decay, 0.0)) if ps]
    return groups


@contextlib.contextmanager
def gathered(params):
    """Full values of parameters that ZeRO-3 partitions (a no-op otherwise)."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            yield
    else:
        yield


class ManagerNormCallback(TrainerCallback):
    """Adds each manager's weight norm, `manager_norm/layer_<l>`, to the training logs: the loggers that come after
    it (the trainer puts it first) and `trainer_state.json` see them."""

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if logs is None or model is None or "loss" not in logs:
            return
        managers = get_managers(model)
        with gathered([m.weight for m in managers]):
            norms = {f"manager_norm/layer_{m.layer_idx}": round(float(m.weight.detach().float().norm()), 6)
                     for m in managers}
        logs.update(norms)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(norms)  # the trainer recorded the logs before calling back


class SkipReport:
    """Samples the data set skipped, with their reasons."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def add(self, records: list[dict]) -> None:
        for r in records:
            logger.warning("skipped sample %s (id %s): %s", r["index"], r["id"], r["detail"])
        self.records += records

    def summary(self) -> dict:
        reasons = Counter(r["reason"] for r in self.records)
        return {"skipped": len(self.records), "by_reason": dict(reasons),
                "samples": sorted({(r["index"], r["id"], r["reason"]) for r in self.records})}


class ManagerTrainer(StrictCheckpointLoading, Trainer):
    """`Trainer` with learning rates per module (vision tower, managers), the manager norm callback first in line
    (so that every logger gets the norms), skipped samples counted in the logs, and checkpoints loaded strictly.

    Resuming and `load_best_model_at_end` without DeepSpeed or FSDP read the checkpoint through the model's own key
    conversion (`checkpoint.load_checkpoint_weights`): the Trainer's raw `load_state_dict(strict=False)` would find
    no key of a LLaVA checkpoint and only warn. Any missing or unexpected key is an error here.
    """

    def __init__(self, *args, vision_tower_lr: float | None = None, manager_lr: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.vision_tower_lr, self.manager_lr = vision_tower_lr, manager_lr
        self.skips = SkipReport()
        self.callback_handler.callbacks.insert(0, ManagerNormCallback())
        ds_config = getattr(self.args, "hf_deepspeed_config", None)
        if ds_config is not None and "optimizer" in ds_config.config and (vision_tower_lr or manager_lr):
            raise ValueError("The DeepSpeed config has an 'optimizer' section, so DeepSpeed builds the optimizer and "
                             "the per-module learning rates (--vision_tower_lr, --manager_lr) would be lost. Remove "
                             "that section (the recipes' configs have none) or drop those flags.")

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(model))
            groups = parameter_groups(model, self.args.learning_rate, self.args.weight_decay, decay,
                                      self.vision_tower_lr, self.manager_lr)
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
        self.skips.add(inputs.pop("skipped", []))
        return super().compute_loss(model, inputs, *args, **kwargs)

    def prediction_step(self, model, inputs, *args, **kwargs):
        inputs.pop("skipped", None)
        return super().prediction_step(model, inputs, *args, **kwargs)

    def log(self, logs, *args, **kwargs):
        if "loss" in logs:
            logs["data_skipped"] = len(self.skips.records)
        super().log(logs, *args, **kwargs)

    def gather_skips(self) -> dict:
        """The skip summary of all ranks (collective: call on every rank)."""
        records = [self.skips.records]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            records = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(records, self.skips.records)
        total = SkipReport()
        total.records = [r for rank in records for r in rank]
        return total.summary()
