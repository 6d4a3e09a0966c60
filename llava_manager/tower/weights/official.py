"""Official ManagerTower checkpoints (LooperXX/ManagerTower, Lightning `.ckpt`) -> this model: the key map of
`src/modules/mt_module.py` and `heads.py` at LooperXX/ManagerTower HEAD 86e2372 (module tree in
`MTTransformer.__init__`; see `OFFICIAL_RENAMES` / `official_key`), applied by `convert_official_state_dict` and
loaded strictly by `load_official_checkpoint`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
from torch import nn

from .report import (
    REMOVED_PREFIXES,
    WeightsReport,
    _load,
    _may_miss_added,
    _size,
    backbone_prefix,
    interpolate_position_embedding,
    read_state_dict,
)

OFFICIAL_RENAMES = (  # (official regex, our key template): backbone keys; mt_module.py MTTransformer.__init__
    (r"^text_transformer\.(.+)$", r"text_model.\1"),  # RobertaModel -> BridgeTowerTextModel
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
    r"^vit_model\.positional_embedding$",  # CLIP text-tower leftovers, unused
    r"^vit_model\.ln_final\.(weight|bias)$",
    r"^cross_modal_(text|image)_manager_tower\.\d+\.manager_layer\.softmax_temperature_cross$",  # unused in forward
    r"^rank_output\.(weight|bias)$",  # old ViLT irtr objective, unused
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


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    backbone_prefix: str = "",
    image_size: int | None = None,
    strict: bool = True,
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
                report.reshaped[new] = (
                    f"position embedding interpolated from a {before}x{before} to a "
                    f"{grid}x{grid} patch grid (official adapt_position_encoding)"
                )
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
        return key[len(prefix) :].startswith(REMOVED_PREFIXES)

    return _load(model, plan, may_miss=may_miss, may_leave=may_leave, report=report, what="load_official_checkpoint")
