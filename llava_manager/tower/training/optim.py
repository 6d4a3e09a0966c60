"""The optimizer's parameter groups of the recipes: learning-rate multipliers by module and the weight-decay rule.

Parameter groups (`parameter_groups`; by module, never by substring):

- head (lr x `--lr_mult_head`): `mlm_score`, `itm_score`, `vqa_classifier`, `snli_classifier`, `nlvr2_classifier`.
- cross-modal (lr x `--lr_mult_cross_modal`): every backbone module named `cross_modal_*` (the text / image
  transforms, cross-modal layers, poolers, the managers, and for `bridge` the link towers and input LayerNorms), and
  the ITC projections `itc_text_head` / `itc_image_head` (the official `cross_modal_itc_*_head`).
- base (lr): the unimodal towers (`text_model`, `vision_model`), `token_type_embeddings`, `layer_embeddings_*` and
  the ITC `temperature`.

This is what the official substring rule (`"cross_modal" in name` -> cross-modal, the five head names -> head, the
rest -> base) gives; a module the rules do not know is an error rather than a silent base-rate member.

Weight decay: none on biases, on every LayerNorm's weight and bias, on the managers' own weights (`layer_scores`,
`layer_scores_cross`, `softmax_temperature*`: decay would pull the aggregation logits and temperatures to 0), the link
towers' own scalars (`bridge`) and the ITC `temperature`. Everything else, embeddings included, is decayed. The
official rule (meter_utils.py: no decay where the name contains `bias`, `LayerNorm.bias`, `LayerNorm.weight`,
`norm.*`, `norm1.*`, `norm2.*`) decays, by a substring quirk, the managers' `LayerNorm.{k}.weight`, CLIP's
`ln_1` / `ln_2` / `ln_pre` / `ln_post` weights, `layer_scores*` and both temperatures; we deviate there, on purpose.
The official rule's other quirk, a non-integer multiplier taken as an absolute learning rate, is not kept: the
multipliers always multiply.
"""

from __future__ import annotations

from torch import nn

from ..managers import AAUM, SAM, SAUM

HEAD_MODULES = ("mlm_score", "itm_score", "vqa_classifier", "snli_classifier", "nlvr2_classifier")
CROSS_MODAL_HEADS = ("itc_text_head", "itc_image_head")  # the official cross_modal_itc_*_head
BASE_TOP_PARAMETERS = ("temperature",)  # the ITC temperature: base rate in the official rule
UNIMODAL_MODULES = ("text_model", "vision_model")
EMBEDDING_MODULES = ("token_type_embeddings", "layer_embeddings_text", "layer_embeddings_image")
GROUPS = ("base", "cross_modal", "head")


def module_parameters(model: nn.Module) -> dict[str, dict[str, nn.Parameter]]:
    """{"base" | "cross_modal" | "head": {name: parameter}} of a task model (backbone at `.managertower`), by
    module as the module docstring says. A module or parameter the rules do not know raises."""
    backbone = model.managertower
    parts: dict[str, dict[str, nn.Parameter]] = {g: {} for g in GROUPS}

    def add(group: str, prefix: str, module: nn.Module) -> None:
        for name, p in module.named_parameters(prefix=prefix):
            parts[group][name] = p

    for name, p in model.named_parameters(recurse=False):
        if name not in BASE_TOP_PARAMETERS:
            raise ValueError(f"parameter {name!r} of {type(model).__name__}: no learning-rate group for it")
        parts["base"][name] = p
    for child_name, child in model.named_children():
        if child is backbone:
            for name, _ in backbone.named_parameters(recurse=False):
                raise ValueError(f"parameter managertower.{name}: no learning-rate group for it")
            for sub_name, sub in backbone.named_children():
                prefix = f"{child_name}.{sub_name}"
                if sub_name in UNIMODAL_MODULES or sub_name in EMBEDDING_MODULES:
                    add("base", prefix, sub)
                elif sub_name.startswith("cross_modal_"):
                    add("cross_modal", prefix, sub)
                elif any(True for _ in sub.parameters()):
                    raise ValueError(f"module {prefix}: no learning-rate group for it")
        elif child_name in HEAD_MODULES:
            add("head", child_name, child)
        elif child_name in CROSS_MODAL_HEADS:
            add("cross_modal", child_name, child)
        elif any(True for _ in child.parameters()):
            raise ValueError(f"module {child_name} of {type(model).__name__}: no learning-rate group for it")
    return parts


def no_decay_names(model: nn.Module) -> set[str]:
    """Parameters without weight decay: biases, LayerNorms, the managers' (and link towers') own weights and
    temperatures, and the model's own parameters (the ITC temperature)."""
    from transformers.models.bridgetower.modeling_bridgetower import BridgeTowerLinkTower

    names = {name for name, _ in model.named_parameters(recurse=False)}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, nn.LayerNorm):
            names |= {prefix + n for n, _ in module.named_parameters()}
        elif isinstance(module, (SAUM, AAUM, SAM, BridgeTowerLinkTower)):
            names |= {prefix + n for n, _ in module.named_parameters(recurse=False)}
    names |= {n for n, _ in model.named_parameters() if n.endswith("bias")}
    return names


def labelled_parameter_groups(
    model: nn.Module, lr: float, weight_decay: float, lr_mult_head: float, lr_mult_cross_modal: float
) -> list[tuple[str, dict]]:
    """(label, optimizer group) for (base, cross-modal, head) x (decay, no decay), trainable parameters only, labels
    "base/decay", "head/no_decay", ...; the first group is base, whose lr the Trainer logs."""
    lrs = {"base": lr, "cross_modal": lr * lr_mult_cross_modal, "head": lr * lr_mult_head}
    skip = no_decay_names(model)
    groups = []
    for group, params in module_parameters(model).items():
        trainable = [(n, p) for n, p in params.items() if p.requires_grad]
        decay = [p for n, p in trainable if n not in skip]
        no_decay = [p for n, p in trainable if n in skip]
        groups += [
            (f"{group}/{label}", {"params": ps, "lr": lrs[group], "weight_decay": wd})
            for ps, wd, label in ((decay, weight_decay, "decay"), (no_decay, 0.0, "no_decay"))
            if ps
        ]
    return groups


def parameter_groups(
    model: nn.Module, lr: float, weight_decay: float, lr_mult_head: float, lr_mult_cross_modal: float
) -> list[dict]:
    """The optimizer groups of `labelled_parameter_groups`."""
    return [g for _, g in labelled_parameter_groups(model, lr, weight_decay, lr_mult_head, lr_mult_cross_modal)]
