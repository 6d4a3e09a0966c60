"""Mistral3 (`Mistral3ForConditionalGeneration`, Mistral-Small-3.1 and later): a Pixtral tower
(`vision_tower.transformer.layers`) over images of their own sizes, packed as one row of patches, then the
projector (RMSNorm, a 2 x 2 patch merger, an MLP) per image. Each aggregated layer goes through the projector on
its own. Pixtral-12B itself is a LLaVA model with a Pixtral tower: the LLaVA adapter takes it."""

from __future__ import annotations

import torch
from transformers import Mistral3Config, Mistral3ForConditionalGeneration, Mistral3Model
from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

from .base import Family, GroupedFeatures, resolve_feature_layer, tiny_text
from .pixtral import pixtral_pixel_inputs, pixtral_processor_class


def mistral_small_3_1_config(**overrides) -> Mistral3Config:
    """The shape of mistralai/Mistral-Small-3.1-24B-Instruct-2503: Pixtral 1024 x 24 layers (14 px patches),
    Mistral 5120 x 40 layers (24.0B parameters). From its config.json (the model page on huggingface.co; the vision
    fields cut off there from copies of the same file)."""
    text = dict(
        model_type="mistral",
        hidden_size=5120,
        head_dim=128,
        intermediate_size=32768,
        num_hidden_layers=40,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        vocab_size=131072,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000000.0},
        sliding_window=None,
    )
    vision = dict(
        model_type="pixtral",
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        head_dim=64,
        image_size=1540,
        patch_size=14,
        hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    kwargs = dict(
        text_config=text,
        vision_config=vision,
        image_token_index=10,
        spatial_merge_size=2,
        multimodal_projector_bias=False,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    return Mistral3Config(**{**kwargs, **overrides})


def mistral3_tiny_config(num_text_layers=8, num_vision_layers=6, vocab_size=128, **overrides) -> Mistral3Config:
    """A Mistral3 small enough for a unit test: Mistral 32 x `num_text_layers`, Pixtral 24 x `num_vision_layers`,
    16 px images of 4 px patches (16 patches, 4 tokens after the 2 x 2 merger)."""
    vision = dict(
        model_type="pixtral",
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=num_vision_layers,
        num_attention_heads=4,
        head_dim=6,
        image_size=16,
        patch_size=4,
    )
    kwargs = dict(
        text_config=tiny_text("mistral", num_text_layers, vocab_size),
        vision_config=vision,
        image_token_index=vocab_size - 1,
        spatial_merge_size=2,
        vision_feature_layer=-1,
        multimodal_projector_bias=False,
        # The std transformers draws the projector's weights with (read from the top-level config; the LLM and the
        # tower keep their own 0.02), so that each of its three linears in a row (patch merger 96 -> 24, linear_1,
        # linear_2) keeps its input's scale (std x sqrt(fan_in) 0.7-1.5). At 0.02 the image tokens come out at rms
        # ~0.001 and the embedded default learnt to tell only "red channel high" apart (0.540 / 0.460 held-out on
        # seeds 42 / 1; 0.540 at 0.06, where the image tokens are at the text embeddings' scale); 1.000 at 0.15.
        initializer_range=0.15,
    )
    kwargs.update(overrides)
    return Mistral3Config(**kwargs)


class Mistral3Adapter(Family):
    name = "mistral3"
    title = "Mistral3"
    model_class = Mistral3ForConditionalGeneration
    base_class = Mistral3Model
    config_class = Mistral3Config
    processor_class = pixtral_processor_class()  # transformers' own, with or without torchvision
    image_processor_class = PixtralImageProcessorPil
    published = {
        "Mistral-Small-3.1-24B-Instruct-2503": (
            "mistralai/Mistral-Small-3.1-24B-Instruct-2503",
            mistral_small_3_1_config,
        )
    }

    def feature_layer(self, config, num_vision_layers: int) -> int:
        return resolve_feature_layer(config.vision_feature_layer, num_vision_layers)

    def image_features(self, inner, hidden, call, manage) -> GroupedFeatures:
        image_sizes = call["image_sizes"]
        ratio = inner.vision_tower.patch_size * inner.config.spatial_merge_size
        # Mistral3MultiModalProjector.forward(features, image_sizes), per layer, as the model calls it
        sizes = (torch.as_tensor(image_sizes) // ratio).prod(dim=-1).tolist()
        return [
            list(torch.split(inner.multi_modal_projector(layer.squeeze(0), image_sizes), sizes)) for layer in hidden
        ]

    def tiny_config(self, **overrides) -> Mistral3Config:
        return mistral3_tiny_config(**overrides)

    def pixel_inputs(self, config, height, width, batch_size, grid, dtype, device):
        return pixtral_pixel_inputs(config.vision_config, height, width, batch_size, dtype, device)
