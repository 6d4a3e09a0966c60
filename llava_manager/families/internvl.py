"""InternVL (transformers-native `InternVLForConditionalGeneration`, the `-hf` checkpoints): InternViT layers
(`vision_tower.encoder.layer`), the CLS token dropped, a pixel shuffle (2 x 2 patches into channels), then the MLP
projector; one token group per tile (the processor's dynamic tiles and thumbnail are separate rows). With
`vision_feature_layer=-1` the model takes the tower's `last_hidden_state`, which went through the tower's final
LayerNorm unless `use_mean_pooling` makes that an identity: every aggregated layer goes through the same norm, so
the feature layer's term is the model's own image tokens."""

from __future__ import annotations

import torch
from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLModel, InternVLProcessor
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

from .base import Family, GroupedFeatures, drop_first_token, tiny_text


def square_size(value) -> int:
    """`image_size` as one side: an int, or a (height, width) pair of equal sides."""
    return value if isinstance(value, int) else int(value[0])


def internvl_tiny_config(num_text_layers=8, num_vision_layers=6, vocab_size=128, **overrides) -> InternVLConfig:
    """An InternVL small enough for a unit test: Qwen2 32 x `num_text_layers`, InternViT 24 x `num_vision_layers`,
    16 px tiles of 4 px patches (16 patches, 4 tokens after the pixel shuffle)."""
    vision = dict(
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=num_vision_layers,
        num_attention_heads=4,
        image_size=[16, 16],
        patch_size=[4, 4],
        use_mean_pooling=False,
    )
    kwargs = dict(
        text_config=tiny_text("qwen2", num_text_layers, vocab_size),
        vision_config=vision,
        image_token_id=vocab_size - 1,
        image_seq_length=4,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return InternVLConfig(**kwargs)


class InternVLAdapter(Family):
    name = "internvl"
    title = "InternVL"
    model_class = InternVLForConditionalGeneration
    base_class = InternVLModel
    config_class = InternVLConfig
    processor_class = InternVLProcessor
    image_processor_class = GotOcr2ImageProcessorPil
    video_processor_class = "InternVLVideoProcessor"  # needs torchvision

    def image_features(self, inner, hidden, call, manage) -> GroupedFeatures:
        config = inner.config
        norm = inner.vision_tower.layernorm if call["vision_feature_layer"] == -1 else None
        grouped = []
        for layer in hidden:
            if norm is not None:
                layer = norm(layer)
            layer = drop_first_token(layer, call["vision_feature_select_strategy"])
            tiles, tokens, channels = layer.shape
            side = int(tokens**0.5)
            shuffled = inner.pixel_shuffle(layer.reshape(tiles, side, side, channels), config.downsample_ratio)
            projected = inner.multi_modal_projector(shuffled.reshape(tiles, -1, shuffled.shape[-1]))
            grouped.append(list(projected))
        return grouped

    def tiny_config(self, **overrides) -> InternVLConfig:
        return internvl_tiny_config(**overrides)

    def pixel_inputs(self, config, height, width, batch_size, grid, dtype, device):
        size = square_size(config.vision_config.image_size)
        return {"pixel_values": torch.randn(batch_size, 3, size, size, dtype=dtype, device=device)}
