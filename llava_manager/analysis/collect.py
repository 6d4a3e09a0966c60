"""Run a model over samples and reduce what the analyses need layer by layer, so that no more than one layer's
attention is alive at a time."""

from __future__ import annotations

import contextlib

import torch
from tqdm import tqdm

from ..core.patch import get_managers, has_manager
from ..families.base import vision_encoder_layers
from . import metrics
from .inputs import encode

# The image inputs of `get_image_features` across the families (LLaVA-1.5 takes no `image_sizes`).
IMAGE_KEYS = ("pixel_values", "image_sizes", "batch_num_images")


@contextlib.contextmanager
def eager_attention(model):
    """Attention weights exist only in the eager implementation; switch to it for the analysis, then back."""
    # upstream: see llava_manager/upstream.py
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@contextlib.contextmanager
def hooks(modules, fn):
    handles = [m.register_forward_hook(lambda mod, args, out, i=i: fn(i, out)) for i, m in enumerate(modules)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def positions(inputs: dict, image_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks over the (single-sample) sequence: visual tokens, and text tokens after the first image."""
    ids = inputs["input_ids"][0]
    visual = ids == image_token_id
    after_image = torch.arange(len(ids), device=ids.device) > visual.nonzero()[0, 0]
    return visual, after_image & ~visual


def injected_layers(model) -> list[int]:
    return [m.layer_idx for m in get_managers(model)] if has_manager(model) else []


def layer_similarity(model, processor, samples, prompt_format: str = "qwen_1_5") -> dict[str, torch.Tensor]:
    """Mean cosine similarity between the outputs of decoder layers l-1 and l (entry l-1, l = 1 .. L-1) at visual
    and at text positions, averaged over samples."""
    layers = model.model.language_model.layers
    totals = {"visual": 0.0, "text": 0.0}
    device = next(model.parameters()).device
    for image, prompt in tqdm(samples, desc="layer similarity"):
        inputs = encode(processor, image, prompt, device, prompt_format)
        visual, text = positions(inputs, model.config.image_token_id)
        outputs = [None] * len(layers)

        def keep(i, out):
            outputs[i] = (out[0] if isinstance(out, tuple) else out).detach()

        with torch.no_grad(), hooks(layers, keep):
            model(**inputs)
        totals["visual"] = totals["visual"] + metrics.consecutive_cosine(outputs, visual)
        totals["text"] = totals["text"] + metrics.consecutive_cosine(outputs, text)
    return {k: v / len(samples) for k, v in totals.items()}


def attention_statistics(model, processor, samples, prompt_format: str = "qwen_1_5") -> dict[str, torch.Tensor]:
    """Per decoder layer, averaged over samples: mean entropy of the visual tokens' self-attention (over visual
    keys) and of text-to-visual attention (text queries over visual keys), and the mean KL divergence between
    heads for each. Each layer's attention is reduced inside its hook and dropped."""
    layers = model.model.language_model.layers
    names = ("visual_entropy", "text_to_visual_entropy", "visual_head_kl", "text_to_visual_head_kl")
    totals = torch.zeros(len(names), len(layers))
    device = next(model.parameters()).device
    with eager_attention(model):
        for image, prompt in tqdm(samples, desc="attention"):
            inputs = encode(processor, image, prompt, device, prompt_format)
            visual, text = positions(inputs, model.config.image_token_id)

            def reduce(i, out):
                attention = out[1][0]  # (heads, q, k) of this sample
                own = metrics.restrict(attention, visual, visual)
                cross = metrics.restrict(attention, text, visual)
                totals[:, i] += torch.stack(
                    [
                        metrics.entropy(own),
                        metrics.entropy(cross),
                        metrics.head_divergence(own),
                        metrics.head_divergence(cross),
                    ]
                ).cpu()

            with torch.no_grad(), hooks([layer.self_attn for layer in layers], reduce):
                model(**inputs)
    return dict(zip(names, totals / len(samples)))


def siglip_attention_distance(model, processor, samples, prompt_format: str = "qwen_1_5") -> torch.Tensor:
    """`(vision layers, heads)` mean attention distance in pixels, averaged over crops and samples. For CLIP and
    SigLIP towers (the LLaVA family, Gemma 3): square crops of one fixed patch grid."""
    vision = model.config.vision_config
    if vision.model_type not in ("clip_vision_model", "siglip_vision_model"):
        raise ValueError(
            f"The attention distance needs a CLIP or SigLIP tower (square crops of a fixed patch grid); this model's "
            f"tower is {vision.model_type!r}."
        )
    layers = vision_encoder_layers(model.model.vision_tower)
    grid = vision.image_size // vision.patch_size
    totals = torch.zeros(len(layers), vision.num_attention_heads)
    device = next(model.parameters()).device
    with eager_attention(model):
        for image, prompt in tqdm(samples, desc="SigLIP attention distance"):
            inputs = encode(processor, image, prompt, device, prompt_format)

            def reduce(i, out):
                per_crop = [metrics.mean_attention_distance(a, grid, vision.patch_size) for a in out[1]]
                totals[i] += torch.stack(per_crop).mean(0).cpu()

            with torch.no_grad(), hooks([layer.self_attn for layer in layers], reduce):
                model.model.get_image_features(**{k: v for k, v in inputs.items() if k in IMAGE_KEYS})
    return totals / len(samples)
