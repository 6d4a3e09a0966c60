"""What every way in of `tower.weights` shares: the `WeightsReport` a load answers with, the strict loader `_load`
(with the documented reshapes of `_fit`), the reader of state dicts and configs from files, folders and modules
(`read_state_dict`), and where the backbone sits in a model (`backbone_prefix`).

The documented reshapes:

- Position embeddings at another resolution: the official `adapt_position_encoding` (`src/modules/clip_model.py`
  l.249-276): bicubic interpolation of the patch grid, class-token row kept (`interpolate_position_embedding`).
- NLVR2's third token type: the official NLVR2 head set-up (`mt_module.py`, "nlvr2" branch): rows 0, 1 copied,
  row 2 = row 1.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# what ManagerTower adds to BridgeTowerModel, and what it removes (backbone-relative key prefixes)
ADDED_PREFIXES = (
    "cross_modal_text_managers.",
    "cross_modal_image_managers.",
    "layer_embeddings_text.",
    "layer_embeddings_image.",
)
REMOVED_PREFIXES = (
    "cross_modal_text_layernorm.",
    "cross_modal_image_layernorm.",
    "cross_modal_text_link_tower.",
    "cross_modal_image_link_tower.",
)
POSITION_KEY = "vision_model.visual.embeddings.position_embedding.weight"
TOKEN_TYPE_KEY = "token_type_embeddings.weight"
WORD_EMBEDDINGS_KEY = "text_model.embeddings.word_embeddings.weight"


@dataclass
class WeightsReport:
    """What a load did. Keys are the model's state-dict keys unless said otherwise.

    loaded: model keys that received a tensor. missing: model keys that kept their initialisation.
    unexpected: source keys (after renaming) that were not loaded (only the documented kinds get here).
    reshaped: model key -> what was done to fit it (interpolated position embeddings, grown token types, ...).
    dropped: source keys dropped by the mapping itself (documented drops, e.g. the official checkpoint's
    CLIP-text leftovers). sources: model key -> source key it came from. notes: anything else worth knowing.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reshaped: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, name: str):
        return getattr(self, name)

    def summary(self) -> str:
        lines = [
            f"loaded {len(self.loaded)} tensors, kept the initialisation of {len(self.missing)}, "
            f"left {len(self.unexpected)} source tensors unused, dropped {len(self.dropped)}"
        ]
        lines += [f"  reshaped {k}: {v}" for k, v in self.reshaped.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def backbone_prefix(model: nn.Module) -> str:
    """The prefix of the ManagerTower backbone in `model`'s state dict: "" for a `ManagerTowerModel` (or a
    `BridgeTowerModel`), e.g. "managertower." for a task model holding it as `managertower`."""
    keys = [k for k in model.state_dict() if k.endswith(WORD_EMBEDDINGS_KEY)]
    if len(keys) != 1:
        raise ValueError(
            f"cannot find one ManagerTower backbone in {type(model).__name__}: keys ending with "
            f"{WORD_EMBEDDINGS_KEY!r}: {keys}"
        )
    return keys[0][: -len(WORD_EMBEDDINGS_KEY)]


def _config_of(model: nn.Module, prefix: str):
    if prefix:
        module = model.get_submodule(prefix.rstrip("."))
        return module.config
    return model.config


def interpolate_position_embedding(position_embedding: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize a ViT position embedding ((g*g + 1) x D, class token first) to a `grid` x `grid` patch grid.

    As the official `adapt_position_encoding` (LooperXX/ManagerTower `src/modules/clip_model.py` l.249-276, from
    METER): the class-token row is kept, the g x g patch grid is resized with `F.interpolate(mode="bicubic")`
    (align_corners False), row-major as the patches are flattened. Computed in float32, returned in the input dtype.
    """
    rows, dim = position_embedding.shape
    g = math.isqrt(rows - 1)
    if g * g != rows - 1:
        raise ValueError(f"position embedding with {rows} rows is not a class token plus a square patch grid")
    if g == grid:
        return position_embedding.clone()
    patches = position_embedding[1:].reshape(g, g, dim).permute(2, 0, 1).unsqueeze(0).float()
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = patches.squeeze(0).permute(1, 2, 0).reshape(grid * grid, dim).to(position_embedding.dtype)
    return torch.cat([position_embedding[:1], patches], dim=0)


def _size(value) -> int:
    """An image or patch size as one int (square only, as BridgeTower's vision model)."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"only square sizes are supported, got {value}")
        value = value[0]
    return int(value)


def _tensor_groups(state: Mapping[str, torch.Tensor]) -> dict[str, tuple]:
    """key -> storage identity, so tied parameters (one tensor under two names) count as one."""
    return {k: (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)) for k, v in state.items()}


def _fit(key: str, tensor: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, str] | None:
    """The documented reshapes; None when `tensor` cannot be fitted to `target`'s shape."""
    if key.endswith(POSITION_KEY) and tensor.dim() == 2 and target.dim() == 2 and tensor.shape[1] == target.shape[1]:
        grid = math.isqrt(target.shape[0] - 1)
        if grid * grid == target.shape[0] - 1 and math.isqrt(tensor.shape[0] - 1) ** 2 == tensor.shape[0] - 1:
            g = math.isqrt(tensor.shape[0] - 1)
            return (
                interpolate_position_embedding(tensor, grid),
                f"position embedding interpolated from a {g}x{g} to a {grid}x{grid} patch grid (bicubic, "
                f"class token kept; official adapt_position_encoding)",
            )
    if (
        key.endswith(TOKEN_TYPE_KEY)
        and tensor.dim() == 2
        and target.dim() == 2
        and tensor.shape[1] == target.shape[1]
        and 2 <= tensor.shape[0] < target.shape[0]
    ):
        extra = target.shape[0] - tensor.shape[0]
        grown = torch.cat([tensor, tensor[-1:].expand(extra, -1)], dim=0)
        return grown, (
            f"token types grown from {tensor.shape[0]} to {target.shape[0]} rows, the new rows copying "
            f"row {tensor.shape[0] - 1} (the image type; official NLVR2 set-up)"
        )
    if key.endswith("temperature") and tensor.numel() == 1 and target.numel() == 1:  # official 0-dim temperature
        return tensor.reshape(target.shape), f"scalar reshaped from {tuple(tensor.shape)} to {tuple(target.shape)}"
    return None


def _may_miss_added(prefix: str, plan: Mapping[str, tuple]) -> Callable[[str], bool]:
    """Model keys that may keep their init when loading a BridgeTower-like source: heads (outside `prefix`) and what
    ManagerTower adds (`ADDED_PREFIXES`), the latter only for a module family the source has none of (a source with
    some manager keys must have all of them)."""
    provided = {p for p in ADDED_PREFIXES for k in plan if k.startswith(prefix + p)}

    def may_miss(key: str) -> bool:
        if prefix and not key.startswith(prefix):
            return True  # a head the source lacks
        rest = key[len(prefix) :]
        return any(rest.startswith(p) and p not in provided for p in ADDED_PREFIXES)

    return may_miss


def _load(
    model: nn.Module,
    plan: Mapping[str, tuple[str, torch.Tensor]],
    *,
    may_miss: Callable[[str], bool],
    may_leave: Callable[[str, str], bool],
    report: WeightsReport,
    what: str,
) -> WeightsReport:
    """Load `plan` (model key -> (source key, tensor)) strictly into `model`.

    `may_miss(model_key)`: whether a model key may keep its initialisation; `may_leave(model_key, source_key)`:
    whether a planned tensor whose model key does not exist may be left unused. Shape mismatches are fitted by
    `_fit` or are errors. All problems are collected and raised together as one ValueError.
    """
    target = model.state_dict()
    parameters = {k for k, _ in model.named_parameters(remove_duplicate=False)}
    problems, ready = [], {}
    for key, (source_key, tensor) in plan.items():
        if key not in target:
            if may_leave(key, source_key):
                report.unexpected.append(source_key)
            else:
                problems.append(f"unknown key {source_key!r} (-> {key!r}: not in {type(model).__name__})")
            continue
        if not isinstance(tensor, torch.Tensor):
            problems.append(f"{source_key!r} is not a tensor ({type(tensor).__name__})")
            continue
        if tensor.shape != target[key].shape:
            fitted = _fit(key, tensor, target[key])
            if fitted is None:
                problems.append(
                    f"shape mismatch for {key!r}: source {source_key!r} has {tuple(tensor.shape)}, "
                    f"the model {tuple(target[key].shape)}"
                )
                continue
            tensor, how = fitted
            report.reshaped[key] = how
        ready[key] = tensor
        report.sources[key] = source_key
    groups = _tensor_groups(target)
    loaded_groups = {groups[k] for k in ready}
    missing = [k for k in target if k not in ready and groups[k] not in loaded_groups]
    bad_missing = [k for k in missing if k in parameters and not may_miss(k)]
    if bad_missing:
        problems.append(f"model keys the source does not provide: {bad_missing}")
    if problems:
        raise ValueError(f"{what}: cannot load strictly into {type(model).__name__}:\n  " + "\n  ".join(problems))
    result = model.load_state_dict(ready, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    report.loaded = sorted(ready)
    report.missing = sorted(missing)
    report.unexpected = sorted(report.unexpected)
    if any(k not in parameters for k in missing):
        report.notes.append(f"buffers kept as built: {[k for k in missing if k not in parameters]}")
    return report


def read_state_dict(source, *, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict | None]:
    """A state dict and the config dict (None if unknown) from: a mapping; a module (its state dict and config);
    a `save_pretrained` folder (`model.safetensors`, sharded `model.safetensors.index.json`, or
    `pytorch_model.bin`; `config.json`); a `.safetensors` file; or a torch file (`.bin`, `.pt`, a Lightning `.ckpt`
    whose `state_dict` is taken). Torch files are read with `weights_only=True`; a file that needs arbitrary
    unpickling (some Lightning checkpoints) is refused unless `allow_pickle=True`, which runs its pickled code:
    only for files you trust."""
    if isinstance(source, nn.Module):
        config = getattr(source, "config", None)
        return dict(source.state_dict()), (config.to_dict() if config is not None else None)
    if isinstance(source, Mapping):
        if "state_dict" in source and isinstance(source["state_dict"], Mapping):
            return dict(source["state_dict"]), None
        return dict(source), None
    path = Path(os.fspath(source))
    config = None
    if path.is_dir():
        if (path / "config.json").exists():
            config = json.loads((path / "config.json").read_text())
        if (path / "model.safetensors").exists():
            files = [path / "model.safetensors"]
        elif (path / "model.safetensors.index.json").exists():
            index = json.loads((path / "model.safetensors.index.json").read_text())
            files = [path / f for f in sorted(set(index["weight_map"].values()))]
        elif (path / "pytorch_model.bin").exists():
            files = [path / "pytorch_model.bin"]
        else:
            raise FileNotFoundError(
                f"no model.safetensors, model.safetensors.index.json or pytorch_model.bin in {path}"
            )
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(path)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(str(file)))
            continue
        try:
            obj = torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            if not allow_pickle:
                raise ValueError(
                    f"{file} cannot be read with torch.load(weights_only=True) ({error}). If you trust "
                    f"the file, pass allow_pickle=True."
                ) from error
            obj = torch.load(file, map_location="cpu", weights_only=False)
        if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
            obj = obj["state_dict"]
        state.update(obj)
    return state, config
