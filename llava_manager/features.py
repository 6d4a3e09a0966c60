"""Multi-layer vision features laid out like LLaVA-OneVision's image tokens (the `V'` of paper Eq. 12-14).

Each aggregated SigLIP layer goes through the model's own projector, then through the model's own per-image
split, base + grid packing, unpadding and anyres_max_9 interpolation, so that row r of `V'_k` lines up with
image token r. Packing is linear and channel-wise, so all layers are packed in one call with the layers folded
into the channel axis; the newline column is zero (newline positions get no manager term).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

# Feature layout shared with generation: `grouped[k][g]` is vision layer k for token group g (one image), a
# `(tokens_g, hidden)` tensor. transformers' `generate()` repeats (beam search) and slices (chunked prefill)
# this exact layout when it is stored as `deepstack_features` of the image encoder output.
GroupedFeatures = list[list[torch.Tensor]]


@dataclass
class ManagedImageOutput(BaseModelOutputWithPooling):
    """The image encoder output of a patched model: the usual fields plus the managers' multi-layer features."""

    deepstack_features: GroupedFeatures | None = None


def vision_encoder_layers(vision_tower: nn.Module) -> nn.ModuleList:
    """The SigLIP encoder layers; `hidden_states[k]` is the output of `layers[k - 1]`."""
    for path in ("encoder", "vision_model.encoder"):
        module = vision_tower
        for name in path.split("."):
            module = getattr(module, name, None)
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise TypeError(f"Cannot find the encoder layers of the vision tower {type(vision_tower).__name__}.")


def resolve_feature_layer(vision_feature_layer: int | Sequence[int], num_vision_layers: int) -> int:
    """The `hidden_states` index (1 .. num_vision_layers) that `vision_feature_layer` selects: an int, or a list of
    one (transformers concatenates the listed layers, so one listed layer is that layer)."""
    if isinstance(vision_feature_layer, (list, tuple)) and len(vision_feature_layer) == 1:
        vision_feature_layer = vision_feature_layer[0]
    if isinstance(vision_feature_layer, bool) or not isinstance(vision_feature_layer, int):
        raise ValueError(
            f"LLaVA-OV-Manager needs a single vision feature layer (an int or a list of one), got "
            f"vision_feature_layer={vision_feature_layer!r}; several concatenated layers are not supported (the "
            f"projector then takes their concatenation, which no single layer can be brought through)."
        )
    num_states = num_vision_layers + 1
    index = vision_feature_layer % num_states if -num_states <= vision_feature_layer < num_states else None
    if not index:
        raise ValueError(
            f"vision_feature_layer={vision_feature_layer} does not select a vision layer output "
            f"(allowed: 1 .. {num_vision_layers} or -{num_vision_layers} .. -1)."
        )
    return index


def crops_per_image(config, image_sizes: torch.Tensor, batch_num_images: Sequence[int] | None) -> list[int]:
    """Number of crops (base + grids) of each image, as LLaVA-OneVision counts them: a sample with several
    images gets its base crop only."""
    if batch_num_images is None:
        needs_grid = [True] * len(image_sizes)
    else:
        needs_grid = [int(n) == 1 for n in batch_num_images for _ in range(int(n))]
    return [
        image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size) if grid else 1
        for size, grid in zip(image_sizes, needs_grid)
    ]


def managed_crops(num_crops: Sequence[int], manage: str) -> list[bool]:
    """Which crops get a manager term: crop 0 of each image is its base image, the others its grid crops."""
    flags = []
    for n in num_crops:
        for crop in range(n):
            is_base = crop == 0
            flags.append(manage == "both" or (manage == "base") == is_base)
    return flags


def build_grouped_features(
    model: nn.Module,
    layer_outputs: Sequence[torch.Tensor],
    image_sizes: torch.Tensor,
    vision_feature_select_strategy: str,
    vision_aspect_ratio: str,
    batch_num_images: Sequence[int] | None,
    manage: str,
) -> GroupedFeatures:
    """`V'` for every aggregated layer, grouped per image in image-token order.

    `model` is the inner `LlavaOnevisionModel`; `layer_outputs[k]` is the `(crops, tokens, vision_hidden)`
    output of the k-th aggregated vision layer for all crops of the batch.
    """
    num_crops = crops_per_image(model.config, image_sizes, batch_num_images)
    flags = managed_crops(num_crops, manage)
    keep = None if all(flags) else torch.tensor(flags, device=layer_outputs[0].device).nonzero().squeeze(1)

    projected = []
    for hidden in layer_outputs:
        if vision_feature_select_strategy == "default":
            hidden = hidden[:, 1:]
        if keep is not None:
            hidden = hidden.index_select(0, keep)
        projected.append(model.multi_modal_projector(hidden))
    num_layers = len(projected)
    # (crops, tokens, layers, hidden): the layers folded into channels, so one packing call serves all of them.
    stacked = torch.stack(projected, dim=2)
    if keep is not None:
        full = stacked.new_zeros((len(flags),) + stacked.shape[1:])
        stacked = full.index_copy(0, keep, stacked)
    crops, tokens, _, hidden_size = stacked.shape
    stacked = stacked.view(crops, tokens, num_layers * hidden_size)

    zero_newline = stacked.new_zeros(num_layers * hidden_size)
    packed, _ = model.pack_image_features(
        list(torch.split(stacked, num_crops, dim=0)),
        image_sizes,
        image_newline=zero_newline,
        vision_aspect_ratio=vision_aspect_ratio,
    )
    per_image = [image.view(image.shape[0], num_layers, hidden_size) for image in packed]
    return [[image[:, k] for image in per_image] for k in range(num_layers)]


def count_grouped_rows(grouped: GroupedFeatures) -> int:
    return sum(group.shape[0] for group in grouped[0])
