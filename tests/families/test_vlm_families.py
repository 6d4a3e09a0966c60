"""The non-LLaVA VLM families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL and its MoE, Qwen3.5, InternVL, Gemma 3, Mistral3,
LLaVA with a Pixtral tower), on tiny models built in code: the reference and batches against the base models, the
default layout, identity at init, the formula against an independent reference (tests/support/vlm_models.py),
the feature layer reproducing the model's own image tokens, decode steps doing no manager work, and DeepStack."""

from types import SimpleNamespace

import pytest
import torch
from support.helpers import randomize
from support.vlm_models import (
    DEEPSTACK_FAMILIES,
    IMAGE,
    QWEN_FAMILIES,
    VIDEO,
    VLM_FAMILIES,
    add_vlm_reference_hooks,
    build_vlm_batch,
    feature_layer,
    image_only_samples,
    language_model_of,
    model_image_features,
    vision_layer_modules,
    vlm_model,
    vlm_reference_rows,
    vlm_reference_video_rows,
)
from transformers.vision_utils import get_vision_window_index

from llava_manager import ManagerConfig, apply_manager, get_managers
from llava_manager.core.managers import ManagerStack
from llava_manager.families import qwen2_vl as qwen2_vl_family

# Every tiny tower has 6 vision layers and feeds the LLM from the last (Qwen: the merger reads the last block;
# InternVL, Mistral3, Pixtral: vision_feature_layer=-1; Gemma 3: last_hidden_state), so f = 6 and the top half is
# 4, 5, 6. Managers before decoder layers 0 and 4 of 8.
FEATURE_LAYER = 6
DEFAULT_VISION_LAYERS = (4, 5, 6)


def _remove(handles):
    for h in handles:
        h.remove()


def _capture_layer_input(model, layer: int):
    """The residual stream entering decoder layer `layer` (the input of its `input_layernorm`), at the prefill.
    Works whether managers add through a pre-hook on the layer or inside a wrapper."""
    seen = []

    def hook(module, args):
        if not seen:
            seen.append(args[0].detach().clone())

    handle = language_model_of(model).layers[layer].input_layernorm.register_forward_pre_hook(hook)
    return seen, handle


def _media_mask(batch):
    return (batch["input_ids"] == IMAGE) | (batch["input_ids"] == VIDEO)


# ---- the reference and batches against the base models (no package code) -------------------------------------
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_reference_feature_layer_matches_model_image_features(family):
    """The reference brings the feature layer through the model's own merger / projector exactly as the model
    does: bit for bit its `get_image_features(...).pooler_output` (and `get_video_features` for videos); and the
    batch has one placeholder per image (video) token, so the base model runs on it."""
    model = vlm_model(family)
    batch = build_vlm_batch(model)
    f = feature_layer(model)
    assert f == FEATURE_LAYER == len(vision_layer_modules(model))
    rows = vlm_reference_rows(model, batch, [f])[f]
    own = own_images = model_image_features(model, batch)
    assert rows.shape == own.shape and torch.equal(rows, own)
    assert rows.shape[0] == int((batch["input_ids"] == IMAGE).sum())
    if "pixel_values_videos" in batch:
        rows = vlm_reference_video_rows(model, batch, [f])[f]
        own = model_image_features(model, batch, "video")
        assert torch.equal(rows, own) and rows.shape[0] == int((batch["input_ids"] == VIDEO).sum())
    # every layer has rows of the same layout, and they differ from layer to layer
    every = vlm_reference_rows(model, batch, range(1, f + 1))
    assert sorted(every) == list(range(1, f + 1)) and all(x.shape == own_images.shape for x in every.values())
    assert not torch.allclose(every[f - 1], every[f])
    with torch.no_grad():
        model(**batch)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_reference_hooks_one_hot_reproduce_own_tokens(family):
    """The reference hooks themselves: W = ones for the feature layer before decoder layer 0 doubles the image
    (and video) tokens entering it, and leaves every other position alone."""
    model = vlm_model(family)
    batch = build_vlm_batch(model)
    seen_base, handle = _capture_layer_input(model, 0)
    with torch.no_grad():
        model(**batch)
    handle.remove()
    weights = {0: torch.ones(1, model.config.text_config.hidden_size)}
    handles = add_vlm_reference_hooks(model, batch, weights, [FEATURE_LAYER])
    seen, handle = _capture_layer_input(model, 0)
    with torch.no_grad():
        model(**batch)
    _remove(handles + [handle])
    mask = _media_mask(batch)
    torch.testing.assert_close(seen[0][mask], 2 * seen_base[0][mask], rtol=0, atol=0)
    assert torch.equal(seen[0][~mask], seen_base[0][~mask])


def test_qwen2_5_windows_reorder_tokens():
    """The tiny Qwen2.5-VL batch really exercises window attention: the window order is not the raster order."""
    model = vlm_model("qwen2_5_vl")
    batch = build_vlm_batch(model)
    cfg = model.config.vision_config
    window_index, cu = get_vision_window_index(
        batch["image_grid_thw"],
        spatial_merge_size=cfg.spatial_merge_size,
        window_size=cfg.window_size,
        patch_size=cfg.patch_size,
    )
    assert not torch.equal(window_index, torch.arange(len(window_index)))
    assert len(cu) > 3 and 0 < min(cfg.fullatt_block_indexes) and max(cfg.fullatt_block_indexes) == cfg.depth - 1


@pytest.mark.parametrize("mean_pooling", [True, False], ids=["mean-pooling", "layernorm"])
def test_internvl_mean_pooling_variants(mean_pooling):
    model = vlm_model("internvl", vision_overrides=dict(use_mean_pooling=mean_pooling))
    assert isinstance(model.model.vision_tower.layernorm, torch.nn.Identity) == mean_pooling
    batch = build_vlm_batch(model)
    rows = vlm_reference_rows(model, batch, [FEATURE_LAYER])[FEATURE_LAYER]
    assert torch.equal(rows, model_image_features(model, batch))
    with torch.no_grad():
        model(**batch)


# ---- the package ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_default_layout(family):
    model = apply_manager(vlm_model(family))
    managers = get_managers(model)
    assert [m.layer_idx for m in managers] == [0, 4]
    assert all(tuple(m.vision_layers) == DEFAULT_VISION_LAYERS for m in managers)
    assert ManagerConfig().resolve_vision_layers(FEATURE_LAYER) == DEFAULT_VISION_LAYERS


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_identity_at_init_bit_for_bit(family, train):
    """Also covers DeepStack (Qwen3-VL): with managers on, the model's own deepstack features are still injected."""
    model = vlm_model(family)
    batch = build_vlm_batch(model)
    model.train(train)
    torch.manual_seed(0)
    base = model(**batch, output_hidden_states=True)
    apply_manager(model)
    torch.manual_seed(0)
    patched = model(**batch, output_hidden_states=True)
    assert torch.equal(base.logits, patched.logits)
    assert len(base.hidden_states) == len(patched.hidden_states) == model.config.text_config.num_hidden_layers + 1
    for a, b in zip(base.hidden_states, patched.hidden_states, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_identity_at_init_generate_greedy_and_beam(family):
    model = vlm_model(family)
    batch = build_vlm_batch(model)
    greedy = model.generate(**batch, max_new_tokens=5, do_sample=False)
    beam = model.generate(**batch, max_new_tokens=5, do_sample=False, num_beams=3, num_return_sequences=2)
    apply_manager(model)
    assert torch.equal(greedy, model.generate(**batch, max_new_tokens=5, do_sample=False))
    assert torch.equal(
        beam, model.generate(**batch, max_new_tokens=5, do_sample=False, num_beams=3, num_return_sequences=2)
    )


CONFIGS = {
    "default": ManagerConfig(),
    "explicit": ManagerConfig(inject_layers=[1, 6], vision_layers=[1, 3]),
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_formula_matches_independent_reference(family, config):
    """Random manager weights: the managers change the logits, and exactly by sum_k W_l[k] V'_k at the image and
    video tokens (Qwen: a batch with two image sizes, a video, an image+video sample and a video-only sample)."""
    model = vlm_model(family)
    batch = build_vlm_batch(model)
    apply_manager(model, config)
    weights = randomize(model)
    vision_layers = tuple(get_managers(model)[0].vision_layers)
    with torch.no_grad():
        patched = model(**batch).logits
    reference = vlm_model(family)
    with torch.no_grad():
        base = reference(**batch).logits
    handles = add_vlm_reference_hooks(reference, batch, weights, vision_layers)
    with torch.no_grad():
        expected = reference(**batch).logits
    _remove(handles)
    assert not torch.allclose(patched, base, atol=1e-3)  # the managers do something
    torch.testing.assert_close(patched, expected, rtol=1e-5, atol=1e-5)


# A merged row of the tiny Qwen models in the merger's widest buffer: 2 x 2 patches of 32 channels, fp32.
TINY_MERGED_ROW_BYTES = 4 * 32 * 4


@pytest.mark.parametrize("max_rows", [0, 40])
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_merger_calls_of_any_height_give_the_reference(family, max_rows, monkeypatch):
    """The aggregated layers go through the merger stacked, up to `MAX_CALL_BYTES` of its widest buffer a call. One
    layer a call (a budget of 0), and calls of two layers then one (40 merged rows' bytes: the batch's videos have 20
    merged rows a layer, its images 28), give the independent reference's logits, as all layers in one call (the
    default, for a batch this small) do."""
    monkeypatch.setattr(qwen2_vl_family, "MAX_CALL_BYTES", max_rows * TINY_MERGED_ROW_BYTES)
    test_formula_matches_independent_reference(family, ManagerConfig())


@pytest.mark.parametrize(
    ("max_rows", "calls"),
    [
        (0, [1, 1, 1]),  # one layer a call
        (28, [2, 1]),  # the videos' 14 merged rows a layer: two layers, then the third
        (42, [3]),
        (None, [3]),  # the default budget holds the whole tiny batch
    ],
)
def test_qwen_merger_call_heights_follow_the_byte_budget(max_rows, calls, monkeypatch):
    """The merger's input heights of the managers' calls for a batch of two videos (14 merged rows a layer, 3
    aggregated layers), in layers a call; the model's own call on the last block comes first."""
    if max_rows is not None:
        monkeypatch.setattr(qwen2_vl_family, "MAX_CALL_BYTES", max_rows * TINY_MERGED_ROW_BYTES)
    model = apply_manager(vlm_model("qwen2_vl"))
    batch = build_vlm_batch(model, [{"video": (2, 4, 4)}, {"video": (1, 6, 4)}])
    heights = []
    handle = model.model.visual.merger.register_forward_pre_hook(lambda module, args: heights.append(len(args[0])))
    with torch.no_grad():
        model(**batch)
    handle.remove()
    rows = int(batch["video_grid_thw"].prod(-1).sum())  # input rows a layer: the videos' patches
    assert rows == 14 * 4
    assert heights == [rows] + [rows * layers for layers in calls]


@pytest.mark.parametrize(
    ("vision_width", "text_width", "dtype", "expected"),
    [
        (1280, 3584, torch.float32, 4 * 1280 * 4),  # Qwen2.5-VL-7B: the 2 x 2 patches are the widest
        (1280, 3584, torch.bfloat16, 4 * 1280 * 2),
        (1280, 8192, torch.bfloat16, 8192 * 2),  # Qwen2.5-VL-72B: its output in the LLM's width is
    ],
)
def test_merged_row_bytes_take_the_widest_buffer(vision_width, text_width, dtype, expected):
    """A merged row's bytes in the merger's widest buffer, which sets how many layers share a call: its 2 x 2 input
    patches (the MLP's hidden width is the same) or its output in the LLM's width, in the layers' dtype."""
    inner = SimpleNamespace(
        visual=SimpleNamespace(spatial_merge_size=2),
        config=SimpleNamespace(text_config=SimpleNamespace(hidden_size=text_width)),
    )
    assert qwen2_vl_family.merged_row_bytes(inner, torch.empty(0, vision_width, dtype=dtype)) == expected


def test_internvl_layernorm_tower_formula():
    """InternVL with use_mean_pooling=False: the tower's final layernorm feeds the LLM (vision_feature_layer=-1);
    every aggregated layer goes through it, as Gemma 3's post_layernorm does."""
    over = dict(vision_overrides=dict(use_mean_pooling=False))
    model = apply_manager(vlm_model("internvl", **over))
    batch = build_vlm_batch(model)
    weights = randomize(model)
    reference = vlm_model("internvl", **over)
    handles = add_vlm_reference_hooks(reference, batch, weights, get_managers(model)[0].vision_layers)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=1e-5, atol=1e-5)
    _remove(handles)


@pytest.mark.parametrize("family", QWEN_FAMILIES)
@pytest.mark.parametrize("media", ["images", "video"])
def test_image_only_and_video_only_batches(family, media):
    """Qwen3-VL's `get_video_features` calls `get_image_features`: each modality alone still gets its own terms."""
    model = apply_manager(vlm_model(family))
    samples = image_only_samples(family) if media == "images" else [{"video": (2, 4, 4)}, {"video": (1, 6, 4)}]
    batch = build_vlm_batch(model, samples)
    assert ("pixel_values" in batch) == (media == "images") and ("pixel_values_videos" in batch) == (media == "video")
    weights = randomize(model)
    reference = vlm_model(family)
    handles = add_vlm_reference_hooks(reference, batch, weights, get_managers(model)[0].vision_layers)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=1e-5, atol=1e-5)
    _remove(handles)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_generate_matches_the_reference(family):
    model = apply_manager(vlm_model(family))
    batch = build_vlm_batch(model)
    weights = randomize(model)
    reference = vlm_model(family)
    handles = add_vlm_reference_hooks(reference, batch, weights, get_managers(model)[0].vision_layers)
    expected = reference.generate(**batch, max_new_tokens=5, do_sample=False)
    _remove(handles)
    assert torch.equal(model.generate(**batch, max_new_tokens=5, do_sample=False), expected)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_one_hot_feature_layer_reproduces_own_image_tokens(family):
    """With the feature layer alone and W = ones before decoder layer 0 (zero elsewhere), the stream entering layer
    0 at the image (video) tokens is twice the model's own image (video) features: the embedding scatter plus a
    manager term equal to them. Everything else is untouched."""
    model = vlm_model(family)
    batch = build_vlm_batch(model)
    own = model_image_features(model, batch)
    apply_manager(model, vision_layers=[FEATURE_LAYER])
    managers = get_managers(model)
    assert all(tuple(m.vision_layers) == (FEATURE_LAYER,) for m in managers)
    with torch.no_grad():
        for m in managers:
            m.weight.copy_(torch.ones_like(m.weight) if m.layer_idx == 0 else torch.zeros_like(m.weight))
    seen, handle = _capture_layer_input(model, 0)
    with torch.no_grad():
        model(**batch)
    handle.remove()
    stream = seen[0]
    image = batch["input_ids"] == IMAGE
    torch.testing.assert_close(stream[image], 2 * own, rtol=1e-6, atol=1e-6)
    if "pixel_values_videos" in batch:
        own_video = model_image_features(model, batch, "video")
        torch.testing.assert_close(stream[batch["input_ids"] == VIDEO], 2 * own_video, rtol=1e-6, atol=1e-6)
    base = vlm_model(family)
    seen_base, handle = _capture_layer_input(base, 0)
    with torch.no_grad():
        base(**batch)
    handle.remove()
    mask = _media_mask(batch)
    assert torch.equal(stream[~mask], seen_base[0][~mask])
    assert torch.equal(seen_base[0][image], own)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_decode_steps_do_no_manager_work(family, monkeypatch):
    model = apply_manager(vlm_model(family))
    batch = build_vlm_batch(model)
    calls, step = [], [0]
    original = ManagerStack.forward

    def counting(self, grouped, index=None):
        calls.append((step[0], index))
        return original(self, grouped, index)

    def next_step(module, args, kwargs):
        step[0] += 1

    monkeypatch.setattr(ManagerStack, "forward", counting)
    handle = model.register_forward_pre_hook(next_step, with_kwargs=True)
    model.generate(**batch, max_new_tokens=6, do_sample=False)
    handle.remove()
    assert step[0] >= 2  # a prefill and at least one decode step (a random model may hit eos early)
    assert calls and {s for s, _ in calls} == {1}  # only the prefill
    assert {index for _, index in calls} == {None}  # every manager's term from one call per modality


# ---- DeepStack (Qwen3-VL) -------------------------------------------------------------------------------------
def _drop_deepstack(model):
    def hook(module, args, kwargs):
        return args, {**kwargs, "deepstack_visual_embeds": None}

    return language_model_of(model).register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("family", DEEPSTACK_FAMILIES)
def test_deepstack_is_on_and_matters(family):
    """The tiny batch makes DeepStack matter (so identity at init covers "managers keep DeepStack on")."""
    model = vlm_model(family)
    batch = build_vlm_batch(model)
    with torch.no_grad():
        with_deepstack = model(**batch).logits
        handle = _drop_deepstack(model)
        without = model(**batch).logits
        handle.remove()
    assert not torch.allclose(with_deepstack, without, atol=1e-4)


@pytest.mark.parametrize("family", DEEPSTACK_FAMILIES)
def test_deepstack_off_knob(family):
    """`apply_manager(model, deepstack=False)`: at init the logits are a base model's with its deepstack features
    dropped; with random weights, that plus the reference terms."""
    model = vlm_model(family)
    batch = build_vlm_batch(model)
    apply_manager(model, deepstack=False)
    reference = vlm_model(family)
    handle = _drop_deepstack(reference)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reference(**batch).logits)
    weights = randomize(model)
    handles = add_vlm_reference_hooks(reference, batch, weights, get_managers(model)[0].vision_layers)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=1e-5, atol=1e-5)
    _remove(handles + [handle])
