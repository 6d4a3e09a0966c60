"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`): CLIP ViT-L/336, anyres grids of 336 px crops, unpadding and an
image newline after each row of grid tokens, the "default" strategy; no video."""

from __future__ import annotations

from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextModel, LlavaNextProcessor
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from .base import (
    Family,
    GroupedFeatures,
    fold_layers,
    grid_pixel_inputs,
    managed_crops,
    pack_folded,
    project_crops,
    tiny_text,
    tiny_vision,
    unfold_groups,
)
from .llava import CLIP_L_336

NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
TINY_PINPOINTS = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]]
# mistralai/Mistral-7B-Instruct-v0.2 with the 64 tokens llava-hf adds to the vocabulary.
MISTRAL_7B = dict(
    model_type="mistral",
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=32064,
    max_position_embeddings=32768,
    rms_norm_eps=1e-5,
    rope_theta=1000000.0,
    sliding_window=None,
    tie_word_embeddings=False,
)


def llava_next_mistral_7b_config(**overrides) -> LlavaNextConfig:
    """The shape of llava-hf/llava-v1.6-mistral-7b-hf: CLIP 1024 x 24 layers, Mistral 4096 x 32 layers."""
    kwargs = dict(
        text_config=MISTRAL_7B,
        vision_config=CLIP_L_336,
        image_token_index=32000,
        pad_token_id=32001,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=NEXT_PINPOINTS,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
        use_image_newline_parameter=True,
    )
    kwargs.update(overrides)
    return LlavaNextConfig(**kwargs)


def tiny_config(
    num_text_layers: int = 8, num_vision_layers: int = 6, vocab_size: int = 128, **overrides
) -> LlavaNextConfig:
    """A LLaVA-NeXT small enough for a unit test: Mistral 32 x `num_text_layers`, CLIP 24 x `num_vision_layers`,
    28 px crops of 7 px patches, grids of up to 3 crops."""
    kwargs = dict(
        text_config=tiny_text("mistral", num_text_layers, vocab_size),
        vision_config=tiny_vision("clip_vision_model", num_vision_layers, projection_dim=16),
        image_token_index=vocab_size - 1,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=TINY_PINPOINTS,
    )
    kwargs.update(overrides)
    return LlavaNextConfig(**kwargs)


def next_image_features(inner, hidden, call, manage) -> GroupedFeatures:
    """NeXT's image layout (shared with NeXT-Video): per-image grids, packed with unpadding and a zero newline
    (gathered through the packing's row order: `pack_folded`)."""
    config, image_sizes = inner.config, call["image_sizes"]
    num_crops = [
        image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size)
        for size in image_sizes
    ]
    strategy = call["vision_feature_select_strategy"]
    folded = fold_layers(project_crops(inner, hidden, strategy, managed_crops(num_crops, manage)))

    def pack(crops, newline):
        return inner.pack_image_features(crops, image_sizes, strategy, image_newline=newline)[0]

    return unfold_groups(pack_folded(folded, num_crops, pack), len(hidden))


class LlavaNextAdapter(Family):
    name = "llava_next"
    title = "LLaVA-NeXT"
    model_class = LlavaNextForConditionalGeneration
    base_class = LlavaNextModel
    config_class = LlavaNextConfig
    processor_class = LlavaNextProcessor
    image_processor_class = LlavaNextImageProcessorPil
    has_grids = True
    published = {"llava-v1.6-mistral-7b": ("llava-hf/llava-v1.6-mistral-7b-hf", llava_next_mistral_7b_config)}

    def image_features(self, inner, hidden, call, manage) -> GroupedFeatures:
        return next_image_features(inner, hidden, call, manage)

    def tiny_config(self, **overrides) -> LlavaNextConfig:
        return tiny_config(**overrides)

    def pixel_inputs(self, config, height, width, batch_size, grid, dtype, device):
        if not grid:
            raise ValueError(f"{self.title} gives every image its grid crops; grid=False is not a layout it has.")
        return grid_pixel_inputs(config, height, width, batch_size, True, image_size_to_num_patches, dtype, device)
