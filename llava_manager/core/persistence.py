"""Saving and loading managers: on their own (`save_manager` / `load_manager`, like a peft adapter) or inside a
whole patched model saved with `save_pretrained` (`from_pretrained`). safetensors + JSON only, no pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, PreTrainedModel
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

from ..families import FAMILIES, Family, family_of_config
from .checkpoint import CheckpointMismatchError, check_load
from .config import ManagerConfig
from .patch import CONFIG_KEY, ManagerPlan, _Runtime, _runtime_of, apply_manager

CONFIG_NAME = "manager_config.json"
WEIGHTS_NAME = "manager_model.safetensors"
FORMAT_VERSION = 1
# from_pretrained keyword arguments that say where a checkpoint is, as opposed to how to build the model.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


def _weight_key(slot: int) -> str:
    return f"managers.{slot}.weight"


def save_manager(model: nn.Module, save_directory: str | Path) -> Path:
    """Write only what the patch added: `manager_config.json` and `manager_model.safetensors`."""
    runtime = _runtime_of(model)
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "manager_config": runtime.plan.config.to_dict(),
        "model": runtime.plan.describe(),
    }
    (out / CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n")
    tensors = {_weight_key(i): m.weight.detach().to("cpu").contiguous() for i, m in enumerate(runtime.active_stack())}
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    return out


def load_manager(model: nn.Module, load_directory: str | Path) -> nn.Module:
    """Re-apply saved managers to a base model and load their weights strictly; returns the model.

    Everything is checked before the model is touched: the saved layout must match what the saved config
    resolves to on this model, and the weights file must hold exactly the expected tensors and shapes.
    """
    directory = Path(load_directory)
    config_file, weights_file = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_file, weights_file):
        if not path.is_file():
            raise FileNotFoundError(
                f"load_manager: {path} not found (a manager directory holds {CONFIG_NAME} and {WEIGHTS_NAME})."
            )
    payload = json.loads(config_file.read_text())
    config = ManagerConfig.from_dict(payload["manager_config"])
    plan = ManagerPlan(model, config)
    saved, here = dict(payload.get("model", {})), plan.describe()
    saved.setdefault("family", "llava_onevision")  # saved before other families were supported
    mismatched = [
        f"{key}: saved {saved.get(key)}, this model {here[key]}" for key in here if saved.get(key) != here[key]
    ]
    if mismatched:
        raise ValueError(f"load_manager: {directory} was saved for a different model; " + "; ".join(mismatched) + ".")

    expected = {_weight_key(i): (len(plan.vision_layers), plan.hidden_size) for i in range(len(plan.inject_layers))}
    with safe_open(str(weights_file), framework="pt") as f:
        state = {key: f.get_tensor(key) for key in f.keys()}
    check_manager_state(state, expected, str(weights_file))

    _Runtime(plan).install()
    with torch.no_grad():
        for i, manager in enumerate(_runtime_of(model).active_stack()):
            manager.weight.copy_(state[_weight_key(i)])
    return model


def check_manager_state(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], source: str) -> None:
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    misshaped = [
        f"{k} has shape {tuple(state[k].shape)}, expected {expected[k]}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if extra:
        problems.append(f"unexpected {extra}")
    if misshaped:
        problems.append("; ".join(misshaped))
    if problems:
        raise ValueError(f"Manager weights in {source} do not match the managers: " + "; ".join(problems) + ".")


def manager_model_class(adapter: Family) -> type[PreTrainedModel]:
    """The family's `...ForConditionalGeneration` built with the managers its config records (`config.manager_config`),
    so that transformers' own `from_pretrained` loads base and manager weights together (dtype, device_map, shards).
    One subclass per family, made once."""
    if adapter.name not in _MANAGER_CLASSES:
        base = adapter.model_class

        def __init__(self, config) -> None:
            base.__init__(self, config)
            if not hasattr(config, CONFIG_KEY):
                raise ValueError(
                    f"{type(self).__name__} needs a config with `{CONFIG_KEY}` (written by apply_manager)."
                )
            apply_manager(self, ManagerConfig.from_dict(getattr(config, CONFIG_KEY)))

        name = base.__name__.replace("ForConditionalGeneration", "ManagerForConditionalGeneration")
        cls = type(
            name,
            (base,),
            {
                "__init__": __init__,
                "__module__": __name__,
                "__doc__": (
                    f"{adapter.title} with the managers its config records; "
                    "load it with `llava_manager.from_pretrained`."
                ),
            },
        )
        # transformers renames checkpoint keys (legacy LLaVA layouts) by class name, and skips classes defined outside
        # it unless they are registered: give the subclass the base model's renaming so both read the same files.
        # (transformers looks a class's mapping up by class name first, then by model_type: so do we.)
        mapping = get_checkpoint_conversion_mapping(base.__name__)
        if mapping is None:
            mapping = get_checkpoint_conversion_mapping(adapter.config_class.model_type)
        register_checkpoint_conversion_mapping(name, mapping or [], overwrite=True)
        _MANAGER_CLASSES[adapter.name] = cls
        globals()[name] = cls  # importable by name: pickle and multiprocessing look classes up there
    return _MANAGER_CLASSES[adapter.name]


_MANAGER_CLASSES: dict[str, type[PreTrainedModel]] = {}
for _adapter in FAMILIES.values():  # made at import, so that pickle finds every one by name
    manager_model_class(_adapter)
LlavaOnevisionManagerForConditionalGeneration = _MANAGER_CLASSES["llava_onevision"]


def from_pretrained(pretrained_model_name_or_path: str | Path, **kwargs: Any) -> PreTrainedModel:
    """Load a model of a supported family saved with `save_pretrained` (its family read from the config): patched if its
    config records managers, plain otherwise.

    Takes the keyword arguments of transformers' `from_pretrained` (dtype, device_map, revision, ...). Loading is
    strict: a weight the checkpoint lacks (which transformers would initialise at random, with a warning) or one it
    holds that the model does not have is an error naming the keys; manager weights missing from a patched
    checkpoint are never a silent zero-initialisation.
    """
    hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
    config = kwargs.get("config") or AutoConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
    adapter = family_of_config(config)
    patched = hasattr(config, CONFIG_KEY)
    cls = manager_model_class(adapter) if patched else adapter.model_class
    want_info = kwargs.pop("output_loading_info", False)
    model, info = cls.from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
    missing = sorted(k for k in info["missing_keys"] if ".managers." in f".{k}")
    if missing:
        raise CheckpointMismatchError(
            f"{pretrained_model_name_or_path} records managers in its config but its weights lack {missing}."
        )
    check_load(sorted(info["missing_keys"]), sorted(info["unexpected_keys"]), str(pretrained_model_name_or_path))
    return (model, info) if want_info else model
