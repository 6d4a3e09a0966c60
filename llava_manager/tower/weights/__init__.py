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
prefix, e.g. `managertower.`; heads are the keys outside that prefix). One module a way in, each with where its
mapping comes from:

- `unimodal.py`: RoBERTa and CLIP (transformers layouts) -> BridgeTower's text and vision models (`from_unimodal`,
  `unimodal_state_dict`, `check_unimodal_configs`).
- `bridgetower.py`: transformers BridgeTower -> ManagerTower (`warm_start_from_bridgetower`).
- `official.py`: official ManagerTower -> this model (`OFFICIAL_RENAMES` / `official_key`,
  `convert_official_state_dict`, `load_official_checkpoint`).
- `report.py`: what they share: `WeightsReport`, the strict loader and its documented reshapes (position embeddings
  at another resolution, `interpolate_position_embedding`; NLVR2's third token type), `read_state_dict`,
  `backbone_prefix`.
"""

from .bridgetower import (
    BRIDGETOWER_CONFIG_FIELDS,
    BUFFER_KEYS,
    HF_UNMATCHED_HEADS,
    warm_start_from_bridgetower,
)
from .official import (
    OFFICIAL_DROPS,
    OFFICIAL_HEADS,
    OFFICIAL_RENAMES,
    convert_official_state_dict,
    load_official_checkpoint,
    official_key,
)
from .report import (
    ADDED_PREFIXES,
    POSITION_KEY,
    REMOVED_PREFIXES,
    TOKEN_TYPE_KEY,
    WORD_EMBEDDINGS_KEY,
    WeightsReport,
    backbone_prefix,
    interpolate_position_embedding,
    read_state_dict,
)
from .unimodal import (
    CLIP_BLOCK_RENAMES,
    CLIP_RENAMES,
    TEXT_FIELDS,
    check_unimodal_configs,
    from_unimodal,
    unimodal_state_dict,
)

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
