"""LLaVA-NeXT-Video (`LlavaNextVideoForConditionalGeneration`): NeXT's images, and video frames through the
`vision_resampler` (2 x 2 average pooling of the CLIP grid) before the projector; no newline after videos."""

from __future__ import annotations

from transformers import (
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaNextVideoModel,
    LlavaNextVideoProcessor,
)
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_next_video.modeling_llava_next_video import image_size_to_num_patches

from .base import (
    Family,
    GroupedFeatures,
    fold_layers,
    grid_pixel_inputs,
    project_crops,
    tiny_text,
    tiny_vision,
    unfold_groups,
)
from .llava import CLIP_L_336, VICUNA_7B
from .llava_next import NEXT_PINPOINTS, TINY_PINPOINTS, next_image_features


def llava_next_video_7b_config(**overrides) -> LlavaNextVideoConfig:
    """The shape of llava-hf/LLaVA-NeXT-Video-7B-hf: CLIP 1024 x 24 layers, Vicuna (Llama) 4096 x 32 layers."""
    kwargs = dict(
        text_config=VICUNA_7B,
        vision_config=CLIP_L_336,
        image_token_index=32001,
        video_token_index=32000,
        pad_token_id=32002,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=NEXT_PINPOINTS,
        spatial_pool_mode="average",
        spatial_pool_stride=2,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return LlavaNextVideoConfig(**kwargs)


def tiny_config(
    num_text_layers: int = 8, num_vision_layers: int = 6, vocab_size: int = 128, **overrides
) -> LlavaNextVideoConfig:
    """A LLaVA-NeXT-Video small enough for a unit test: Llama 32 x `num_text_layers`, CLIP 24 x `num_vision_layers`,
    28 px crops of 7 px patches (4 x 4, pooled to 2 x 2 per frame)."""
    kwargs = dict(
        text_config=tiny_text("llama", num_text_layers, vocab_size),
        vision_config=tiny_vision("clip_vision_model", num_vision_layers, projection_dim=16),
        image_token_index=vocab_size - 1,
        video_token_index=vocab_size - 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=TINY_PINPOINTS,
        spatial_pool_mode="average",
        spatial_pool_stride=2,
    )
    kwargs.update(overrides)
    return LlavaNextVideoConfig(**kwargs)


class LlavaNextVideoAdapter(Family):
    name = "llava_next_video"
    title = "LLaVA-NeXT-Video"
    model_class = LlavaNextVideoForConditionalGeneration
    base_class = LlavaNextVideoModel
    config_class = LlavaNextVideoConfig
    processor_class = LlavaNextVideoProcessor
    video_processor_class = "LlavaNextVideoVideoProcessor"  # needs torchvision
    image_processor_class = LlavaNextImageProcessorPil
    has_grids = True
    has_video = True
    published = {"LLaVA-NeXT-Video-7B": ("llava-hf/LLaVA-NeXT-Video-7B-hf", llava_next_video_7b_config)}

    def image_features(self, inner, hidden, call, manage) -> GroupedFeatures:
        return next_image_features(inner, hidden, call, manage)

    def video_features(self, inner, hidden, call) -> GroupedFeatures:
        batch, frames = call["pixel_values_videos"].shape[:2]
        # The resampler runs on each layer before the projector, as the model runs it on its feature layer (a conv
        # resampler mixes channels, so layers are not folded here).
        stacked = project_crops(
            inner, hidden, call["vision_feature_select_strategy"], before_projector=inner.vision_resampler
        )
        videos = fold_layers(stacked).reshape(batch, frames * stacked.shape[1], -1)
        return unfold_groups(list(videos), len(hidden))

    def tiny_config(self, **overrides) -> LlavaNextVideoConfig:
        return tiny_config(**overrides)

    def pixel_inputs(self, config, height, width, batch_size, grid, dtype, device):
        if not grid:
            raise ValueError(f"{self.title} gives every image its grid crops; grid=False is not a layout it has.")
        return grid_pixel_inputs(config, height, width, batch_size, True, image_size_to_num_patches, dtype, device)
