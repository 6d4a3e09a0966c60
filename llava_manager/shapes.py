"""LLaVA-OneVision configurations built in code: a tiny one for tests and demos, and the real 0.5B-SI shape
(`llava-hf/llava-onevision-qwen2-0.5b-si-hf`) for benchmarks with random weights. Nothing is downloaded."""

from __future__ import annotations

import torch
from transformers import LlavaOnevisionConfig

from .features import crops_per_image

# The real checkpoint's pinpoints: 384 .. 2304 in steps of 384, both sides.
ONEVISION_PINPOINTS = [[h, w] for h in range(384, 2305, 384) for w in range(384, 2305, 384)]


def onevision_0_5b_config(**overrides) -> LlavaOnevisionConfig:
    """The shape of LLaVA-OneVision-0.5B-SI: SigLIP 1152 x 26 layers, Qwen2 896 x 24 layers."""
    text = dict(
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
        tie_word_embeddings=True, rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645,
    )
    vision = dict(
        model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
        num_attention_heads=16, patch_size=14, image_size=384, vision_use_head=False,
    )
    kwargs = dict(
        text_config=text, vision_config=vision, image_token_index=151646, video_token_index=151647,
        vision_feature_layer=-1, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=ONEVISION_PINPOINTS, tie_word_embeddings=True,
    )
    kwargs.update(overrides)
    return LlavaOnevisionConfig(**kwargs)


TINY_IMAGE_SIZE = 28  # 4 x 4 patches of 7 px: 16 tokens per crop
TINY_PINPOINTS = [[28, 28], [28, 56], [56, 28], [56, 56], [28, 84], [84, 28], [112, 112]]


def tiny_config(num_text_layers: int = 8, num_vision_layers: int = 6, vocab_size: int = 128, **overrides) -> LlavaOnevisionConfig:
    """A LLaVA-OneVision small enough for a unit test: Qwen2 32 x `num_text_layers`, SigLIP 24 x
    `num_vision_layers`, 28 px crops of 7 px patches, pinpoints up to 4 x 4 crops (so anyres_max_9 downsamples)."""
    text = dict(
        model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=num_text_layers,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    vision = dict(
        model_type="siglip_vision_model", hidden_size=24, intermediate_size=48, num_hidden_layers=num_vision_layers,
        num_attention_heads=4, patch_size=7, image_size=TINY_IMAGE_SIZE, vision_use_head=False,
    )
    kwargs = dict(
        text_config=text, vision_config=vision, image_token_index=vocab_size - 1, video_token_index=vocab_size - 2,
        vision_feature_layer=-1, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=TINY_PINPOINTS,
    )
    kwargs.update(overrides)
    return LlavaOnevisionConfig(**kwargs)


def random_inputs(model, height: int, width: int, text_tokens: int = 8, *, grid: bool = True, batch_size: int = 1) -> dict:
    """`batch_size` samples of one `height` x `width` image (random pixels) and `text_tokens` random text tokens,
    laid out as the processor would: two text tokens, the image tokens, the rest of the text.

    `grid=False` gives each image its base crop only (the crop resized to the vision tower's size, then one
    newline token), the layout of a LLaVA-OneVision model trained without grids. transformers takes that path for
    images of multi-image samples (`batch_num_images` != 1), so the inputs carry `batch_num_images` = 2 for every
    sample; the model reads one entry per image, i.e. the first `batch_size` entries, all "no grid".
    """
    if height < 1 or width < 1 or text_tokens < 2 or batch_size < 1:
        raise ValueError(
            f"random_inputs needs height, width, batch_size >= 1 and text_tokens >= 2, got {height} x {width}, "
            f"text_tokens={text_tokens}, batch_size={batch_size}."
        )
    cfg = model.config
    size = cfg.vision_config.image_size
    image_sizes = torch.tensor([[height, width]] * batch_size)
    extra = {} if grid else {"batch_num_images": torch.full((batch_size,), 2)}
    crops = crops_per_image(cfg, image_sizes[:1], extra.get("batch_num_images"))[0]
    pixel_values = torch.randn(batch_size, crops, 3, size, size, dtype=model.dtype, device=model.device)
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values[:1], image_sizes[:1], **{
            k: v[:1] for k, v in extra.items()})
    n_image = len(features.pooler_output[0])
    text = torch.randint(0, min(cfg.text_config.vocab_size, cfg.image_token_id) - 1, (batch_size, text_tokens))
    input_ids = torch.cat([text[:, :2], torch.full((batch_size, n_image), cfg.image_token_id), text[:, 2:]], dim=1)
    return dict(input_ids=input_ids.to(model.device), attention_mask=torch.ones_like(input_ids, device=model.device),
                pixel_values=pixel_values, image_sizes=image_sizes.to(model.device),
                **{k: v.to(model.device) for k, v in extra.items()})
