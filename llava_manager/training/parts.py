"""The trainable parts of a model of any supported family, found by module: vision tower, projector, LLM, managers;
which of them train, and the optimizer groups per part (learning rate and weight decay).

Where the parts are: the family adapter says (`Family.vision_tower`, `Family.projector_modules`): the projector is
`multi_modal_projector` (LLaVA, InternVL, Gemma 3, Mistral3; with the anyres families' image newline), or the
Qwen-VL families' merger inside `visual` (and Qwen3-VL's DeepStack mergers), which then is not part of the vision
tower."""

from __future__ import annotations

from torch import nn

from ..core.patch import get_managers


def vision_parts(inner: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The vision tower's and the projector's parameters of a bare model (the projector's are not the tower's, even
    where the projector sits inside the tower, as Qwen-VL's merger does)."""
    from ..families import FAMILIES

    adapter = next(a for a in FAMILIES.values() if isinstance(inner, a.base_class))
    tower = adapter.vision_tower(inner)
    newline = getattr(inner, "image_newline", None)
    projector = [p for m in adapter.projector_modules(inner) for p in m.parameters()]
    projector += [newline] if newline is not None else []
    taken = {id(p) for p in projector}
    return {"vision_tower": [p for p in tower.parameters() if id(p) not in taken], "projector": projector}


def module_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The parameters of each trainable part, found by module (not by name): vision_tower, projector (with the
    image newline of the anyres families; LLaVA-1.5 has none), llm (language model and head) and managers."""
    inner = model.model
    managers = [p for m in get_managers(model) for p in m.parameters()]
    parts = {**vision_parts(inner), "managers": managers}
    seen = {id(p) for ps in parts.values() for p in ps}
    parts["llm"] = [p for p in model.parameters() if id(p) not in seen]
    return parts


def set_trainable(model: nn.Module, modules: set[str]) -> None:
    """Train the chosen parts and the managers; freeze the rest."""
    for name, params in module_parameters(model).items():
        for p in params:
            p.requires_grad_(name == "managers" or name in modules)


def parameter_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    decay_names: set[str],
    vision_tower_lr: float | None = None,
    manager_lr: float | None = None,
) -> list[dict]:
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
        groups += [
            {"params": ps, "lr": lrs[part], "weight_decay": wd}
            for ps, wd in ((decay, weight_decay), (no_decay, 0.0))
            if ps
        ]
    return groups
