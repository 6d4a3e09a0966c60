"""The model families `apply_manager` supports: one adapter per family, registered in one table.

Adding a family means one adapter file (a `Family` subclass: where the vision layers are, how one layer becomes
image tokens: the first-token drop, the projector or merger, the packing, the video pooling) and one row in
`FAMILIES`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig

from .base import Family, GroupedFeatures, ManagedOutput, count_grouped_rows
from .gemma3 import Gemma3Adapter
from .internvl import InternVLAdapter
from .llava import LlavaAdapter
from .llava_next import LlavaNextAdapter
from .llava_next_video import LlavaNextVideoAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .mistral3 import Mistral3Adapter
from .qwen2_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter
from .qwen3_vl import Qwen3_5Adapter, Qwen3_5MoeAdapter, Qwen3VLAdapter, Qwen3VLMoeAdapter

# The LLaVA family first (the paper's), then the other families.
LLAVA_FAMILIES = ("llava", "llava_next", "llava_next_video", "llava_onevision")
FAMILIES: dict[str, Family] = {
    adapter.name: adapter
    for adapter in (
        LlavaAdapter(),
        LlavaNextAdapter(),
        LlavaNextVideoAdapter(),
        LlavaOnevisionAdapter(),
        Qwen2VLAdapter(),
        Qwen2_5_VLAdapter(),
        Qwen3VLAdapter(),
        Qwen3VLMoeAdapter(),
        Qwen3_5Adapter(),
        Qwen3_5MoeAdapter(),
        InternVLAdapter(),
        Gemma3Adapter(),
        Mistral3Adapter(),
    )
}

__all__ = [
    "FAMILIES",
    "LLAVA_FAMILIES",
    "Family",
    "GroupedFeatures",
    "ManagedOutput",
    "count_grouped_rows",
    "family_of",
    "family_of_config",
    "get_family",
    "random_inputs",
    "supported_classes",
]


def supported_classes() -> list[str]:
    return [cls.__name__ for adapter in FAMILIES.values() for cls in (adapter.model_class, adapter.base_class)]


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"Unknown model family {name!r}; supported: {', '.join(FAMILIES)}.")
    return FAMILIES[name]


def family_of(model: nn.Module) -> tuple[Family, nn.Module]:
    """The adapter of `model`'s family and its bare `...Model`; a model of no known family is refused."""
    for adapter in FAMILIES.values():
        inner = adapter.inner(model)
        if inner is not None:
            return adapter, inner
    if hasattr(model, "peft_config"):
        raise TypeError("apply_manager: call it on the transformers model before get_peft_model, not on a PeftModel.")
    raise TypeError(f"apply_manager supports {', '.join(supported_classes())}; got {type(model).__name__}.")


def family_of_config(config: PretrainedConfig) -> Family:
    """The adapter for a model config (by its `model_type`)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(
            f"config model_type {model_type!r} is not a supported model family; supported: {', '.join(FAMILIES)}."
        )
    return FAMILIES[model_type]


@torch.no_grad()
def random_inputs(
    model: nn.Module,
    height: int = 28,
    width: int = 28,
    text_tokens: int = 8,
    *,
    grid: bool = True,
    batch_size: int = 1,
    video_frames: int = 0,
    images: bool = True,
) -> dict[str, Any]:
    """Random inputs for `model` laid out as its processor lays them out: per sample two text tokens, the image
    tokens of one `height` x `width` image (random pixels), the video tokens of `video_frames` frames when asked,
    then the rest of the text. The token counts come from the model's own encoders.

    `grid=False` (OneVision only) gives each image its base crop only, the path transformers takes for the images
    of multi-image samples; the inputs then carry `batch_num_images` = 2 for every sample.
    """
    if height < 1 or width < 1 or text_tokens < 2 or batch_size < 1 or video_frames < 0:
        raise ValueError(
            f"random_inputs needs height, width, batch_size >= 1, text_tokens >= 2 and video_frames >= 0, got "
            f"{height} x {width}, text_tokens={text_tokens}, batch_size={batch_size}, video_frames={video_frames}."
        )
    adapter, inner = family_of(model)
    cfg, device, dtype = model.config, model.device, model.dtype
    parts, inputs = [], {}
    if images:
        pixels = adapter.pixel_inputs(cfg, height, width, batch_size, grid, dtype, device)
        count = len(inner.get_image_features(**pixels).pooler_output[0])
        parts.append(torch.tensor(adapter.placeholders(cfg, "image", count, pixels)).expand(batch_size, -1))
        inputs.update(pixels)
    if video_frames:
        if not adapter.has_video:
            raise ValueError(f"{adapter.title} takes no videos; video_frames must be 0.")
        videos = adapter.video_inputs(cfg, video_frames, batch_size, dtype, device)
        count = len(inner.get_video_features(**videos).pooler_output[0])
        parts.append(torch.tensor(adapter.placeholders(cfg, "video", count, videos)).expand(batch_size, -1))
        inputs.update(videos)
    special = min(_special_token_ids(cfg))
    text = torch.randint(0, min(cfg.text_config.vocab_size, special) - 1, (batch_size, text_tokens))
    input_ids = torch.cat([text[:, :2], *parts, text[:, 2:]], dim=1).to(device)
    return dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        **adapter.token_inputs(cfg, input_ids),
        **inputs,
    )


def _special_token_ids(config: PretrainedConfig) -> list[int]:
    """The image, video and vision-boundary token ids of `config` (random text stays below all of them)."""
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id", "boi_token_id")
    ids = [getattr(config, name, None) for name in names]
    return [i for i in ids if isinstance(i, int)]
