"""Weights in from pretrained unimodal encoders: a transformers `RobertaModel` and `CLIPVisionModel` converted to
BridgeTower's layout (`unimodal_state_dict`) and loaded into a new ManagerTower (`from_unimodal`), after checking
their configs against the model's (`check_unimodal_configs`).

- CLIP (transformers' `CLIPVisionModel`, HF layout) -> BridgeTower's vision model, which keeps the OpenAI CLIP layout
  (transformers `modeling_bridgetower.py`: `BridgeTowerVisionEmbeddings`, `BridgeTowerResidualAttention` built on
  `nn.MultiheadAttention`, `mlp.{c_fc, gelu=QuickGELU, c_proj}`): `pre_layrnorm -> ln_pre`, `layer_norm{1,2} ->
  ln_{1,2}`, `mlp.fc{1,2} -> mlp.c_{fc,proj}`, `self_attn.{q,k,v}_proj -> attn.in_proj_{weight,bias}` (concatenated
  in the order q, k, v, `nn.MultiheadAttention`'s packing), `self_attn.out_proj -> attn.out_proj`,
  `post_layernorm -> ln_post`. This is the inverse of transformers' own OpenAI-CLIP converter
  (`convert_clip_original_pytorch_to_hf.py`).
- RoBERTa -> `text_model.*`: `BridgeTowerTextModel` is RoBERTa under the same attribute names (`embeddings`,
  `encoder.layer.{i}.{attention,intermediate,output}`, `pooler`).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .report import WeightsReport, _load, _size, backbone_prefix, interpolate_position_embedding

TEXT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "pad_token_id",
)

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
            _check(
                errors,
                f"text_config.{name}",
                getattr(tc, name, None),
                getattr(text_config, name, None),
                f"{type(text_config).__name__}.{name}",
            )
        for name in ("is_decoder", "add_cross_attention"):
            if getattr(text_config, name, False):
                errors.append(f"{type(text_config).__name__}.{name} = True: the text tower must be a plain encoder")
        kind = getattr(text_config, "position_embedding_type", "absolute")
        if kind not in (None, "absolute"):
            errors.append(
                f"{type(text_config).__name__}.position_embedding_type = {kind!r}: BridgeTower's text "
                f"model has absolute position embeddings only"
            )
    if vision_config is not None:
        vc, name = config.vision_config, type(vision_config).__name__
        _check(errors, "vision_config.hidden_size", vc.hidden_size, vision_config.hidden_size, f"{name}.hidden_size")
        _check(
            errors,
            "vision_config.num_hidden_layers",
            vc.num_hidden_layers,
            vision_config.num_hidden_layers,
            f"{name}.num_hidden_layers",
        )
        _check(
            errors, "vision_config.num_channels", vc.num_channels, vision_config.num_channels, f"{name}.num_channels"
        )
        _check(
            errors,
            "vision_config.patch_size",
            _size(vc.patch_size),
            _size(vision_config.patch_size),
            f"{name}.patch_size",
        )
        _check(
            errors,
            "vision_config.layer_norm_eps",
            vc.layer_norm_eps,
            vision_config.layer_norm_eps,
            f"{name}.layer_norm_eps",
        )
        if vision_config.hidden_act != "quick_gelu":
            errors.append(
                f"{name}.hidden_act = {vision_config.hidden_act!r}: BridgeTower's vision MLP is QuickGELU "
                f"(x * sigmoid(1.702 x)), so only 'quick_gelu' converts"
            )
        _check(
            errors,
            "4 * vision_config.hidden_size (BridgeTower's vision MLP width)",
            4 * vc.hidden_size,
            vision_config.intermediate_size,
            f"{name}.intermediate_size",
        )
        _check(
            errors,
            "vision_config.hidden_size // 64 (BridgeTower's vision heads)",
            vc.hidden_size // 64,
            vision_config.num_attention_heads,
            f"{name}.num_attention_heads",
        )
        patch = _size(vision_config.patch_size)
        for label, size in (
            ("vision_config.image_size", _size(vc.image_size)),
            (f"{name}.image_size", _size(vision_config.image_size)),
        ):
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
            key = key[len("roberta.") :]
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
    state = {k[len("vision_model.") :] if k.startswith("vision_model.") else k: v for k, v in state.items()}
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
        elif q := re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest):
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
        from ..modeling import ManagerTowerModel as model_class
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
    text_src = {
        f"text_model.{k[len('roberta.') :] if k.startswith('roberta.') else k}": f"text:{k}"
        for k in (text_model.state_dict() if isinstance(text_model, nn.Module) else text_model)
    }
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
        return not key.startswith((prefix + "text_model.", prefix + "vision_model.")) or key.startswith(
            prefix + "text_model.pooler."
        )

    _load(model, plan, may_miss=may_miss, may_leave=lambda *_: False, report=report, what="from_unimodal")
    _check_text_buffers(model.get_submodule(prefix + "text_model") if prefix else model.text_model, text_model)
    return model, report


def _vision_sources(vision_model, num_layers) -> dict[str, str]:
    """BridgeTower vision key -> "vision:<CLIP key>" (for the report)."""
    state = vision_model.state_dict() if isinstance(vision_model, nn.Module) else vision_model
    out = {}
    for key in state:
        bare = key[len("vision_model.") :] if key.startswith("vision_model.") else key
        if bare in CLIP_RENAMES:
            out[f"vision_model.visual.{CLIP_RENAMES[bare]}"] = f"vision:{key}"
        elif (m := re.match(r"^encoder\.layers\.(\d+)\.(.+)$", bare)) and (
            num_layers is None or int(m.group(1)) < num_layers
        ):
            prefix = f"vision_model.visual.transformer.resblocks.{m.group(1)}."
            rest = m.group(2)
            if rest in CLIP_BLOCK_RENAMES:
                out[prefix + CLIP_BLOCK_RENAMES[rest]] = f"vision:{key}"
            elif q := re.match(r"^self_attn\.[qkv]_proj\.(weight|bias)$", rest):
                name = "in_proj_weight" if q.group(1) == "weight" else "in_proj_bias"
                out[prefix + f"attn.{name}"] = (
                    f"vision:{key.replace(rest, '')}self_attn.{{q,k,v}}_proj.{q.group(1)} (concatenated)"
                )
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
