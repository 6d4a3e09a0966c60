"""Qwen2-VL and Qwen2.5-VL (`Qwen2VLForConditionalGeneration`, `Qwen2_5_VLForConditionalGeneration`): a native-
resolution ViT (`visual.blocks`) over flattened patches described by `image_grid_thw` / `video_grid_thw`, whose
last block feeds the LLM through `visual.merger` (LayerNorm, then an MLP over each 2 x 2 block of patches). Each
aggregated layer goes through the merger on its own (it is not linear). Qwen2.5-VL runs its blocks in window
order and puts the merged tokens back in token order; so is every recorded layer. Videos (`temporal_patch_size` 2)
take the same path; the forward needs `mm_token_type_ids` for its M-RoPE positions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLModel,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLModel,
    Qwen2VLProcessor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.vision_utils import get_vision_window_index

from .base import Family, GroupedFeatures

# Token ids shared by every published Qwen2-VL, Qwen2.5-VL and Qwen3-VL checkpoint (their tokenizer's added tokens).
QWEN_VL_TOKENS = dict(
    vision_start_token_id=151652, vision_end_token_id=151653, image_token_id=151655, video_token_id=151656
)


def qwen2_vl_7b_config(**overrides) -> Qwen2VLConfig:
    """The shape of Qwen/Qwen2-VL-7B-Instruct: ViT 1280 x 32 blocks, Qwen2 3584 x 28 layers (8.29B parameters).
    Its config.json (copies on huggingface.co: Qwen/Qwen2-VL-7B-Instruct-GPTQ-Int8) gives the text fields; its
    `vision_config` names only the patch size and channels, so the tower is `Qwen2VLVisionConfig`'s defaults,
    which is how transformers loads the checkpoint."""
    text = dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        bos_token_id=151643,
        eos_token_id=151645,
        tie_word_embeddings=False,
    )
    vision = dict(
        depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4, num_heads=16, patch_size=14, spatial_merge_size=2
    )
    kwargs = dict(text_config=text, vision_config=vision, tie_word_embeddings=False, **QWEN_VL_TOKENS)
    return Qwen2VLConfig(**{**kwargs, **overrides})


# Qwen2.5-VL's ViT, the same in every size but for the merger's output width.
QWEN2_5_VIT = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
    hidden_act="silu",
)


def qwen2_5_vl_7b_config(**overrides) -> Qwen2_5_VLConfig:
    """The shape of Qwen/Qwen2.5-VL-7B-Instruct: ViT 1280 x 32 blocks (window attention, full attention in blocks
    7, 15, 23, 31), Qwen2 3584 x 28 layers (8.29B parameters). From a verbatim copy of its config.json
    (github.com/Harrison-HXLiu/vlm_api_test, models/Qwen2.5-VL-7B-Instruct/config.json)."""
    text = dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=128000,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        bos_token_id=151643,
        eos_token_id=151645,
        tie_word_embeddings=False,
    )
    vision = dict(QWEN2_5_VIT, out_hidden_size=3584)
    kwargs = dict(text_config=text, vision_config=vision, tie_word_embeddings=False, **QWEN_VL_TOKENS)
    return Qwen2_5_VLConfig(**{**kwargs, **overrides})


def qwen2_5_vl_3b_config(**overrides) -> Qwen2_5_VLConfig:
    """The shape of Qwen/Qwen2.5-VL-3B-Instruct: the same ViT, Qwen2 2048 x 36 layers (3.75B parameters). From a
    verbatim copy of its config.json (github.com/zhanggaojian/Qwen2.5-VL-3B-LLMQ_Samples,
    models/Qwen2.5-VL-3B-Instruct/config.json)."""
    text = dict(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        max_position_embeddings=128000,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        bos_token_id=151643,
        eos_token_id=151645,
        tie_word_embeddings=True,
    )
    vision = dict(QWEN2_5_VIT, out_hidden_size=2048)
    kwargs = dict(text_config=text, vision_config=vision, tie_word_embeddings=True, **QWEN_VL_TOKENS)
    return Qwen2_5_VLConfig(**{**kwargs, **overrides})


def precomputed(call: dict[str, Any], modality: str, name: str) -> Any:
    """A precomputed vision tensor passed to the encoder call (`window_index` or `image_window_index`), if any."""
    extra = call.get("kwargs") or {}
    value = extra.get(f"{modality}_{name}")
    return extra.get(name) if value is None else value


# Bytes of the merger's widest buffer per call when layers are stacked: calls tall enough for an efficient matmul (in
# fp32 a 336 px image's 16 layers of 144 merged rows go in four calls at Qwen2.5-VL-7B's widths), while each call's
# buffers stay small enough for the CPU allocator to serve from memory it already holds. Larger buffers are fresh
# pages on every call: `benchmarks/merger.py` counts the page faults. A long video's layers go one a call, so the
# merger's activations never exceed what the model's own call on one layer needs.
MAX_CALL_BYTES = 16 << 20


def merged_row_bytes(inner: torch.nn.Module, layer: torch.Tensor) -> int:
    """Bytes a merged row takes in the merger's widest buffer: its `spatial_merge_size**2` input rows (the MLP's
    hidden width is the same) or its output in the LLM's width, whichever is wider."""
    visual = inner.visual
    width = max(layer.shape[-1] * visual.spatial_merge_size**2, inner.config.text_config.hidden_size)
    return width * layer.element_size()


def merged_layers(
    inner: torch.nn.Module,
    hidden: Sequence[torch.Tensor],
    grid_thw: torch.Tensor,
    order: torch.Tensor | None = None,
    max_call_bytes: int | None = None,
) -> GroupedFeatures:
    """Each recorded layer through the model's own merger, in token order (`order`), split per image or video. The
    merger works on groups of `spatial_merge_size**2` consecutive rows, so the layers go through it stacked, as many
    in one call as keep its widest buffer within `max_call_bytes` (default `MAX_CALL_BYTES`), and back to token order
    in one gather a call."""
    visual = inner.visual
    sizes = (torch.as_tensor(grid_thw).prod(-1) // visual.spatial_merge_size**2).tolist()
    budget = MAX_CALL_BYTES if max_call_bytes is None else max_call_bytes
    per_call = max(1, budget // max(1, sum(sizes) * merged_row_bytes(inner, hidden[-1])))
    device = hidden[-1].device  # the last block's, where the model's own merger input is (a device map may split)
    grouped = []
    for start in range(0, len(hidden), per_call):
        layers = hidden[start : start + per_call]
        merged = visual.merger(torch.cat([layer.to(device) for layer in layers]))
        merged = merged.view(len(layers), -1, merged.shape[-1])
        if order is not None:
            merged = merged.index_select(1, order.to(merged.device))
        grouped += [list(torch.split(layer, sizes)) for layer in merged]
    return grouped


class QwenVLFamily(Family):
    """What the Qwen-VL families share: flattened patches with grids, the merger, M-RoPE token types."""

    image_processor_class = Qwen2VLImageProcessorPil
    video_processor_class = "Qwen2VLVideoProcessor"  # needs torchvision
    has_video = True
    token_type_key = "mm_token_type_ids"
    image_markers = ("<|vision_start|>", "<|vision_end|>")

    def feature_layer(self, config, num_vision_layers: int) -> int:
        return num_vision_layers  # the merger takes the last block's output

    def projector_modules(self, inner):
        """The merger inside `visual` (and Qwen3-VL's DeepStack mergers), not part of the vision tower's training."""
        deepstack = getattr(inner.visual, "deepstack_merger_list", None)
        return [inner.visual.merger] + ([deepstack] if deepstack is not None else [])

    def grid(self, call: dict[str, Any], modality: str) -> torch.Tensor:
        return call["image_grid_thw" if modality == "image" else "video_grid_thw"]

    def token_order(self, inner, grid_thw: torch.Tensor, call: dict[str, Any], modality: str) -> torch.Tensor | None:
        """Where the blocks run tokens in another order than the merged output's: the permutation back."""
        return None

    def image_features(self, inner, hidden, call, manage) -> GroupedFeatures:
        grid = self.grid(call, "image")
        return merged_layers(inner, hidden, grid, self.token_order(inner, grid, call, "image"))

    def video_features(self, inner, hidden, call) -> GroupedFeatures:
        grid = self.grid(call, "video")
        return merged_layers(inner, hidden, grid, self.token_order(inner, grid, call, "video"))

    # ---- inputs ------------------------------------------------------------------------------------------------
    @staticmethod
    def patch_grid(config, height: int, width: int) -> tuple[int, int]:
        """The patch grid the processor resizes a `height` x `width` image to (multiples of the merge size)."""
        vision = config.vision_config
        unit = vision.patch_size * vision.spatial_merge_size
        return tuple(max(1, round(side / unit)) * vision.spatial_merge_size for side in (height, width))

    @staticmethod
    def patches(config, grids: Sequence[Sequence[int]], dtype, device) -> torch.Tensor:
        vision = config.vision_config
        width = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        count = sum(t * h * w for t, h, w in grids)
        return torch.randn(count, width, dtype=dtype, device=device)

    def pixel_inputs(self, config, height, width, batch_size, grid, dtype, device):
        h, w = self.patch_grid(config, height, width)
        grids = [[1, h, w]] * batch_size
        return {
            "pixel_values": self.patches(config, grids, dtype, device),
            "image_grid_thw": torch.tensor(grids, device=device),
        }

    def video_inputs(self, config, frames, batch_size, dtype, device):
        vision = config.vision_config
        side = 2 * vision.spatial_merge_size
        t = -(-frames // vision.temporal_patch_size)
        grids = [[t, side, side]] * batch_size
        return {
            "pixel_values_videos": self.patches(config, grids, dtype, device),
            "video_grid_thw": torch.tensor(grids, device=device),
        }

    def placeholders(self, config, modality, count, inputs):
        """`<|vision_start|>`, the pad tokens, `<|vision_end|>`, as the Qwen processors write them."""
        pad = getattr(config, f"{modality}_token_id")
        return [config.vision_start_token_id, *[pad] * count, config.vision_end_token_id]

    def token_inputs(self, config, input_ids):
        types = torch.zeros_like(input_ids)
        types[input_ids == config.image_token_id] = 1
        types[input_ids == config.video_token_id] = 2
        return {"mm_token_type_ids": types}


def _tiny_text(num_layers: int, vocab_size: int, **overrides) -> dict[str, Any]:
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
        tie_word_embeddings=False,
        **overrides,
    )


def _tiny_tokens(vocab_size: int) -> dict[str, int]:
    return dict(
        vision_start_token_id=vocab_size - 4,
        vision_end_token_id=vocab_size - 3,
        image_token_id=vocab_size - 2,
        video_token_id=vocab_size - 1,
    )


def qwen2_vl_tiny_config(num_text_layers=8, num_vision_layers=6, vocab_size=128, **overrides) -> Qwen2VLConfig:
    """A Qwen2-VL small enough for a unit test: text 32 x `num_text_layers`, ViT 32 x `num_vision_layers` with
    4 px patches, 2 x 2 merge, temporal patches of 2."""
    vision = dict(
        depth=num_vision_layers,
        embed_dim=32,
        hidden_size=32,
        num_heads=4,
        mlp_ratio=2,
        patch_size=4,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
    )
    kwargs = dict(text_config=_tiny_text(num_text_layers, vocab_size), vision_config=vision, **_tiny_tokens(vocab_size))
    kwargs.update(overrides)
    return Qwen2VLConfig(**kwargs)


def qwen2_5_vl_tiny_config(num_text_layers=8, num_vision_layers=6, vocab_size=128, **overrides) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL small enough for a unit test: window attention over 4 x 4 merged tokens (32 px windows of 4 px
    patches, as the published 112 px windows of 14 px patches), full attention in blocks 2 and 5, so that images
    larger than one window (the embedded default's 40 and 56 px ones) are reordered. Embedded default, held-out
    exact match: 16 px windows (2 x 2 merged tokens) 0.740 / 1.000 on seeds 42 / 1 (seed 42 never answered
    "blue"); 32 px windows 1.000 / 1.000 on seeds 42 / 2."""
    vision = dict(
        depth=num_vision_layers,
        hidden_size=32,
        intermediate_size=64,
        num_heads=4,
        out_hidden_size=32,
        patch_size=4,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=32,
        fullatt_block_indexes=[2, 5],
        in_channels=3,
    )
    kwargs = dict(text_config=_tiny_text(num_text_layers, vocab_size), vision_config=vision, **_tiny_tokens(vocab_size))
    kwargs.update(overrides)
    return Qwen2_5_VLConfig(**kwargs)


class Qwen2VLAdapter(QwenVLFamily):
    name = "qwen2_vl"
    title = "Qwen2-VL"
    model_class = Qwen2VLForConditionalGeneration
    base_class = Qwen2VLModel
    config_class = Qwen2VLConfig
    processor_class = Qwen2VLProcessor
    published = {"Qwen2-VL-7B-Instruct": ("Qwen/Qwen2-VL-7B-Instruct", qwen2_vl_7b_config)}

    def tiny_config(self, **overrides) -> Qwen2VLConfig:
        return qwen2_vl_tiny_config(**overrides)


class Qwen2_5_VLAdapter(QwenVLFamily):
    name = "qwen2_5_vl"
    title = "Qwen2.5-VL"
    model_class = Qwen2_5_VLForConditionalGeneration
    base_class = Qwen2_5_VLModel
    config_class = Qwen2_5_VLConfig
    processor_class = Qwen2_5_VLProcessor
    published = {
        "Qwen2.5-VL-7B-Instruct": ("Qwen/Qwen2.5-VL-7B-Instruct", qwen2_5_vl_7b_config),
        "Qwen2.5-VL-3B-Instruct": ("Qwen/Qwen2.5-VL-3B-Instruct", qwen2_5_vl_3b_config),
    }

    def token_order(self, inner, grid_thw, call, modality):
        window_index = precomputed(call, modality, "window_index")
        if window_index is None:  # computed here, so the call's own precomputed kwargs stay the model's
            visual = inner.visual
            window_index, _ = get_vision_window_index(
                torch.as_tensor(grid_thw), visual.spatial_merge_size, visual.window_size, visual.patch_size
            )
        return torch.argsort(window_index)

    def tiny_config(self, **overrides) -> Qwen2_5_VLConfig:
        return qwen2_5_vl_tiny_config(**overrides)
