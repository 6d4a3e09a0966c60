"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): SigLIP, anyres_max_9 grids with unpadding and
image newlines, several images per sample (base crop only), video frames pooled bilinearly to half size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionModel,
    LlavaOnevisionProcessor,
)
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

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

# The published checkpoints' pinpoints: 384 .. 2304 in steps of 384, both sides.
ONEVISION_PINPOINTS = [[h, w] for h in range(384, 2305, 384) for w in range(384, 2305, 384)]
SIGLIP_SO400M = dict(
    model_type="siglip_vision_model",
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=26,
    num_attention_heads=16,
    patch_size=14,
    image_size=384,
    vision_use_head=False,
)
TINY_IMAGE_SIZE = 28  # 4 x 4 patches of 7 px: 16 tokens per crop
TINY_PINPOINTS = [[28, 28], [28, 56], [56, 28], [56, 56], [28, 84], [84, 28], [112, 112]]


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


def _config(text: dict, vision: dict, **overrides: Any) -> LlavaOnevisionConfig:
    kwargs = dict(
        text_config=text,
        vision_config=vision,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=ONEVISION_PINPOINTS,
    )
    kwargs.update(overrides)
    return LlavaOnevisionConfig(**kwargs)


def onevision_0_5b_config(**overrides) -> LlavaOnevisionConfig:
    """The shape of llava-onevision-qwen2-0.5b-si/ov: SigLIP 1152 x 26 layers, Qwen2 896 x 24 layers."""
    text = dict(
        model_type="qwen2",
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        bos_token_id=151643,
        eos_token_id=151645,
    )
    return _config(
        text,
        SIGLIP_SO400M,
        **{"image_token_index": 151646, "video_token_index": 151647, "tie_word_embeddings": True, **overrides},
    )


def onevision_7b_config(**overrides) -> LlavaOnevisionConfig:
    """The shape of llava-onevision-qwen2-7b-ov: SigLIP 1152 x 26 layers, Qwen2 3584 x 28 layers."""
    text = dict(
        model_type="qwen2",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152128,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
        bos_token_id=151643,
        eos_token_id=151645,
    )
    return _config(text, SIGLIP_SO400M, **{"image_token_index": 151646, "video_token_index": 151647, **overrides})


def tiny_config(
    num_text_layers: int = 8, num_vision_layers: int = 6, vocab_size: int = 128, **overrides
) -> LlavaOnevisionConfig:
    """A LLaVA-OneVision small enough for a unit test: Qwen2 32 x `num_text_layers`, SigLIP 24 x
    `num_vision_layers`, 28 px crops of 7 px patches, pinpoints up to 4 x 4 crops (so anyres_max_9 downsamples)."""
    text = tiny_text("qwen2", num_text_layers, vocab_size)
    vision = tiny_vision("siglip_vision_model", num_vision_layers, vision_use_head=False)
    return _config(
        text,
        vision,
        **{
            "image_token_index": vocab_size - 1,
            "video_token_index": vocab_size - 2,
            "image_grid_pinpoints": TINY_PINPOINTS,
            **overrides,
        },
    )


class LlavaOnevisionAdapter(Family):
    name = "llava_onevision"
    title = "LLaVA-OneVision"
    model_class = LlavaOnevisionForConditionalGeneration
    base_class = LlavaOnevisionModel
    config_class = LlavaOnevisionConfig
    processor_class = LlavaOnevisionProcessor
    video_processor_class = "LlavaOnevisionVideoProcessor"  # needs torchvision
    prompt_format = "qwen_1_5"  # lmms-eval's own `llava_onevision` model scores it in its training format
    image_processor_class = LlavaOnevisionImageProcessorPil
    has_grids = True
    grids_optional = True  # the images of multi-image samples
    has_video = True
    published = {
        "llava-onevision-qwen2-0.5b-ov": ("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", onevision_0_5b_config),
        "llava-onevision-qwen2-7b-ov": ("llava-hf/llava-onevision-qwen2-7b-ov-hf", onevision_7b_config),
    }

    def image_features(self, inner, hidden, call, manage) -> GroupedFeatures:
        num_crops = crops_per_image(inner.config, call["image_sizes"], call.get("batch_num_images"))
        stacked = project_crops(inner, hidden, call["vision_feature_select_strategy"], managed_crops(num_crops, manage))
        folded = fold_layers(stacked)

        def pack(crops, newline):  # gathered through its row order unless anyres_max_9 downsamples: `pack_folded`
            return inner.pack_image_features(
                crops, call["image_sizes"], image_newline=newline, vision_aspect_ratio=call["vision_aspect_ratio"]
            )[0]

        return unfold_groups(pack_folded(folded, num_crops, pack), len(hidden))

    def video_features(self, inner, hidden, call) -> GroupedFeatures:
        batch, frames = call["pixel_values_videos"].shape[:2]
        # Bilinear pooling is linear per channel, so pooling the folded layers pools each layer as the model does.
        pooled = inner.apply_pooling(fold_layers(project_crops(inner, hidden, call["vision_feature_select_strategy"])))
        videos = pooled.reshape(batch, frames * pooled.shape[1], pooled.shape[-1])
        videos = torch.cat(
            [videos, videos.new_zeros(batch, 1, videos.shape[-1])], dim=1
        )  # the newline after each video
        return unfold_groups(list(videos), len(hidden))

    def tiny_config(self, **overrides) -> LlavaOnevisionConfig:
        return tiny_config(**overrides)

    def pixel_inputs(self, config, height, width, batch_size, grid, dtype, device):
        inputs = grid_pixel_inputs(config, height, width, batch_size, True, image_size_to_num_patches, dtype, device)
        if not grid:  # transformers gives every image of a multi-image sample its base crop only
            inputs["pixel_values"] = inputs["pixel_values"][:, :1]
            inputs["batch_num_images"] = torch.full((batch_size,), 2, device=device)
        return inputs
