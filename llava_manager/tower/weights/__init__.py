"""Weights in: build a ManagerTower from pretrained unimodal encoders, warm-start it from a transformers BridgeTower
checkpoint, or convert an official ManagerTower checkpoint (LooperXX/ManagerTower).

    model, report = from_unimodal(config, RobertaModel.from_pretrained(...), CLIPVisionModel.from_pretrained(...))
    report = warm_start_from_bridgetower(model, "path/to/bridgetower")     # a save_pretrained folder or a state dict
    report = load_official_checkpoint(model, "ManagerTower_pt_base.ckpt")  # a Lightning .ckpt or its state dict

Every entry point loads *strictly*: each source tensor lands on a model key of the same shape (or a documented
reshape), and the keys left on either side must be the documented ones; anything else is a `ValueError` naming the
keys. The answer is a `WeightsReport` (`loaded`, `missing`, `unexpected`, `reshaped`, `dropped`, `sources`, `notes`;
also readable as `report["missing"]`).

`model` is a `ManagerTowerModel` or a task model holding one (any module whose state dict has the backbone under a
prefix, e.g. `managertower.`; heads are the keys outside that prefix). Where the mappings come from:

- CLIP (transformers' `CLIPVisionModel`, HF layout) -> BridgeTower's vision model, which keeps the OpenAI CLIP layout
  (transformers `modeling_bridgetower.py`: `BridgeTowerVisionEmbeddings`, `BridgeTowerResidualAttention` built on
  `nn.MultiheadAttention`, `mlp.{c_fc, gelu=QuickGELU, c_proj}`): `pre_layrnorm -> ln_pre`, `layer_norm{1,2} ->
  ln_{1,2}`, `mlp.fc{1,2} -> mlp.c_{fc,proj}`, `self_attn.{q,k,v}_proj -> attn.in_proj_{weight,bias}` (concatenated
  in the order q, k, v, `nn.MultiheadAttention`'s packing), `self_attn.out_proj -> attn.out_proj`,
  `post_layernorm -> ln_post`. This is the inverse of transformers' own OpenAI-CLIP converter
  (`convert_clip_original_pytorch_to_hf.py`).
- RoBERTa -> `text_model.*`: `BridgeTowerTextModel` is RoBERTa under the same attribute names (`embeddings`,
  `encoder.layer.{i}.{attention,intermediate,output}`, `pooler`).
- transformers BridgeTower -> ManagerTower: the same names (ManagerTowerModel keeps BridgeTowerModel's attribute
  names); BridgeTower's task models hold the backbone under `bridgetower.`.
- Official ManagerTower -> this model: `src/modules/mt_module.py` and `heads.py` at LooperXX/ManagerTower HEAD
  86e2372 (module tree in `MTTransformer.__init__`; see `OFFICIAL_RENAMES` / `official_key`).
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
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "WeightsReport",
    "backbone_prefix",
    "interpolate_position_embedding",
    "check_unimodal_configs",
    "unimodal_state_dict",
    "from_unimodal",
    "read_state_dict",
    "warm_start_from_bridgetower",
    "official_key",
    "convert_official_state_dict",
    "load_official_checkpoint",
]

# what ManagerTower adds to BridgeTowerModel, and what it removes (backbone-relative key prefixes)
ADDED_PREFIXES = ("cross_modal_text_managers.", "cross_modal_image_managers.",
                  "layer_embeddings_text.", "layer_embeddings_image.")
REMOVED_PREFIXES = ("cross_modal_text_layernorm.", "cross_modal_image_layernorm.",
                    "cross_modal_text_link_tower.", "cross_modal_image_link_tower.")
HF_UNMATCHED_HEADS = ("itc_image_head.", "itc_cross_modal_head.", "logit_scale")  # BridgeTowerForContrastiveLearning
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
        lines = [f"loaded {len(self.loaded)} tensors, kept the initialisation of {len(self.missing)}, "
                 f"left {len(self.unexpected)} source tensors unused, dropped {len(self.dropped)}"]
        lines += [f"  reshaped {k}: {v}" for k, v in self.reshaped.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def backbone_prefix(model: nn.Module) -> str:
    """The prefix of the ManagerTower backbone in `model`'s state dict: "" for a `ManagerTowerModel` (or a
    `BridgeTowerModel`), e.g. "managertower." for a task model holding it as `managertower`."""
    keys = [k for k in model.state_dict() if k.endswith(WORD_EMBEDDINGS_KEY)]
    if len(keys) != 1:
        raise ValueError(f"cannot find one ManagerTower backbone in {type(model).__name__}: keys ending with "
                         f"{WORD_EMBEDDINGS_KEY!r}: {keys}")
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
            return (interpolate_position_embedding(tensor, grid),
                    f"position embedding interpolated from a {g}x{g} to a {grid}x{grid} patch grid (bicubic, "
                    f"class token kept; official adapt_position_encoding)")
    if (key.endswith(TOKEN_TYPE_KEY) and tensor.dim() == 2 and target.dim() == 2
            and tensor.shape[1] == target.shape[1] and 2 <= tensor.shape[0] < target.shape[0]):
        extra = target.shape[0] - tensor.shape[0]
        grown = torch.cat([tensor, tensor[-1:].expand(extra, -1)], dim=0)
        return grown, (f"token types grown from {tensor.shape[0]} to {target.shape[0]} rows, the new rows copying "
                       f"row {tensor.shape[0] - 1} (the image type; official NLVR2 set-up)")
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
        rest = key[len(prefix):]
        return any(rest.startswith(p) and p not in provided for p in ADDED_PREFIXES)

    return may_miss


def _load(model: nn.Module, plan: Mapping[str, tuple[str, torch.Tensor]], *,
          may_miss: Callable[[str], bool], may_leave: Callable[[str, str], bool],
          report: WeightsReport, what: str) -> WeightsReport:
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
                problems.append(f"shape mismatch for {key!r}: source {source_key!r} has {tuple(tensor.shape)}, "
                                f"the model {tuple(target[key].shape)}")
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


# ---------------------------------------------------------------------------------------------------------------
# 1. unimodal encoders
# ---------------------------------------------------------------------------------------------------------------
TEXT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id")

CLIP_BLOCK_RENAMES = {  # HF CLIPEncoderLayer -> OpenAI CLIP ResidualAttentionBlock (BridgeTowerResidualAttention)
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
}
CLIP_RENAMES = {
    "embeddings.class_embedding": "embeddings.class_embedding",
    "embeddings.patch_embedding.weight": "embeddings.patch_embedding.weight",
    "embeddings.position_embedding.weight": "embeddings.position_embedding.weight",
    "pre_layrnorm.weight": "ln_pre.weight",
    "pre_layrnorm.bias": "ln_pre.bias",
    "post_layernorm.weight": "ln_post.weight",
    "post_layernorm.bias": "ln_post.bias",
}


def _check(errors: list[str], name: str, ours, theirs, their_name: str) -> None:
    if ours != theirs:
        errors.append(f"{name} = {ours!r} but {their_name} = {theirs!r}")


def check_unimodal_configs(config, text_config=None, vision_config=None) -> None:
    """Raise a ValueError naming every field where `config` (a ManagerTower/BridgeTower config) disagrees with the
    RoBERTa config `text_config` or the CLIP vision config `vision_config` (either may be None).

    Text: the `BridgeTowerTextConfig` fields RoBERTa also has (`TEXT_FIELDS`), and RoBERTa must be an encoder.
    Vision: BridgeTower's vision model hard-codes what CLIP configures: QuickGELU (CLIP `hidden_act` must be
    "quick_gelu"), an MLP of 4 x hidden, `hidden_size // 64` heads; and hidden size, depth, channels, patch size and
    LayerNorm eps must agree. The image sizes may differ (the position embeddings are interpolated) but must be
    multiples of the patch size.
    """
    errors: list[str] = []
    if text_config is not None:
        tc = config.text_config
        for name in TEXT_FIELDS:
            _check(errors, f"text_config.{name}", getattr(tc, name, None), getattr(text_config, name, None),
                   f"{type(text_config).__name__}.{name}")
        for name in ("is_decoder", "add_cross_attention"):
            if getattr(text_config, name, False):
                errors.append(f"{type(text_config).__name__}.{name} = True: the text tower must be a plain encoder")
        kind = getattr(text_config, "position_embedding_type", "absolute")
        if kind not in (None, "absolute"):
            errors.append(f"{type(text_config).__name__}.position_embedding_type = {kind!r}: BridgeTower's text "
                          f"model has absolute position embeddings only")
    if vision_config is not None:
        vc, name = config.vision_config, type(vision_config).__name__
        _check(errors, "vision_config.hidden_size", vc.hidden_size, vision_config.hidden_size, f"{name}.hidden_size")
        _check(errors, "vision_config.num_hidden_layers", vc.num_hidden_layers, vision_config.num_hidden_layers,
               f"{name}.num_hidden_layers")
        _check(errors, "vision_config.num_channels", vc.num_channels, vision_config.num_channels,
               f"{name}.num_channels")
        _check(errors, "vision_config.patch_size", _size(vc.patch_size), _size(vision_config.patch_size),
               f"{name}.patch_size")
        _check(errors, "vision_config.layer_norm_eps", vc.layer_norm_eps, vision_config.layer_norm_eps,
               f"{name}.layer_norm_eps")
        if vision_config.hidden_act != "quick_gelu":
            errors.append(f"{name}.hidden_act = {vision_config.hidden_act!r}: BridgeTower's vision MLP is QuickGELU "
                          f"(x * sigmoid(1.702 x)), so only 'quick_gelu' converts")
        _check(errors, "4 * vision_config.hidden_size (BridgeTower's vision MLP width)", 4 * vc.hidden_size,
               vision_config.intermediate_size, f"{name}.intermediate_size")
        _check(errors, "vision_config.hidden_size // 64 (BridgeTower's vision heads)", vc.hidden_size // 64,
               vision_config.num_attention_heads, f"{name}.num_attention_heads")
        patch = _size(vision_config.patch_size)
        for label, size in (("vision_config.image_size", _size(vc.image_size)),
                            (f"{name}.image_size", _size(vision_config.image_size))):
            if size % patch:
                errors.append(f"{label} = {size} is not a multiple of the patch size {patch}")
    if errors:
        raise ValueError("the unimodal encoders do not match the config:\n  " + "\n  ".join(errors))


def _text_state(text_model) -> tuple[dict[str, torch.Tensor], list[str]]:
    """RobertaModel (module or state dict) -> `text_model.*` keys; also the source keys dropped."""
    state = text_model.state_dict() if isinstance(text_model, nn.Module) else dict(text_model)
    out, dropped = {}, []
    for key, value in state.items():
        if key.startswith("roberta."):
            key = key[len("roberta."):]
        if key in ("embeddings.position_ids", "embeddings.token_type_ids"):  # buffers rebuilt from the config
            dropped.append(key)
            continue
        out[f"text_model.{key}"] = value
    return out, dropped


def _vision_state(vision_model, num_layers: int | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """CLIPVisionModel (HF layout; module or state dict, with or without the `vision_model.` prefix of CLIPModel /
    on-disk checkpoints) -> BridgeTower's `vision_model.visual.*` keys; also the source keys dropped
    (`visual_projection`, position ids, and the blocks beyond `num_layers`)."""
    state = vision_model.state_dict() if isinstance(vision_model, nn.Module) else dict(vision_model)
    state = {k[len("vision_model."):] if k.startswith("vision_model.") else k: v for k, v in state.items()}
    out, dropped, qkv, unknown = {}, [], {}, []
    block = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
    for key, value in state.items():
        if key in CLIP_RENAMES:
            out[f"vision_model.visual.{CLIP_RENAMES[key]}"] = value
            continue
        if key in ("embeddings.position_ids",) or key.startswith("visual_projection."):
            dropped.append(key)
            continue
        m = block.match(key)
        if not m:
            unknown.append(key)
            continue
        index, rest = int(m.group(1)), m.group(2)
        if num_layers is not None and index >= num_layers:
            dropped.append(key)
            continue
        prefix = f"vision_model.visual.transformer.resblocks.{index}."
        if rest in CLIP_BLOCK_RENAMES:
            out[prefix + CLIP_BLOCK_RENAMES[rest]] = value
        elif (q := re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest)):
            qkv[(index, q.group(2), q.group(1))] = value
        else:
            unknown.append(key)
    for index, kind in sorted({(i, k) for i, k, _ in qkv}):
        parts = [qkv.get((index, kind, p)) for p in "qkv"]
        if any(p is None for p in parts):
            unknown.append(f"encoder.layers.{index}.self_attn.*_proj.{kind} (q, k and v are not all there)")
            continue
        name = "in_proj_weight" if kind == "weight" else "in_proj_bias"
        out[f"vision_model.visual.transformer.resblocks.{index}.attn.{name}"] = torch.cat(parts, dim=0)
    if unknown:
        raise ValueError(f"CLIP vision keys with no BridgeTower counterpart: {unknown}")
    return out, dropped


def unimodal_state_dict(text_model, vision_model, config=None) -> dict[str, torch.Tensor]:
    """The BridgeTower-layout state dict (`text_model.*`, `vision_model.visual.*`) of a transformers `RobertaModel`
    and `CLIPVisionModel` (modules, or their state dicts).

    With `config` (a ManagerTower/BridgeTower config), the encoders' configs are checked against it first
    (`check_unimodal_configs`, modules only), the position embeddings are interpolated to
    `config.vision_config.image_size` and, with `vision_config.remove_last_layer`, CLIP's last block is left out.
    """
    num_layers = None
    if config is not None:
        check_unimodal_configs(config, getattr(text_model, "config", None), getattr(vision_model, "config", None))
        vc = config.vision_config
        num_layers = vc.num_hidden_layers - 1 if vc.remove_last_layer else vc.num_hidden_layers
    state, _ = _text_state(text_model)
    vision, _ = _vision_state(vision_model, num_layers)
    if config is not None:
        grid = _size(config.vision_config.image_size) // _size(config.vision_config.patch_size)
        key = f"vision_model.visual.{CLIP_RENAMES['embeddings.position_embedding.weight']}"
        vision[key] = interpolate_position_embedding(vision[key], grid)
    state.update(vision)
    return state


def from_unimodal(config, text_model, vision_model, model_class=None) -> tuple[nn.Module, WeightsReport]:
    """Build `model_class(config)` (default `ManagerTowerModel`; a task model holding the backbone works too) and
    load the pretrained unimodal encoders into it: a transformers `RobertaModel` into `text_model.*` and a
    `CLIPVisionModel` (QuickGELU, e.g. openai/clip-vit-base-patch16) into `vision_model.visual.*`, converted as the
    module docstring says. Config mismatches are errors naming the field; a CLIP trained at another resolution
    gets its position embeddings interpolated (reported in `reshaped`). Everything else (cross-modal layers,
    managers, heads) keeps its initialisation and is listed in `missing`; `sources` says where each loaded key came
    from (`text:<roberta key>`, `vision:<clip key>`). With `vision_config.share_layernorm=False`, the per-layer
    `ln_separate` LayerNorms start as copies of CLIP's `post_layernorm` (BridgeTower's
    `init_layernorm_from_vision_encoder`; the official `vit_layernorm_init_from_vit`).
    """
    if model_class is None:
        from .modeling import ManagerTowerModel as model_class
    text_cfg = getattr(text_model, "config", None)
    vision_cfg = getattr(vision_model, "config", None)
    check_unimodal_configs(config, text_cfg, vision_cfg)
    model = model_class(config)
    prefix = backbone_prefix(model)
    vc = config.vision_config
    num_layers = vc.num_hidden_layers - 1 if vc.remove_last_layer else vc.num_hidden_layers
    text_state, text_dropped = _text_state(text_model)
    vision_state, vision_dropped = _vision_state(vision_model, num_layers)
    report = WeightsReport(dropped=[f"text:{k}" for k in text_dropped] + [f"vision:{k}" for k in vision_dropped])
    # source names for the report
    text_src = {f"text_model.{k[len('roberta.'):] if k.startswith('roberta.') else k}": f"text:{k}"
                for k in (text_model.state_dict() if isinstance(text_model, nn.Module) else text_model)}
    vision_src = _vision_sources(vision_model, num_layers)
    plan = {prefix + k: (text_src.get(k, f"text:{k}"), v) for k, v in text_state.items()}
    plan.update({prefix + k: (vision_src.get(k, f"vision:{k}"), v) for k, v in vision_state.items()})
    ln_sep = [k for k in model.state_dict() if k.startswith(prefix + "vision_model.visual.ln_separate.")]
    for key in ln_sep:
        suffix = key.rsplit(".", 1)[-1]
        plan[key] = (f"vision:post_layernorm.{suffix}", vision_state[f"vision_model.visual.ln_post.{suffix}"])
    if ln_sep:
        report.notes.append("vision_model.visual.ln_separate.* initialised from CLIP's post_layernorm")
    if "text_model.pooler.dense.weight" not in text_state:
        report.notes.append("the RoBERTa model has no pooler: text_model.pooler keeps its initialisation")

    def may_miss(key: str) -> bool:
        return not key.startswith((prefix + "text_model.", prefix + "vision_model.")) or \
            key.startswith(prefix + "text_model.pooler.")

    _load(model, plan, may_miss=may_miss, may_leave=lambda *_: False, report=report, what="from_unimodal")
    _check_text_buffers(model.get_submodule(prefix + "text_model") if prefix else model.text_model, text_model)
    return model, report


def _vision_sources(vision_model, num_layers) -> dict[str, str]:
    """BridgeTower vision key -> "vision:<CLIP key>" (for the report)."""
    state = vision_model.state_dict() if isinstance(vision_model, nn.Module) else vision_model
    out = {}
    for key in state:
        bare = key[len("vision_model."):] if key.startswith("vision_model.") else key
        if bare in CLIP_RENAMES:
            out[f"vision_model.visual.{CLIP_RENAMES[bare]}"] = f"vision:{key}"
        elif (m := re.match(r"^encoder\.layers\.(\d+)\.(.+)$", bare)) and (num_layers is None
                                                                             or int(m.group(1)) < num_layers):
            prefix = f"vision_model.visual.transformer.resblocks.{m.group(1)}."
            rest = m.group(2)
            if rest in CLIP_BLOCK_RENAMES:
                out[prefix + CLIP_BLOCK_RENAMES[rest]] = f"vision:{key}"
            elif (q := re.match(r"^self_attn\.[qkv]_proj\.(weight|bias)$", rest)):
                name = "in_proj_weight" if q.group(1) == "weight" else "in_proj_bias"
                out[prefix + f"attn.{name}"] = (f"vision:{key.replace(rest, '')}self_attn."
                                                f"{{q,k,v}}_proj.{q.group(1)} (concatenated)")
    return out


def _check_text_buffers(target_text_model: nn.Module, text_model) -> None:
    """RoBERTa's `position_ids` / `token_type_ids` are non-persistent buffers (not in the state dict); check the
    target's buffers are what RoBERTa's are (arange / zeros of max_position_embeddings)."""
    if not isinstance(text_model, nn.Module):
        return
    source = text_model.embeddings if hasattr(text_model, "embeddings") else None
    for name in ("position_ids", "token_type_ids"):
        a = getattr(source, name, None)
        b = getattr(target_text_model.embeddings, name, None)
        if a is not None and b is not None and not torch.equal(a.to(b.device), b):
            raise ValueError(f"text_model.embeddings.{name} differs from the RoBERTa model's buffer")


# ---------------------------------------------------------------------------------------------------------------
# 2. transformers BridgeTower
# ---------------------------------------------------------------------------------------------------------------
BRIDGETOWER_CONFIG_FIELDS = {
    "text_config": TEXT_FIELDS,
    "vision_config": ("hidden_size", "num_hidden_layers", "num_channels", "patch_size", "layer_norm_eps",
                      "remove_last_layer", "share_layernorm"),
    "": ("hidden_size", "num_hidden_layers", "hidden_act", "layer_norm_eps", "share_cross_modal_transformer_layers"),
}


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
            raise FileNotFoundError(f"no model.safetensors, model.safetensors.index.json or pytorch_model.bin "
                                    f"in {path}")
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
                raise ValueError(f"{file} cannot be read with torch.load(weights_only=True) ({error}). If you trust "
                                 f"the file, pass allow_pickle=True.") from error
            obj = torch.load(file, map_location="cpu", weights_only=False)
        if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
            obj = obj["state_dict"]
        state.update(obj)
    return state, config


def _compare_bridgetower_config(model_config, source_config: dict | None) -> list[str]:
    """Fields of BridgeTowerConfig that change what the weights compute, and that must agree."""
    if not source_config:
        return []
    errors = []
    for section, names in BRIDGETOWER_CONFIG_FIELDS.items():
        ours = getattr(model_config, section) if section else model_config
        theirs = source_config.get(section, {}) if section else source_config
        if not isinstance(theirs, Mapping):
            theirs = theirs.to_dict()
        for name in names:
            if name not in theirs:
                continue
            a, b = getattr(ours, name, None), theirs[name]
            if name in ("patch_size", "image_size"):
                a, b = _size(a), _size(b)
            if a != b:
                label = f"{section}.{name}" if section else name
                errors.append(f"{label}: the model has {a!r}, the BridgeTower checkpoint {b!r}")
    return errors


# Non-persistent buffers in transformers 5; the published BridgeTower checkpoints (pytorch_model.bin, 2023) hold them.
BUFFER_KEYS = ("embeddings.position_ids", "embeddings.token_type_ids")


def warm_start_from_bridgetower(model: nn.Module, source, *, check_config: bool = True) -> WeightsReport:
    """Warm-start `model` (a ManagerTowerModel, or a task model holding it) from transformers' BridgeTower.

    `source`: a `save_pretrained` folder, a weights file, a module or a state dict of `BridgeTowerModel`,
    `BridgeTowerForMaskedLM`, `BridgeTowerForImageAndTextRetrieval` or `BridgeTowerForContrastiveLearning`. The
    task models' `bridgetower.` prefix is replaced by the model's backbone prefix (`managertower.` for a task
    model, nothing for a ManagerTowerModel); their heads `mlm_score.*`, `itm_score.*` and `itc_text_head.*` (same
    inputs as the official heads of those names) land on the model's heads of the same name. `HF_UNMATCHED_HEADS`
    (`itc_image_head`: transformers feeds it the projected image features plus the token type, the official head
    CLIP's ln_post output; `itc_cross_modal_head`; `logit_scale`) are never loaded (`unexpected`).

    Strict: `missing` may only be what ManagerTower adds (`ADDED_PREFIXES`: managers and layer embeddings) and
    heads the source lacks; `unexpected` only what it removes (`REMOVED_PREFIXES`: the cross-modal input
    LayerNorms and link towers) and source heads the model lacks. Documented reshapes (`reshaped`): 2 token types
    into 3 (NLVR2: row 2 = row 1), position embeddings at another resolution (interpolated), a tied MLM decoder
    absent from the file (taken from the word embeddings). Dropped (`dropped`): the embeddings' `position_ids` /
    `token_type_ids` buffers, which the published checkpoints hold. Anything else raises a ValueError naming the keys; so
    do config fields (read from `config.json` or the module) that change what the weights compute
    (`BRIDGETOWER_CONFIG_FIELDS`; `check_config=False` skips this).
    """
    state, source_config = read_state_dict(source)
    prefix = backbone_prefix(model)
    report = WeightsReport()
    if check_config:
        errors = _compare_bridgetower_config(_config_of(model, prefix), source_config)
        if errors:
            raise ValueError("the BridgeTower checkpoint's config disagrees with the model's:\n  "
                             + "\n  ".join(errors))
    task_layout = any(k.startswith("bridgetower.") for k in state)
    plan, heads = {}, set()
    for key, value in state.items():
        if key.endswith(BUFFER_KEYS):
            report.dropped.append(key)  # buffers, rebuilt from the config (published files of 2023 hold them)
        elif task_layout and key.startswith("bridgetower."):
            plan[prefix + key[len("bridgetower."):]] = (key, value)
        elif task_layout and key.startswith(HF_UNMATCHED_HEADS):
            report.unexpected.append(key)  # same name, another input: not loaded
        elif task_layout:
            heads.add(key)
            plan[key] = (key, value)
        else:
            plan[prefix + key] = (key, value)
    target = model.state_dict()
    # BridgeTowerForMaskedLM ties mlm_score.decoder to the word embeddings when tie_word_embeddings: the file may
    # hold only the embeddings
    if ("mlm_score.decoder.weight" in target and "mlm_score.decoder.weight" not in state
            and "mlm_score.bias" in state and "bridgetower." + WORD_EMBEDDINGS_KEY in state):
        tied = "bridgetower." + WORD_EMBEDDINGS_KEY
        plan["mlm_score.decoder.weight"] = (tied, state[tied])
        heads.add("mlm_score.decoder.weight")
        report.reshaped["mlm_score.decoder.weight"] = "tied to the word embeddings in the source (not in the file)"
    if any(k.startswith(HF_UNMATCHED_HEADS) for k in state):
        report.notes.append("BridgeTowerForContrastiveLearning's itc_image_head (on the projected image features "
                            "plus the image token type), itc_cross_modal_head and logit_scale are not loaded: the "
                            "official ITC image head reads ln_post(V_L) directly, and ITC uses `temperature`. "
                            "itc_text_head (on the last text layer's <s>, as the official) is loaded by name.")

    may_miss = _may_miss_added(prefix, plan)

    def may_leave(key: str, source_key: str) -> bool:
        if source_key in heads:
            return True  # a source head the model lacks
        return key[len(prefix):].startswith(REMOVED_PREFIXES)

    return _load(model, plan, may_miss=may_miss, may_leave=may_leave, report=report,
                 what="warm_start_from_bridgetower")


# ---------------------------------------------------------------------------------------------------------------
# 3. official ManagerTower (LooperXX/ManagerTower, Lightning checkpoints)
# ---------------------------------------------------------------------------------------------------------------
OFFICIAL_RENAMES = (  # (official regex, our key template): backbone keys; mt_module.py MTTransformer.__init__
    (r"^text_transformer\.(.+)$", r"text_model.\1"),                      # RobertaModel -> BridgeTowerTextModel
    (r"^vit_model\.visual\.conv1\.weight$", "vision_model.visual.embeddings.patch_embedding.weight"),
    (r"^vit_model\.visual\.class_embedding$", "vision_model.visual.embeddings.class_embedding"),
    (r"^vit_model\.visual\.positional_embedding$", "vision_model.visual.embeddings.position_embedding.weight"),
    (r"^vit_model\.visual\.((?:ln_pre|ln_post|ln_separate|transformer)\..+)$", r"vision_model.visual.\1"),
    (r"^cross_modal_(text|image)_manager_tower\.(\d+)\.manager_layer\.(.+)$", r"cross_modal_\1_managers.\2.\3"),
    (r"^(cross_modal_(?:text|image)_(?:transform|layers|pooler|layernorm|link_tower)\..+)$", r"\1"),  # (BT* too)
    (r"^((?:token_type_embeddings|layer_embeddings_text|layer_embeddings_image)\.weight)$", r"\1"),
)
OFFICIAL_HEADS = (  # (official regex, our key template): task heads, outside the backbone
    (r"^cross_modal_itc_(text|image)_head\.(.+)$", r"itc_\1_head.\2"),
    (r"^((?:mlm_score|itm_score|vqa_classifier|snli_classifier|nlvr2_classifier)\..+)$", r"\1"),
    (r"^temperature$", "temperature"),
)
OFFICIAL_DROPS = (  # documented drops
    r"^text_transformer\.embeddings\.(position_ids|token_type_ids)$",  # buffers (persistent in transformers 4.17)
    r"^vit_model\.positional_embedding$",                               # CLIP text-tower leftovers, unused
    r"^vit_model\.ln_final\.(weight|bias)$",
    r"^cross_modal_(text|image)_manager_tower\.\d+\.manager_layer\.softmax_temperature_cross$",  # unused in forward
    r"^rank_output\.(weight|bias)$",                                    # old ViLT irtr objective, unused
)


def official_key(key: str) -> tuple[str, str] | None:
    """The fate of one official key: ("backbone", our key relative to the backbone), ("head", our head key),
    ("drop", reason) or None (unknown)."""
    for pattern in OFFICIAL_DROPS:
        if re.match(pattern, key):
            return "drop", pattern
    for pattern, template in OFFICIAL_RENAMES:
        if re.match(pattern, key):
            return "backbone", re.sub(pattern, template, key)
    for pattern, template in OFFICIAL_HEADS:
        if re.match(pattern, key):
            return "head", re.sub(pattern, template, key)
    return None


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor], *, backbone_prefix: str = "",
                                image_size: int | None = None, strict: bool = True
                                ) -> tuple[dict[str, torch.Tensor], WeightsReport]:
    """Rename an official ManagerTower (`MTTransformer`) state dict to this package's names.

    Backbone keys get `backbone_prefix` ("managertower." for a task model); heads keep their names
    (`mlm_score`, `itm_score`, `vqa_classifier`, `snli_classifier`, `nlvr2_classifier`, `temperature`), the ITC
    heads become `itc_{text,image}_head`. Dropped (documented, in `report.dropped`): the RoBERTa `position_ids` /
    `token_type_ids` buffers, the CLIP text-tower leftovers `vit_model.positional_embedding` and `vit_model.ln_final`,
    every manager's unused `softmax_temperature_cross`, and `rank_output` (the unused ViLT-style irtr head).
    The official BridgeTower re-implementation's (bt_module.py) `cross_modal_*_layernorm` and link towers keep their
    names (they are BridgeTowerModel's). With `image_size`, the position embedding is interpolated to that
    resolution (patch size from `conv1`). Unknown keys raise a ValueError (`strict=False`: listed in `notes`).
    `report.sources` maps each new key to its official key.
    """
    out, report, unknown = {}, WeightsReport(), []
    for key, value in state_dict.items():
        fate = official_key(key)
        if fate is None:
            unknown.append(key)
            continue
        kind, new = fate
        if kind == "drop":
            report.dropped.append(key)
            continue
        if kind == "backbone":
            new = backbone_prefix + new
        if image_size is not None and key == "vit_model.visual.positional_embedding":
            patch = state_dict["vit_model.visual.conv1.weight"].shape[-1]
            grid = _size(image_size) // patch
            before = math.isqrt(value.shape[0] - 1)
            if before != grid:
                value = interpolate_position_embedding(value, grid)
                report.reshaped[new] = (f"position embedding interpolated from a {before}x{before} to a "
                                        f"{grid}x{grid} patch grid (official adapt_position_encoding)")
        out[new] = value
        report.sources[new] = key
    if unknown:
        if strict:
            raise ValueError(f"official keys with no mapping: {unknown}")
        report.notes.append(f"official keys with no mapping, left out: {unknown}")
    report.dropped.sort()
    return out, report


def load_official_checkpoint(model: nn.Module, path_or_state_dict, *, allow_pickle: bool = False) -> WeightsReport:
    """Load an official ManagerTower checkpoint (a Lightning `.ckpt` path, its dict, or its `state_dict`) into
    `model` (a ManagerTowerModel or a task model holding one), strictly.

    Keys are converted by `convert_official_state_dict` (documented drops in `report.dropped`). `missing` may only
    be heads the checkpoint lacks and, for a BridgeTower-type (bt_module) checkpoint, what ManagerTower adds;
    `unexpected` only heads the model lacks and what ManagerTower removes (BT* link towers and LayerNorms).
    Reshapes as `warm_start_from_bridgetower` (position embeddings of another resolution, 2 -> 3 token types for
    NLVR2, the 0-dim `temperature` into another scalar shape). A `.ckpt` is read with
    `torch.load(weights_only=True)`; `allow_pickle=True` allows full unpickling (trusted files only).
    """
    state, _ = read_state_dict(path_or_state_dict, allow_pickle=allow_pickle)
    prefix = backbone_prefix(model)
    converted, report = convert_official_state_dict(state, backbone_prefix=prefix)
    heads = {k for k in converted if official_key(report.sources[k])[0] == "head"}
    plan = {k: (report.sources[k], v) for k, v in converted.items()}
    report.sources = {}

    may_miss = _may_miss_added(prefix, plan)

    def may_leave(key: str, source_key: str) -> bool:
        if key in heads:
            return True  # a checkpoint head the model lacks
        return key[len(prefix):].startswith(REMOVED_PREFIXES)

    return _load(model, plan, may_miss=may_miss, may_leave=may_leave, report=report, what="load_official_checkpoint")
