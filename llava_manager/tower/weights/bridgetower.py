"""Warm start from transformers' BridgeTower (`warm_start_from_bridgetower`): the same names (ManagerTowerModel keeps
BridgeTowerModel's attribute names); BridgeTower's task models hold the backbone under `bridgetower.`. What
ManagerTower adds (the managers, the layer embeddings) keeps its initialisation; what it removes (the cross-modal
input LayerNorms and link towers) is left unused.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from .report import (
    REMOVED_PREFIXES,
    WORD_EMBEDDINGS_KEY,
    WeightsReport,
    _config_of,
    _load,
    _may_miss_added,
    _size,
    backbone_prefix,
    read_state_dict,
)
from .unimodal import TEXT_FIELDS

HF_UNMATCHED_HEADS = ("itc_image_head.", "itc_cross_modal_head.", "logit_scale")  # BridgeTowerForContrastiveLearning
BRIDGETOWER_CONFIG_FIELDS = {
    "text_config": TEXT_FIELDS,
    "vision_config": (
        "hidden_size",
        "num_hidden_layers",
        "num_channels",
        "patch_size",
        "layer_norm_eps",
        "remove_last_layer",
        "share_layernorm",
    ),
    "": ("hidden_size", "num_hidden_layers", "hidden_act", "layer_norm_eps", "share_cross_modal_transformer_layers"),
}


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
    `token_type_ids` buffers, which the published checkpoints hold. Anything else raises a ValueError naming the keys;
    so
    do config fields (read from `config.json` or the module) that change what the weights compute
    (`BRIDGETOWER_CONFIG_FIELDS`; `check_config=False` skips this).
    """
    state, source_config = read_state_dict(source)
    prefix = backbone_prefix(model)
    report = WeightsReport()
    if check_config:
        errors = _compare_bridgetower_config(_config_of(model, prefix), source_config)
        if errors:
            raise ValueError(
                "the BridgeTower checkpoint's config disagrees with the model's:\n  " + "\n  ".join(errors)
            )
    task_layout = any(k.startswith("bridgetower.") for k in state)
    plan, heads = {}, set()
    for key, value in state.items():
        if key.endswith(BUFFER_KEYS):
            report.dropped.append(key)  # buffers, rebuilt from the config (published files of 2023 hold them)
        elif task_layout and key.startswith("bridgetower."):
            plan[prefix + key[len("bridgetower.") :]] = (key, value)
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
    if (
        "mlm_score.decoder.weight" in target
        and "mlm_score.decoder.weight" not in state
        and "mlm_score.bias" in state
        and "bridgetower." + WORD_EMBEDDINGS_KEY in state
    ):
        tied = "bridgetower." + WORD_EMBEDDINGS_KEY
        plan["mlm_score.decoder.weight"] = (tied, state[tied])
        heads.add("mlm_score.decoder.weight")
        report.reshaped["mlm_score.decoder.weight"] = "tied to the word embeddings in the source (not in the file)"
    if any(k.startswith(HF_UNMATCHED_HEADS) for k in state):
        report.notes.append(
            "BridgeTowerForContrastiveLearning's itc_image_head (on the projected image features "
            "plus the image token type), itc_cross_modal_head and logit_scale are not loaded: the "
            "official ITC image head reads ln_post(V_L) directly, and ITC uses `temperature`. "
            "itc_text_head (on the last text layer's <s>, as the official) is loaded by name."
        )

    may_miss = _may_miss_added(prefix, plan)

    def may_leave(key: str, source_key: str) -> bool:
        if source_key in heads:
            return True  # a source head the model lacks
        return key[len(prefix) :].startswith(REMOVED_PREFIXES)

    return _load(model, plan, may_miss=may_miss, may_leave=may_leave, report=report, what="warm_start_from_bridgetower")
