"""Qwen3-VL (dense and MoE) and Qwen3.5 (dense and MoE): Qwen2-VL's vision path (`visual.blocks`, flattened
patches with grids, the last block through `visual.merger`, no window order) with learned position embeddings.
Qwen3-VL also has DeepStack: its encoder output carries three more merged vision layers, which its language model
adds after decoder layers 1-3. The managers' features travel after those in `deepstack_features`, and the language
model still gets only its own, or none with `ManagerConfig(deepstack=False)`. Qwen3.5 has no DeepStack and a hybrid
language model (linear-attention and full-attention layers); the managers sit before its layers all the same.
Both encode videos by calling their image encoder."""

from __future__ import annotations

from typing import Any

from transformers import (
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5Model,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3_5MoeModel,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLModel,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
    Qwen3VLMoeModel,
    Qwen3VLProcessor,
)

from .qwen2_vl import QWEN_VL_TOKENS, QwenVLFamily

QWEN3_ROPE = {"rope_type": "default", "rope_theta": 5000000, "mrope_section": [24, 20, 20], "mrope_interleaved": True}
# Qwen3-VL's ViT (SigLIP-2 sized, 16 px patches, DeepStack from blocks 8, 16 and 24), as the 8B and 30B-A3B give it.
QWEN3_VIT = dict(
    depth=27,
    hidden_size=1152,
    intermediate_size=4304,
    num_heads=16,
    patch_size=16,
    spatial_merge_size=2,
    temporal_patch_size=2,
    num_position_embeddings=2304,
    deepstack_visual_indexes=[8, 16, 24],
    hidden_act="gelu_pytorch_tanh",
)


def qwen3_vl_8b_config(**overrides) -> Qwen3VLConfig:
    """The shape of Qwen/Qwen3-VL-8B-Instruct: ViT 1152 x 27 blocks, Qwen3 4096 x 36 layers (8.77B parameters).
    From a verbatim copy of its config.json (github.com/nikolay-grudanov/Team_5_AI_Tutor,
    models/Qwen3-VL-8B-Instruct/config.json; its max_position_embeddings, edited there to 8192, is the Hub's)."""
    text = dict(
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=262144,
        rope_parameters=dict(QWEN3_ROPE),
        bos_token_id=151643,
        eos_token_id=151645,
        tie_word_embeddings=False,
    )
    kwargs = dict(
        text_config=text,
        vision_config=dict(QWEN3_VIT, out_hidden_size=4096),
        tie_word_embeddings=False,
        **QWEN_VL_TOKENS,
    )
    return Qwen3VLConfig(**{**kwargs, **overrides})


def qwen3_vl_30b_a3b_config(**overrides) -> Qwen3VLMoeConfig:
    """The shape of Qwen/Qwen3-VL-30B-A3B-Instruct: the same ViT, a Qwen3-MoE 2048 x 48 layers with 128 experts
    (8 active), 31.07B parameters, as a stored model report quoting its config.json counts them."""
    text = dict(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=48,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        moe_intermediate_size=768,
        num_experts=128,
        num_experts_per_tok=8,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        norm_topk_prob=True,
        max_position_embeddings=262144,
        rope_parameters=dict(QWEN3_ROPE),
        bos_token_id=151643,
        eos_token_id=151645,
        tie_word_embeddings=False,
    )
    kwargs = dict(
        text_config=text,
        vision_config=dict(QWEN3_VIT, out_hidden_size=2048),
        tie_word_embeddings=False,
        **QWEN_VL_TOKENS,
    )
    return Qwen3VLMoeConfig(**{**kwargs, **overrides})


class Qwen3VLFamily(QwenVLFamily):
    processor_class = Qwen3VLProcessor
    video_processor_class = "Qwen3VLVideoProcessor"  # needs torchvision

    def own_deepstack(self, config) -> int:
        return len(getattr(config.vision_config, "deepstack_visual_indexes", None) or ())

    def placeholders(self, config, modality, count, inputs):
        """Videos frame by frame, each between its own vision start and end tokens (the processor also writes a
        timestamp before each), as the M-RoPE positions expect; images as in Qwen2-VL."""
        if modality == "image":
            return super().placeholders(config, modality, count, inputs)
        frames = int(inputs["video_grid_thw"][0][0])
        return super().placeholders(config, modality, count // frames, inputs) * frames


def _tiny_vision(num_layers: int, **overrides) -> dict[str, Any]:
    return dict(
        depth=num_layers,
        hidden_size=32,
        intermediate_size=64,
        num_heads=4,
        out_hidden_size=32,
        patch_size=4,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=16,
        in_channels=3,
        **overrides,
    )


def _tiny_text(num_layers: int, vocab_size: int, **overrides) -> dict[str, Any]:
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=vocab_size,
        max_position_embeddings=1024,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 1, 1],
            "mrope_interleaved": True,
        },
        tie_word_embeddings=False,
        **overrides,
    )


def _tokens(vocab_size: int) -> dict[str, int]:
    return dict(
        vision_start_token_id=vocab_size - 4,
        vision_end_token_id=vocab_size - 3,
        image_token_id=vocab_size - 2,
        video_token_id=vocab_size - 1,
    )


_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, decoder_sparse_step=1)
_HYBRID = dict(
    linear_conv_kernel_dim=2,
    linear_key_head_dim=8,
    linear_value_head_dim=8,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
)


def _layer_types(num_layers: int) -> list[str]:
    """Qwen3.5's pattern: three linear-attention layers, then one full-attention layer."""
    return ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(num_layers)]


def qwen3_vl_tiny_config(num_text_layers=8, num_vision_layers=6, vocab_size=128, **overrides) -> Qwen3VLConfig:
    """A Qwen3-VL small enough for a unit test, with DeepStack from vision blocks 1 and 3."""
    kwargs = dict(
        text_config=_tiny_text(num_text_layers, vocab_size),
        vision_config=_tiny_vision(num_vision_layers, deepstack_visual_indexes=[1, 3]),
        **_tokens(vocab_size),
    )
    kwargs.update(overrides)
    return Qwen3VLConfig(**kwargs)


def qwen3_vl_moe_tiny_config(num_text_layers=8, num_vision_layers=6, vocab_size=128, **overrides) -> Qwen3VLMoeConfig:
    kwargs = dict(
        text_config=_tiny_text(num_text_layers, vocab_size, **_MOE),
        vision_config=_tiny_vision(num_vision_layers, deepstack_visual_indexes=[1, 3]),
        **_tokens(vocab_size),
    )
    kwargs.update(overrides)
    return Qwen3VLMoeConfig(**kwargs)


def qwen3_5_tiny_config(num_text_layers=8, num_vision_layers=6, vocab_size=128, **overrides) -> Qwen3_5Config:
    kwargs = dict(
        text_config=_tiny_text(num_text_layers, vocab_size, layer_types=_layer_types(num_text_layers), **_HYBRID),
        vision_config=_tiny_vision(num_vision_layers),
        **_tokens(vocab_size),
    )
    kwargs.update(overrides)
    return Qwen3_5Config(**kwargs)


def qwen3_5_moe_tiny_config(num_text_layers=8, num_vision_layers=6, vocab_size=128, **overrides) -> Qwen3_5MoeConfig:
    text = _tiny_text(num_text_layers, vocab_size, layer_types=_layer_types(num_text_layers), **_HYBRID)
    text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16)
    text.pop("intermediate_size")
    kwargs = dict(text_config=text, vision_config=_tiny_vision(num_vision_layers), **_tokens(vocab_size))
    kwargs.update(overrides)
    return Qwen3_5MoeConfig(**kwargs)


class Qwen3VLAdapter(Qwen3VLFamily):
    name = "qwen3_vl"
    title = "Qwen3-VL"
    model_class = Qwen3VLForConditionalGeneration
    base_class = Qwen3VLModel
    config_class = Qwen3VLConfig
    published = {"Qwen3-VL-8B-Instruct": ("Qwen/Qwen3-VL-8B-Instruct", qwen3_vl_8b_config)}

    def tiny_config(self, **overrides):
        return qwen3_vl_tiny_config(**overrides)


class Qwen3VLMoeAdapter(Qwen3VLFamily):
    name = "qwen3_vl_moe"
    title = "Qwen3-VL-MoE"
    model_class = Qwen3VLMoeForConditionalGeneration
    base_class = Qwen3VLMoeModel
    config_class = Qwen3VLMoeConfig
    published = {"Qwen3-VL-30B-A3B-Instruct": ("Qwen/Qwen3-VL-30B-A3B-Instruct", qwen3_vl_30b_a3b_config)}

    def tiny_config(self, **overrides):
        return qwen3_vl_moe_tiny_config(**overrides)


class Qwen3_5Adapter(Qwen3VLFamily):
    name = "qwen3_5"
    title = "Qwen3.5"
    model_class = Qwen3_5ForConditionalGeneration
    base_class = Qwen3_5Model
    config_class = Qwen3_5Config

    def tiny_config(self, **overrides):
        return qwen3_5_tiny_config(**overrides)


class Qwen3_5MoeAdapter(Qwen3VLFamily):
    name = "qwen3_5_moe"
    title = "Qwen3.5-MoE"
    model_class = Qwen3_5MoeForConditionalGeneration
    base_class = Qwen3_5MoeModel
    config_class = Qwen3_5MoeConfig

    def tiny_config(self, **overrides):
        return qwen3_5_moe_tiny_config(**overrides)
