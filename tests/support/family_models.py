"""Tiny models of every LLaVA family, batches laid out as their processors lay them out, and an independent
reference of paper Eq. 12-14 for each family, written from the model's own pieces (vision tower hidden states,
projector, packing, video pooling), one call per vision layer, with plain forward pre-hooks. It shares no code
with the package (which folds the layers into channels and packs them in one call)."""

from __future__ import annotations

import torch
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
)
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

FAMILIES = ["llava", "llava_next", "llava_next_video", "llava_onevision"]
VIDEO_FAMILIES = ["llava_next_video", "llava_onevision"]
CLASSES = {
    "llava": (LlavaConfig, LlavaForConditionalGeneration),
    "llava_next": (LlavaNextConfig, LlavaNextForConditionalGeneration),
    "llava_next_video": (LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration),
    "llava_onevision": (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration),
}
SIZE, VOCAB, FRAMES = 28, 128, 3
PINPOINTS = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]]


def family_config(family: str, **overrides):
    """Written here, not taken from the package: each family's published layout at a tiny size."""
    text = dict(
        model_type={"llava_next": "mistral", "llava_onevision": "qwen2"}.get(family, "llama"),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    siglip = family == "llava_onevision"
    vision = dict(
        model_type="siglip_vision_model" if siglip else "clip_vision_model",
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=6,
        num_attention_heads=4,
        patch_size=7,
        image_size=SIZE,
    )
    vision.update(vision_use_head=False) if siglip else vision.update(projection_dim=16)
    kwargs = dict(
        text_config=text,
        vision_config=vision,
        image_token_index=VOCAB - 1,
        vision_feature_layer=-1 if siglip else -2,
        vision_feature_select_strategy="full" if siglip else "default",
    )
    if family != "llava":
        kwargs["image_grid_pinpoints"] = PINPOINTS + [[112, 112]] if siglip else PINPOINTS
    if family in VIDEO_FAMILIES:
        kwargs["video_token_index"] = VOCAB - 2
    kwargs.update(overrides)
    return CLASSES[family][0](**kwargs)


def family_model(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return CLASSES[family][1](family_config(family, **overrides)).eval()


def crops(model, height: int, width: int) -> int:
    if model.config.model_type == "llava":
        return 1
    return image_size_to_num_patches([height, width], model.config.image_grid_pinpoints, SIZE)


def build_batch(model, samples, seed: int = 1, left_pad: bool = True):
    """`samples`: per sample a dict with "image": (height, width) and/or "video": frames. Text around the media,
    lengths varying per sample, left padded. Token counts come from the base model's own encoders."""
    g = torch.Generator().manual_seed(seed)
    cfg, family = model.config, model.config.model_type
    images = [s["image"] for s in samples if s.get("image")]
    videos = [s["video"] for s in samples if s.get("video")]
    batch, image_counts, video_counts = {}, [], []
    inner = model.model
    with torch.no_grad():
        if images:
            counts = [crops(model, h, w) for h, w in images]
            if family == "llava":
                batch["pixel_values"] = torch.randn(len(images), 3, SIZE, SIZE, generator=g)
            else:
                batch["pixel_values"] = torch.randn(len(images), max(counts), 3, SIZE, SIZE, generator=g)
                batch["image_sizes"] = torch.tensor(images)
            keys = {k: v for k, v in batch.items()}
            image_counts = [len(x) for x in inner.get_image_features(**keys).pooler_output]
        if videos:
            assert len(set(videos)) == 1, "one frame count per batch"
            batch["pixel_values_videos"] = torch.randn(len(videos), videos[0], 3, SIZE, SIZE, generator=g)
            out = inner.get_video_features(batch["pixel_values_videos"]).pooler_output
            video_counts = [x.shape[0] for x in out]
    rows, i, v = [], 0, 0
    for b, sample in enumerate(samples):
        ids = torch.randint(0, VOCAB - 2, (2,), generator=g).tolist()
        if sample.get("image"):
            ids += [cfg.image_token_id] * image_counts[i]
            i += 1
        if sample.get("video"):
            ids += [cfg.video_token_id] * video_counts[v]
            v += 1
        ids += torch.randint(0, VOCAB - 2, (3 + 2 * b,), generator=g).tolist()
        rows.append(ids)
    length = max(len(r) for r in rows)
    input_ids = torch.zeros(len(rows), length, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
    for b, r in enumerate(rows):
        span = slice(length - len(r), length) if left_pad else slice(0, len(r))
        input_ids[b, span] = torch.tensor(r)
        attention_mask[b, span] = 1
    return dict(input_ids=input_ids, attention_mask=attention_mask, **batch)


IMAGES_AND_VIDEOS = [{"image": (40, 80), "video": FRAMES}, {"image": (28, 28), "video": FRAMES}]
IMAGES = [{"image": (40, 80)}, {"image": (28, 28)}]


def default_samples(family: str):
    return IMAGES_AND_VIDEOS if family in VIDEO_FAMILIES else IMAGES


# ---- the reference -------------------------------------------------------------------------------------------
def _states(model, pixels):
    with torch.no_grad():
        return model.model.vision_tower(pixels, output_hidden_states=True).hidden_states


def reference_image_rows(model, batch, vision_layers, manage="both"):
    """{k: V'_k for every image token, in placeholder order}."""
    inner, cfg, family = model.model, model.config, model.config.model_type
    strategy = cfg.vision_feature_select_strategy
    pixels = batch["pixel_values"]
    if family == "llava":
        states = _states(model, pixels)
        out = {}
        for k in vision_layers:
            x = states[k][:, 1:] if strategy == "default" else states[k]
            with torch.no_grad():
                out[k] = inner.multi_modal_projector(x).reshape(-1, cfg.text_config.hidden_size)
        return out
    sizes = batch["image_sizes"]
    per_sample = batch.get("batch_num_images")
    grid = [True] * len(sizes) if per_sample is None else [int(n) == 1 for n in per_sample for _ in range(int(n))]
    counts = [image_size_to_num_patches(s, cfg.image_grid_pinpoints, SIZE) if g else 1 for s, g in zip(sizes, grid)]
    states = _states(model, torch.cat([p[:n] for p, n in zip(pixels, counts)]))
    mask = torch.tensor(
        [1.0 if manage == "both" or (manage == "base") == (c == 0) else 0.0 for n in counts for c in range(n)]
    )[:, None, None]
    out = {}
    for k in vision_layers:
        x = states[k][:, 1:] if strategy == "default" else states[k]
        with torch.no_grad():
            p = inner.multi_modal_projector(x) * mask
        zero = torch.zeros(p.shape[-1])
        if family == "llava_onevision":
            packed, _ = inner.pack_image_features(
                list(torch.split(p, counts)), sizes, image_newline=zero, vision_aspect_ratio=cfg.vision_aspect_ratio
            )
        else:
            packed, _ = inner.pack_image_features(list(torch.split(p, counts)), sizes, strategy, image_newline=zero)
        out[k] = torch.cat(packed)
    return out


def reference_video_rows(model, batch, vision_layers):
    """{k: V'_k for every video token}: each layer through the model's own pooling, as it pools its feature layer."""
    inner, cfg, family = model.model, model.config, model.config.model_type
    videos = batch["pixel_values_videos"]
    num_videos, frames = videos.shape[:2]
    states = _states(model, videos.flatten(0, 1))
    hidden = cfg.text_config.hidden_size
    out = {}
    for k in vision_layers:
        x = states[k][:, 1:] if cfg.vision_feature_select_strategy == "default" else states[k]
        with torch.no_grad():
            if family == "llava_next_video":
                rows = inner.multi_modal_projector(inner.vision_resampler(x)).reshape(-1, hidden)
            else:
                pooled = inner.apply_pooling(inner.multi_modal_projector(x)).reshape(num_videos, -1, hidden)
                rows = torch.cat([torch.cat([video, torch.zeros(1, hidden)]) for video in pooled])
        out[k] = rows
    return out


def add_reference_hooks(model, batch, weights, vision_layers, manage="both", videos=True):
    """Hooks on the base model's decoder layers adding sum_k W_l[k] * V'_k at the image (and video) positions of
    a prefill. `weights[l]` is `(len(vision_layers), hidden)`. Returns the hook handles."""
    cfg = model.config
    parts = []
    if "pixel_values" in batch:
        parts.append((cfg.image_token_id, reference_image_rows(model, batch, vision_layers, manage)))
    if videos and "pixel_values_videos" in batch:
        parts.append((cfg.video_token_id, reference_video_rows(model, batch, vision_layers)))
    seq = batch["input_ids"].shape[1]
    handles = []
    language_model = model.model.language_model if hasattr(model, "model") else model.language_model
    for layer, w in weights.items():
        terms = []
        for token, rows in parts:
            stacked = torch.stack([rows[k] for k in vision_layers])
            positions = (batch["input_ids"] == token).flatten().nonzero().squeeze(1)
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

        handles.append(language_model.layers[layer].register_forward_pre_hook(hook, with_kwargs=True))
    return handles
