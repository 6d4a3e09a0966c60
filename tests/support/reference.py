"""An independent implementation of paper Eq. 12-14 for the tests, written from the base model's own pieces
(vision tower hidden states, projector, `pack_image_features`) and plain forward pre-hooks. It shares no code
with the package: one packing call per vision layer, crops masked by multiplication, its own hooks."""

from __future__ import annotations

import torch
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches


def reference_features(model, batch, vision_layers, manage="both"):
    """{vision layer k: V'_k as (image tokens, hidden)}, rows in image-token order."""
    inner, cfg = model.model, model.config
    sizes = batch["image_sizes"]
    per_sample = batch.get("batch_num_images")
    if per_sample is None:
        grid = [True] * len(sizes)
    else:
        grid = [int(n) == 1 for n in per_sample for _ in range(int(n))]
    crops = [
        image_size_to_num_patches(s, cfg.image_grid_pinpoints, cfg.vision_config.image_size) if g else 1
        for s, g in zip(sizes, grid)
    ]
    pixels = torch.cat([p[:n] for p, n in zip(batch["pixel_values"], crops)])
    mask = []
    for n in crops:
        for c in range(n):
            mask.append(1.0 if manage == "both" or (manage == "base") == (c == 0) else 0.0)
    mask = torch.tensor(mask)[:, None, None]
    with torch.no_grad():
        states = inner.vision_tower(pixels, output_hidden_states=True).hidden_states
    out = {}
    for k in vision_layers:
        x = states[k]
        if cfg.vision_feature_select_strategy == "default":
            x = x[:, 1:]
        with torch.no_grad():
            p = inner.multi_modal_projector(x) * mask.to(x.dtype)
        packed, _ = inner.pack_image_features(
            list(torch.split(p, crops)),
            sizes,
            image_newline=torch.zeros(p.shape[-1], dtype=p.dtype),
            vision_aspect_ratio=cfg.vision_aspect_ratio,
        )
        out[k] = torch.cat(packed)
    return out


def add_reference_hooks(model, batch, weights: dict[int, torch.Tensor], vision_layers, manage="both"):
    """Hooks on the base model's decoder layers adding sum_k W_l[k] * V'_k at the image positions of a prefill.
    `weights[l]` is `(len(vision_layers), hidden)`. Returns the hook handles."""
    feats = reference_features(model, batch, vision_layers, manage)
    stacked = torch.stack([feats[k] for k in vision_layers])  # (K, N, D)
    positions = (batch["input_ids"] == model.config.image_token_id).flatten().nonzero().squeeze(1)
    seq = batch["input_ids"].shape[1]
    handles = []
    for layer, w in weights.items():
        term = (w[:, None, :].to(stacked.dtype) * stacked).sum(0)

        def hook(module, args, kwargs, term=term):
            hidden = args[0]
            if hidden.shape[1] != seq:  # decode steps carry no image tokens
                return None
            flat = hidden.reshape(-1, hidden.shape[-1]).clone()
            flat[positions] += term.to(flat.dtype)
            return (flat.view_as(hidden),) + tuple(args[1:]), kwargs

        handles.append(model.model.language_model.layers[layer].register_forward_pre_hook(hook, with_kwargs=True))
    return handles
