"""Every family the package supports, through one interface, for the tests that hold for all of them (the bare
class, gradients, persistence, removal, peft, torch.compile, bad inputs): the LLaVA families of `family_models`
and the other VLM families of `vlm_models`, each with its own tiny model, batch and independent reference."""

from __future__ import annotations

from support import family_models, vlm_models

ALL_FAMILIES = family_models.FAMILIES + vlm_models.VLM_FAMILIES


def _llava(family: str) -> bool:
    return family in family_models.FAMILIES


def model_class(family: str):
    return (family_models.CLASSES if _llava(family) else vlm_models.CLASSES)[family][1]


def any_model(family: str, seed: int = 0):
    return family_models.family_model(family, seed) if _llava(family) else vlm_models.vlm_model(family, seed)


def any_batch(model, family: str):
    if _llava(family):
        return family_models.build_batch(model, family_models.default_samples(family))
    return vlm_models.build_vlm_batch(model, vlm_models.default_samples(family))


def reference_hooks(model, family: str, batch, weights, vision_layers):
    """The family's independent reference hooks on a base `model` (see each module)."""
    if _llava(family):
        return family_models.add_reference_hooks(model, batch, weights, vision_layers)
    return vlm_models.add_vlm_reference_hooks(model, batch, weights, vision_layers)


def modalities(family: str) -> int:
    """How many manager terms a prefill of `any_batch` computes per manager: images, and videos where taken."""
    videos = family_models.VIDEO_FAMILIES + vlm_models.VIDEO_FAMILIES
    return 2 if family in videos else 1
