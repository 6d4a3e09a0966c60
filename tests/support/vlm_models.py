"""Tiny models of the non-LLaVA VLM families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL and its MoE, Qwen3.5, InternVL,
Gemma 3, Mistral3, and LLaVA with a Pixtral tower), batches laid out as their processors lay them out, and an
independent reference of paper Eq. 12-14 for each family, written only from transformers' own modules: plain forward
hooks on the vision layers, then ONE call of the model's own merger / projector per vision layer, and forward
pre-hooks on the decoder layers adding sum_k W_l[k] * V'_k at the image / video positions of the prefill. It shares
no code with the package."""

from __future__ import annotations

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
)
from transformers.vision_utils import get_vision_window_index

VLM_FAMILIES = [
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "qwen3_vl_moe",
    "qwen3_5",
    "internvl",
    "gemma3",
    "mistral3",
    "llava_pixtral",
]
QWEN_FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5"]
DEEPSTACK_FAMILIES = ["qwen3_vl", "qwen3_vl_moe"]
VIDEO_FAMILIES = QWEN_FAMILIES  # the families whose model takes `pixel_values_videos`
CLASSES = {
    "qwen2_vl": (Qwen2VLConfig, Qwen2VLForConditionalGeneration),
    "qwen2_5_vl": (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration),
    "qwen3_vl": (Qwen3VLConfig, Qwen3VLForConditionalGeneration),
    "qwen3_vl_moe": (Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration),
    "qwen3_5": (Qwen3_5Config, Qwen3_5ForConditionalGeneration),
    "internvl": (InternVLConfig, InternVLForConditionalGeneration),
    "gemma3": (Gemma3Config, Gemma3ForConditionalGeneration),
    "mistral3": (Mistral3Config, Mistral3ForConditionalGeneration),
    "llava_pixtral": (LlavaConfig, LlavaForConditionalGeneration),
}

# Tiny sizes. Special tokens sit at the top of the vocabulary (as in the Qwen, InternVL and Gemma checkpoints);
# ordinary text is drawn from 0 .. TEXT_VOCAB - 1.
VOCAB, TEXT_VOCAB = 160, 150
HIDDEN, DECODER_LAYERS, VISION_DEPTH = 32, 8, 6
VISION_START, VISION_END, IMAGE, VIDEO = VOCAB - 5, VOCAB - 4, VOCAB - 2, VOCAB - 1  # Qwen
BOI, EOI = VOCAB - 4, VOCAB - 3  # Gemma 3 <start_of_image> / <end_of_image>; InternVL <img> / </img>
IMG_BREAK, IMG_END = VOCAB - 4, VOCAB - 3  # Pixtral / Mistral3 [IMG_BREAK] / [IMG_END]
QWEN_PATCH, QWEN_TEMPORAL, QWEN_MERGE = 4, 2, 2
INTERNVL_SIZE, GEMMA_SIZE, PIXTRAL_SIZE = 32, 16, 32


def _text(model_type: str, **extra):
    return dict(
        model_type=model_type,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=DECODER_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=512,
        **extra,
    )


def _qwen_vision(**extra):
    return dict(
        depth=VISION_DEPTH,
        hidden_size=24,
        intermediate_size=48,
        num_heads=3,  # head dim 8: the 2D vision rope needs a multiple of 4
        in_channels=3,
        patch_size=QWEN_PATCH,
        temporal_patch_size=QWEN_TEMPORAL,
        spatial_merge_size=QWEN_MERGE,
        out_hidden_size=HIDDEN,
        **extra,
    )


def _qwen_ids():
    return dict(
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END
    )


def vlm_config(family: str, **overrides):
    """Written here, not taken from the package: each family's published layout at a tiny size (text hidden 32,
    8 decoder layers, 4 heads, 2 kv heads; vision hidden 24, 6 vision layers). `overrides` go to the top config;
    `vision_overrides` / `text_overrides` (dicts) to the sub-configs."""
    vision_overrides = overrides.pop("vision_overrides", {})
    text_overrides = overrides.pop("text_overrides", {})
    # head dim 8 -> 4 rotary frequencies split over (t, h, w)
    mrope = dict(rope_type="default", rope_theta=1_000_000.0, mrope_section=[2, 1, 1])
    if family == "qwen2_vl":
        # Qwen2-VL's vision config: embed_dim is the tower width, hidden_size the LLM width the merger writes
        vision = dict(
            depth=VISION_DEPTH,
            embed_dim=24,
            hidden_size=HIDDEN,
            num_heads=3,
            mlp_ratio=2,
            in_channels=3,
            patch_size=QWEN_PATCH,
            temporal_patch_size=QWEN_TEMPORAL,
            spatial_merge_size=QWEN_MERGE,
        )
        kwargs = dict(text_config=_text("qwen2_vl_text", rope_parameters=mrope), vision_config=vision, **_qwen_ids())
    elif family == "qwen2_5_vl":
        # window 16 px = 2 x 2 merged tokens per window, so an 8 x 12 patch image has 6 windows and the tower runs
        # its blocks in window order; full attention in the last block of each half (published: 7, 15, 23, 31)
        vision = _qwen_vision(window_size=16, fullatt_block_indexes=[2, 5], tokens_per_second=2, hidden_act="silu")
        kwargs = dict(text_config=_text("qwen2_5_vl_text", rope_parameters=mrope), vision_config=vision, **_qwen_ids())
    elif family in ("qwen3_vl", "qwen3_vl_moe"):
        vision = _qwen_vision(num_position_embeddings=16, deepstack_visual_indexes=[1, 3])
        rope = dict(mrope, mrope_interleaved=True, rope_theta=5_000_000.0)
        text = _text(f"{family}_text", head_dim=8, rope_parameters=rope, rms_norm_eps=1e-6)
        if family == "qwen3_vl_moe":
            text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, decoder_sparse_step=1)
        kwargs = dict(text_config=text, vision_config=vision, **_qwen_ids())
    elif family == "qwen3_5":
        vision = _qwen_vision(num_position_embeddings=16)
        # published: head_dim 256 with partial rotary 0.25 (64 rotary dims); here head_dim 32 -> 8 rotary dims
        rope = dict(mrope, mrope_interleaved=True, rope_theta=10_000_000.0, partial_rotary_factor=0.25)
        text = _text(
            "qwen3_5_text",
            head_dim=32,
            rope_parameters=rope,
            linear_conv_kernel_dim=4,
            linear_key_head_dim=8,
            linear_value_head_dim=8,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
        )
        kwargs = dict(text_config=text, vision_config=vision, **_qwen_ids())
    elif family == "internvl":
        vision = dict(
            model_type="internvl_vision",
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=VISION_DEPTH,
            num_attention_heads=4,
            image_size=INTERNVL_SIZE,
            patch_size=4,
            use_mean_pooling=True,
            layer_scale_init_value=0.1,
        )
        kwargs = dict(
            text_config=_text("qwen2", tie_word_embeddings=True),
            vision_config=vision,
            image_token_id=IMAGE,
            image_seq_length=(INTERNVL_SIZE // 4 // 2) ** 2,
            downsample_ratio=0.5,
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
        )
    elif family == "gemma3":
        vision = dict(
            model_type="siglip_vision_model",
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=VISION_DEPTH,
            num_attention_heads=4,
            image_size=GEMMA_SIZE,
            patch_size=4,
            vision_use_head=False,
        )
        text = _text(
            "gemma3_text",
            head_dim=8,
            query_pre_attn_scalar=8,
            sliding_window=16,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
        )
        text.pop("model_type")
        kwargs = dict(
            text_config=text,
            vision_config=vision,
            mm_tokens_per_image=4,
            boi_token_index=BOI,
            eoi_token_index=EOI,
            image_token_index=IMAGE,
        )
    elif family in ("mistral3", "llava_pixtral"):
        vision = dict(
            model_type="pixtral",
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=VISION_DEPTH,
            num_attention_heads=3,
            head_dim=8,
            image_size=PIXTRAL_SIZE,
            patch_size=4,
            hidden_act="gelu",
        )
        text = _text("mistral", head_dim=8, sliding_window=None, tie_word_embeddings=False)
        kwargs = dict(
            text_config=text,
            vision_config=vision,
            image_token_index=IMAGE,
            vision_feature_layer=-1,
            projector_hidden_act="gelu",
        )
        if family == "mistral3":
            kwargs.update(spatial_merge_size=2, multimodal_projector_bias=False)
        else:
            kwargs.update(vision_feature_select_strategy="full", multimodal_projector_bias=True)
    else:
        raise KeyError(family)
    if family in QWEN_FAMILIES:  # <|endoftext|>, <|im_end|>: in the vocabulary too
        kwargs["text_config"].update(bos_token_id=VOCAB - 7, eos_token_id=VOCAB - 6)
    kwargs["vision_config"].update(vision_overrides)
    kwargs["text_config"].update(text_overrides)
    kwargs.update(overrides)
    return CLASSES[family][0](**kwargs)


def vlm_model(family: str, seed: int = 0, attn_implementation: str = "eager", **overrides):
    torch.manual_seed(seed)
    config = vlm_config(family, **overrides)
    config._attn_implementation = attn_implementation
    for sub in (config.text_config, config.vision_config):
        sub._attn_implementation = attn_implementation
    model = CLASSES[family][1](config)
    if family == "gemma3":
        # Gemma 3 initialises its projection matrix to zero, which would make every image token zero
        g = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            weight = model.model.multi_modal_projector.mm_input_projection_weight
            weight.copy_(torch.randn(weight.shape, generator=g) * 0.3)
    return model.eval()


def family_of(model) -> str:
    cfg = model.config
    if cfg.model_type == "llava":
        assert cfg.vision_config.model_type == "pixtral"
        return "llava_pixtral"
    return cfg.model_type


def inner_of(model):
    return model.model


def language_model_of(model):
    return model.model.language_model


def feature_layer(model) -> int:
    """The `hidden_states` index (1-based) of the vision layer whose output feeds the LLM."""
    family, cfg = family_of(model), model.config
    if family in QWEN_FAMILIES:
        return cfg.vision_config.depth  # the merger reads the last block
    if family == "gemma3":
        return cfg.vision_config.num_hidden_layers  # last_hidden_state
    layer = cfg.vision_feature_layer
    n = cfg.vision_config.num_hidden_layers
    return layer if layer >= 0 else n + 1 + layer


def vision_layer_modules(model):
    """The vision layers in 0-based module order: `hidden_states[k]` is the output of module k - 1."""
    family, inner = family_of(model), inner_of(model)
    if family in QWEN_FAMILIES:
        return list(inner.visual.blocks)
    if family == "internvl":
        return list(inner.vision_tower.encoder.layer)
    if family == "gemma3":
        return list(_siglip(inner).encoder.layers)
    return list(inner.vision_tower.transformer.layers)  # pixtral


def _siglip(inner):
    """Gemma 3's SigLIP tower: `vision_tower.vision_model` in older transformers, the tower itself in 5.x."""
    return getattr(inner.vision_tower, "vision_model", inner.vision_tower)


# ---- batches -------------------------------------------------------------------------------------------------
# Per sample: "images": list of image specs and/or "video": a video spec. Image specs by family:
#   Qwen: (h_patches, w_patches) (multiples of the merge size); video: (frames_t, h_patches, w_patches) with t the
#         temporal-patch count (raw frames = t * temporal_patch_size)
#   InternVL: number of tiles; Gemma 3: number of images (1 = no Pan & Scan, 1 + c = original + c crops);
#   Mistral3 / Pixtral: (height, width) in pixels.
DEFAULT_SAMPLES = {
    "qwen": [{"images": [(8, 12)], "video": (2, 4, 4)}, {"images": [(4, 4)]}, {"video": (2, 4, 6)}],
    "internvl": [{"images": [2]}, {"images": [1]}],
    "gemma3": [{"images": [3]}, {"images": [1]}],
    "pixtral": [{"images": [(32, 24)]}, {"images": [(16, 32), (8, 16)]}],
}


def default_samples(family: str):
    if family in QWEN_FAMILIES:
        return DEFAULT_SAMPLES["qwen"]
    if family in ("mistral3", "llava_pixtral"):
        return DEFAULT_SAMPLES["pixtral"]
    return DEFAULT_SAMPLES[family]


def image_only_samples(family: str):
    return [{"images": s["images"]} for s in default_samples(family) if s.get("images")]


def _qwen_pixels(grids, g):
    row = 3 * QWEN_TEMPORAL * QWEN_PATCH * QWEN_PATCH
    total = sum(t * h * w for t, h, w in grids)
    return torch.randn(total, row, generator=g)


def build_vlm_batch(model, samples=None, seed: int = 1, left_pad: bool = True):
    """A batch laid out as the family's processor lays it out: text around the media (lengths varying per sample),
    the family's media wrapper tokens, left padding with `attention_mask`. Token counts follow the processors'
    formulas (checked against the model's own encoders by `test_reference_feature_layer_matches_model_image_features`
    and by every forward, which refuses a count mismatch)."""
    family, cfg = family_of(model), model.config
    samples = default_samples(family) if samples is None else samples
    g = torch.Generator().manual_seed(seed)

    def text(n):
        return torch.randint(0, TEXT_VOCAB, (n,), generator=g).tolist()

    rows = []
    image_grids, video_grids, sizes, images = [], [], [], 0
    for b, sample in enumerate(samples):
        ids = text(2 + b)
        for spec in sample.get("images", []):
            if family in QWEN_FAMILIES:
                h, w = spec
                image_grids.append((1, h, w))
                media = [VISION_START] + [IMAGE] * (h * w // QWEN_MERGE**2) + [VISION_END]
            elif family == "internvl":
                images += spec
                media = [BOI] + [IMAGE] * (cfg.image_seq_length * spec) + [EOI]
            elif family == "gemma3":
                media = []
                for c in range(spec):  # "Here is the original image ... and here are some crops ..."
                    images += 1
                    media += text(3 if c < 2 else 1) + [BOI] + [IMAGE] * cfg.mm_tokens_per_image + [EOI]
            else:  # pixtral tower: a row of [IMG] per (merged) patch row, [IMG_BREAK] after each, [IMG_END] last
                height, width = spec
                sizes.append((height, width))
                step = cfg.vision_config.patch_size * (cfg.spatial_merge_size if family == "mistral3" else 1)
                h, w = height // step, width // step
                media = []
                for r in range(h):
                    media += [IMAGE] * w + [IMG_BREAK if r < h - 1 else IMG_END]
            ids += media + text(1)
        if sample.get("video"):
            t, h, w = sample["video"]
            video_grids.append((t, h, w))
            per_frame = h * w // QWEN_MERGE**2
            if family in ("qwen3_vl", "qwen3_vl_moe", "qwen3_5"):
                # Qwen3-VL's processor: "<0.5 seconds>" + <|vision_start|> frame <|vision_end|> per temporal patch
                media = []
                for _ in range(t):
                    media += text(2) + [VISION_START] + [VIDEO] * per_frame + [VISION_END]
            else:
                media = [VISION_START] + [VIDEO] * (t * per_frame) + [VISION_END]
            ids += media + text(1)
        ids += text(3 + 2 * b)
        rows.append(ids)
    length = max(len(r) for r in rows)
    input_ids = torch.zeros(len(rows), length, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
    for b, r in enumerate(rows):
        span = slice(length - len(r), length) if left_pad else slice(0, len(r))
        input_ids[b, span] = torch.tensor(r)
        attention_mask[b, span] = 1
    if family == "gemma3":
        input_ids[attention_mask == 0] = cfg.text_config.pad_token_id
    batch = dict(input_ids=input_ids, attention_mask=attention_mask)

    if family in QWEN_FAMILIES:
        mm = torch.zeros_like(input_ids, dtype=torch.int)
        mm[input_ids == IMAGE] = 1
        mm[input_ids == VIDEO] = 2
        mm[attention_mask == 0] = 0
        batch["mm_token_type_ids"] = mm
        if image_grids:
            batch["pixel_values"] = _qwen_pixels(image_grids, g)
            batch["image_grid_thw"] = torch.tensor(image_grids)
        if video_grids:
            batch["pixel_values_videos"] = _qwen_pixels(video_grids, g)
            batch["video_grid_thw"] = torch.tensor(video_grids)
            if family == "qwen2_5_vl":
                batch["second_per_grid_ts"] = torch.tensor([1.0] * len(video_grids))
    elif family == "internvl":
        batch["pixel_values"] = torch.randn(images, 3, INTERNVL_SIZE, INTERNVL_SIZE, generator=g)
    elif family == "gemma3":
        batch["pixel_values"] = torch.randn(images, 3, GEMMA_SIZE, GEMMA_SIZE, generator=g)
        batch["token_type_ids"] = (input_ids == IMAGE).long()
    else:
        # padded to the largest image; the tower cuts each back to its size
        height = max(h for h, _ in sizes)
        width = max(w for _, w in sizes)
        pixels = torch.zeros(len(sizes), 3, height, width)
        for i, (h, w) in enumerate(sizes):
            pixels[i, :, :h, :w] = torch.randn(3, h, w, generator=g)
        batch["pixel_values"] = pixels
        batch["image_sizes"] = torch.tensor(sizes)
    return batch


# ---- the model's own image features ---------------------------------------------------------------------------
def model_image_features(model, batch, modality: str = "image") -> torch.Tensor:
    """The base model's own features for every image (video) token, in placeholder order: its
    `get_image_features(...).pooler_output` (`get_video_features` for videos), concatenated."""
    family, inner, cfg = family_of(model), inner_of(model), model.config
    with torch.no_grad():
        if family in QWEN_FAMILIES:
            if modality == "video":
                out = inner.get_video_features(batch["pixel_values_videos"], batch["video_grid_thw"])
            else:
                out = inner.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
            return torch.cat(out.pooler_output)
        assert modality == "image"
        if family == "internvl":
            out = inner.get_image_features(
                batch["pixel_values"],
                vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy,
            )
            return out.pooler_output.reshape(-1, out.pooler_output.shape[-1])
        if family == "gemma3":
            out = inner.get_image_features(batch["pixel_values"]).pooler_output
            return out.reshape(-1, out.shape[-1])
        if family == "mistral3":
            out = inner.get_image_features(
                batch["pixel_values"], batch["image_sizes"], vision_feature_layer=cfg.vision_feature_layer
            )
            return torch.cat(out.pooler_output)
        out = inner.get_image_features(
            batch["pixel_values"],
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
            image_sizes=batch["image_sizes"],
        )
        return torch.cat(list(out.pooler_output))


# ---- the reference -------------------------------------------------------------------------------------------
def _layer_states(model, run):
    """{k: output of vision module k - 1} for every vision layer, from plain forward hooks, while `run()` runs."""
    states, handles = {}, []
    for i, module in enumerate(vision_layer_modules(model)):

        def hook(module, args, output, k=i + 1):
            states[k] = output[0] if isinstance(output, tuple) else output

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return states


def _qwen_rows(model, pixels, grid, vision_layers):
    visual = inner_of(model).visual
    states = _layer_states(model, lambda: visual(pixels, grid_thw=grid))
    out = {}
    with torch.no_grad():
        for k in vision_layers:
            merged = visual.merger(states[k])  # NOT the deepstack mergers
            if family_of(model) == "qwen2_5_vl":
                # the blocks run in window order; the model un-permutes its merged last layer exactly so
                cfg = model.config.vision_config
                window_index, _ = get_vision_window_index(
                    grid,
                    spatial_merge_size=cfg.spatial_merge_size,
                    window_size=cfg.window_size,
                    patch_size=cfg.patch_size,
                )
                merged = merged[torch.argsort(window_index)]
            out[k] = merged
    return out


def vlm_reference_rows(model, batch, vision_layers, layernorm_all_layers: bool = True):
    """{k: V'_k for every image token, in placeholder order}: the vision layers from forward hooks, each brought
    through the model's own merger / projector in one call.

    InternVL: when the tower's final `layernorm` is not Identity (use_mean_pooling=False) and the feature layer is
    the last (vision_feature_layer=-1), the model's own image tokens go through it; `layernorm_all_layers` says
    whether the other layers do too (as Gemma 3's post_layernorm: True) or go raw (False)."""
    family, inner, cfg = family_of(model), inner_of(model), model.config
    hidden = cfg.text_config.hidden_size
    out = {}
    if family in QWEN_FAMILIES:
        return _qwen_rows(model, batch["pixel_values"], batch["image_grid_thw"], vision_layers)
    pixels = batch["pixel_values"]
    if family == "internvl":
        tower = inner.vision_tower
        states = _layer_states(model, lambda: tower(pixel_values=pixels))
        f = feature_layer(model)
        with torch.no_grad():
            for k in vision_layers:
                x = states[k]
                if cfg.vision_feature_layer == -1 and (k == f or layernorm_all_layers):
                    x = tower.layernorm(x)
                if cfg.vision_feature_select_strategy == "default":
                    x = x[:, 1:]
                n, tokens, d = x.shape
                side = int(tokens**0.5)
                x = inner.pixel_shuffle(x.reshape(n, side, side, d), scale_factor=cfg.downsample_ratio)
                x = inner.multi_modal_projector(x.reshape(n, -1, x.shape[-1]))
                out[k] = x.reshape(-1, hidden)
        return out
    if family == "gemma3":
        vision_model = _siglip(inner)
        states = _layer_states(model, lambda: inner.vision_tower(pixel_values=pixels))
        with torch.no_grad():
            for k in vision_layers:
                x = inner.multi_modal_projector(vision_model.post_layernorm(states[k]))
                out[k] = x.reshape(-1, hidden)
        return out
    sizes = batch["image_sizes"]
    states = _layer_states(model, lambda: inner.vision_tower(pixels, image_sizes=sizes))
    with torch.no_grad():
        for k in vision_layers:
            if family == "mistral3":
                out[k] = inner.multi_modal_projector(states[k].squeeze(0), sizes).reshape(-1, hidden)
            else:  # llava + pixtral: one packed sequence of every image's patches
                out[k] = inner.multi_modal_projector(states[k]).reshape(-1, hidden)
    return out


def vlm_reference_video_rows(model, batch, vision_layers):
    """{k: V'_k for every video token, in placeholder order} (Qwen families)."""
    return _qwen_rows(model, batch["pixel_values_videos"], batch["video_grid_thw"], vision_layers)


def add_vlm_reference_hooks(model, batch, weights, vision_layers, videos: bool = True, **reference_kwargs):
    """Forward pre-hooks on the base model's decoder layers adding sum_k W_l[k] * V'_k at the image (and video)
    positions of a prefill. `weights[l]` is `(len(vision_layers), hidden)`. Returns the hook handles."""
    parts = []
    if "pixel_values" in batch:
        parts.append((IMAGE, vlm_reference_rows(model, batch, vision_layers, **reference_kwargs)))
    if videos and "pixel_values_videos" in batch:
        parts.append((VIDEO, vlm_reference_video_rows(model, batch, vision_layers)))
    seq = batch["input_ids"].shape[1]
    handles = []
    for layer, w in weights.items():
        terms = []
        for token, rows in parts:
            stacked = torch.stack([rows[k] for k in vision_layers])
            positions = (batch["input_ids"] == token).flatten().nonzero().squeeze(1)
            assert positions.numel() == stacked.shape[1], "placeholders and reference rows disagree"
            terms.append((positions, (w[:, None, :] * stacked).sum(0)))

        def hook(module, args, kwargs, terms=terms):
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.shape[1] != seq:  # decode steps carry no media tokens
                return None
            flat = hidden.reshape(-1, hidden.shape[-1]).clone()
            for positions, term in terms:
                flat[positions] += term.to(flat.dtype)
            hidden = flat.view_as(hidden)
            if args:
                return (hidden,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        handles.append(language_model_of(model).layers[layer].register_forward_pre_hook(hook, with_kwargs=True))
    return handles
