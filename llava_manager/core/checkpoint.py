"""Loading a saved model's weights back into a live model, strictly: what the Trainer does on resume and for
`load_best_model_at_end`.

transformers 5.x writes LLaVA-family checkpoints in the legacy key layout (`save_pretrained` reverts the checkpoint
conversion mapping: `language_model.model.layers...`, `vision_tower...`). `from_pretrained` converts the keys back,
but the Trainer's own loaders call a raw `load_state_dict(state, strict=False)`: every key comes back missing, the
run only logs a warning and goes on from the weights it had (transformers issue #43701). Here the keys go through
the model's own conversion mapping, as `from_pretrained` does, and any key still missing or unexpected is an error.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

logger = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """A checkpoint whose weights do not cover the model exactly."""


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a `save_pretrained` directory (one safetensors file or an index of shards), on the CPU."""
    directory = Path(directory)
    single, index = directory / SAFE_WEIGHTS_NAME, directory / SAFE_WEIGHTS_INDEX_NAME
    if single.is_file():
        return load_file(str(single), device="cpu")
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(directory / shard), device="cpu"))
        return state
    raise FileNotFoundError(
        f"{directory} holds no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}; checkpoints are read from safetensors "
        f"only (the Trainer writes them by default)."
    )


def to_model_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint keys renamed to the model's own, with the mapping `from_pretrained` applies."""
    conversions = get_model_conversion_mapping(model)
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    if converters:  # none for the LLaVA family: they merge or split tensors, which a rename cannot express
        raise NotImplementedError(f"{type(model).__name__} converts weights on load, not only renames them.")
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    own = model.state_dict()
    return {
        rename_source_key(key, renamings, [], model.base_model_prefix, own)[0]: value for key, value in state.items()
    }


def load_checkpoint_weights(model: nn.Module, directory: str | Path) -> None:
    """Load the weights of `directory` into `model` in place. Raises `CheckpointMismatchError` naming the keys when
    any parameter or buffer is left unloaded (tied weights excepted) or the checkpoint holds keys the model lacks."""
    state = to_model_keys(model, read_weights(directory))
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in tied_keys(model)]
    check_load(missing, result.unexpected_keys, str(directory))


def tied_keys(model: nn.Module) -> set[str]:
    """Keys that `save_pretrained` leaves out because they share a tensor with another key."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    seen: dict[int, str] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            tied.add(name)
        seen.setdefault(id(tensor), name)
    return tied


def check_load(missing: list[str], unexpected: list[str], source: str) -> None:
    problems = []
    if missing:
        problems.append(f"missing {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected {_some(unexpected)}")
    if problems:
        raise CheckpointMismatchError(
            f"The weights in {source} do not match the model: " + "; ".join(problems) + ". Loading it would "
            "leave the model partly at the weights it has now; use a checkpoint saved from this model (the same "
            "architecture, sizes and managers)."
        )


def _some(keys: list[str], limit: int = 10) -> str:
    keys = sorted(keys)
    return f"{keys[:limit]}" + (f" and {len(keys) - limit} more ({len(keys)} keys)" if len(keys) > limit else "")


class StrictCheckpointLoading:
    """`Trainer` mixin: resuming and `load_best_model_at_end` read the checkpoint through `load_checkpoint_weights`
    (the model's own key conversion; any missing or unexpected key is an error), and a load that leaves keys out is
    an error, not a warning. DeepSpeed, FSDP and peft adapters read checkpoints of their own making; the Trainer
    handles those."""

    def _loads_own_checkpoints(self, model) -> bool:
        from transformers.trainer_utils import _is_peft_model

        return self.is_deepspeed_enabled or self.is_fsdp_enabled or _is_peft_model(model)

    # upstream: see llava_manager/upstream.py
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = self.model if model is None else model
        if self._loads_own_checkpoints(model):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        logger.info("loading the model weights of %s (strictly)", resume_from_checkpoint)
        load_checkpoint_weights(model, resume_from_checkpoint)

    def _load_best_model(self):
        if self._loads_own_checkpoints(self.model):
            return super()._load_best_model()
        logger.info("loading the best model, %s (%s)", self.state.best_model_checkpoint, self.state.best_metric)
        load_checkpoint_weights(self.model, self.state.best_model_checkpoint)

    def _issue_warnings_after_load(self, load_result):
        check_load(load_result.missing_keys, load_result.unexpected_keys, "the checkpoint")
