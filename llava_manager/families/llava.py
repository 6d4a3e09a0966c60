"""LLaVA-1.5 (`LlavaForConditionalGeneration`): CLIP ViT-L/336, `vision_feature_layer=-2`, the "default" strategy
(the CLS token dropped), one crop per image (no anyres), no newline, no video. The same class with a Pixtral tower
(Pixtral-12B) takes images at their own sizes, packed as one row of patches and split per image by `image_sizes`."""

from __future__ import annotations

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaModel, LlavaProcessor
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from .base import Family, GroupedFeatures, fold_layers, project_crops, tiny_text, tiny_vision, unfold_groups
from .pixtral import pixtral_pixel_inputs

# openai/clip-vit-large-patch14-336, the vision tower of every published LLaVA-1.5 / NeXT checkpoint.
CLIP_L_336 = dict(
    model_type="clip_vision_model",
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    patch_size=14,
    image_size=336,
    projection_dim=768,
)
# lmsys/vicuna-7b-v1.5 with the 64 tokens llava-hf adds to the vocabulary.
VICUNA_7B = dict(
    model_type="llama",
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32064,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)


def llava_1_5_7b_config(**overrides) -> LlavaConfig:
    """The shape of llava-hf/llava-1.5-7b-hf: CLIP 1024 x 24 layers, Vicuna (Llama) 4096 x 32 layers."""
    kwargs = dict(
        text_config=VICUNA_7B,
        vision_config=CLIP_L_336,
        image_token_index=32000,
        pad_token_id=32001,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=576,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return LlavaConfig(**kwargs)


def pixtral_12b_config(**overrides) -> LlavaConfig:
    """The shape of mistral-community/pixtral-12b: a LLaVA model with a Pixtral tower (1024 x 24 layers, 16 px
    patches, images at their own sizes) and Mistral-Nemo 5120 x 40 layers (12.7B parameters). From copies of its
    config.json on huggingface.co (saujasv/pixtral-12b); the tower fields it leaves out are
    `PixtralVisionConfig`'s defaults."""
    text = dict(
        model_type="mistral",
        hidden_size=5120,
        head_dim=128,
        intermediate_size=14336,
        num_hidden_layers=40,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=1024000,
        rms_norm_eps=1e-5,
        vocab_size=131072,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000000.0},
    )
    vision = dict(
        model_type="pixtral",
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        head_dim=64,
        image_size=1024,
        patch_size=16,
        hidden_act="gelu",
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    kwargs = dict(
        text_config=text,
        vision_config=vision,
        image_token_index=10,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_seq_length=1,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return LlavaConfig(**kwargs)


def tiny_config(
    num_text_layers: int = 8, num_vision_layers: int = 6, vocab_size: int = 128, **overrides
) -> LlavaConfig:
    """A LLaVA-1.5 small enough for a unit test: Llama 32 x `num_text_layers`, CLIP 24 x `num_vision_layers`,
    28 px images of 7 px patches (16 tokens after the CLS is dropped)."""
    kwargs = dict(
        text_config=tiny_text("llama", num_text_layers, vocab_size),
        vision_config=tiny_vision("clip_vision_model", num_vision_layers, projection_dim=16),
        image_token_index=vocab_size - 1,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=16,
    )
    kwargs.update(overrides)
    return LlavaConfig(**kwargs)


class LlavaAdapter(Family):
    name = "llava"
    title = "LLaVA-1.5"
    model_class = LlavaForConditionalGeneration
    base_class = LlavaModel
    config_class = LlavaConfig
    processor_class = LlavaProcessor
    image_processor_class = LlavaImageProcessorPil
    published = {
        "llava-1.5-7b": ("llava-hf/llava-1.5-7b-hf", llava_1_5_7b_config),
        "pixtral-12b": ("mistral-community/pixtral-12b", pixtral_12b_config),
    }

    def pixel_inputs(self, config, height, width, batch_size, grid, dtype, device):
        if config.vision_config.model_type == "pixtral":  # Pixtral-12B: images at their own sizes
            return pixtral_pixel_inputs(config.vision_config, height, width, batch_size, dtype, device)
        return super().pixel_inputs(config, height, width, batch_size, grid, dtype, device)

    def image_features(self, inner, hidden, call, manage) -> GroupedFeatures:
        folded = fold_layers(project_crops(inner, hidden, call["vision_feature_select_strategy"]))
        image_sizes = call.get("image_sizes")
        if image_sizes is None:
            groups = list(folded)
        else:  # towers with variable-size images (one batch row of patches), split as the model splits them
            patch = inner.vision_tower.patch_size
            sizes = (torch.as_tensor(image_sizes, device=folded.device) // patch).prod(dim=-1).tolist()
            groups = list(torch.split(folded.squeeze(0), sizes))
        return unfold_groups(groups, len(hidden))

    def tiny_config(self, **overrides) -> LlavaConfig:
        return tiny_config(**overrides)
