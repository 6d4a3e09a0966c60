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


def internvl3_1b_config(**overrides) -> InternVLConfig:
    """The shape of OpenGVLab/InternVL3-1B-hf: InternViT-300M (1024 x 24 layers, 448 px tiles of 14 px patches, 256
    tokens per tile after the pixel shuffle), Qwen2.5 896 x 24 layers. The text and projector fields are the config
    transformers' processor tests reuse (hf-internal-testing/tiny-processor-internvl, config.json); the vision
    fields not written there are `InternVLVisionConfig`'s defaults, as the checkpoint loads them."""
    text = dict(
        model_type="qwen2",
        vocab_size=151674,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        bos_token_id=151643,
        eos_token_id=151645,
        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1000000.0},
        tie_word_embeddings=True,
    )
    vision = dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        image_size=[448, 448],
        patch_size=[14, 14],
        attention_bias=True,
        layer_scale_init_value=0.1,
        use_mean_pooling=True,
    )
    kwargs = dict(
        text_config=text,
        vision_config=vision,
        image_token_id=151667,
        image_seq_length=256,
        downsample_ratio=0.5,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=True,
    )
    return InternVLConfig(**{**kwargs, **overrides})


def internvl_tiny_config(num_text_layers=8, num_vision_layers=6, vocab_size=128, **overrides) -> InternVLConfig:
    """An InternVL small enough for a unit test: Qwen2 32 x `num_text_layers`, InternViT 24 x `num_vision_layers`,
    32 px tiles of 4 px patches (64 patches, 16 tokens a tile after the pixel shuffle, as LLaVA-OneVision's
    tiny crops have 16). Embedded default, held-out exact match: 16 px tiles (4 tokens a tile) 0.54 / 1.000 / 0.995 on
    seeds 42 / 1 / 2 (seed 42 learnt only red and green); 32 px tiles 1.000 / 0.945 on seeds 42 / 2. The run is
    seed-sensitive either way; no InternVL defect was found."""
    vision = dict(
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=num_vision_layers,
        num_attention_heads=4,
        image_size=[32, 32],
        patch_size=[4, 4],
        use_mean_pooling=False,
    )
    kwargs = dict(
        text_config=tiny_text("qwen2", num_text_layers, vocab_size),
        vision_config=vision,
        image_token_id=vocab_size - 1,
        image_seq_length=16,
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
    published = {"InternVL3-1B-hf": ("OpenGVLab/InternVL3-1B-hf", internvl3_1b_config)}

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
