"""Every LLaVA family, on a tiny model of that family built in code: identity at init, the formula against an
independent reference, gradients at W = 0, decode steps doing no manager work, persistence, removal, peft LoRA,
torch.compile and bad inputs; images and, for the families that take them, videos."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from support.all_families import ALL_FAMILIES, any_batch, any_model, model_class, reference_hooks
from support.family_models import (
    FAMILIES,
    FRAMES,
    IMAGES,
    VIDEO_FAMILIES,
    add_reference_hooks,
    build_batch,
    default_samples,
    family_model,
)
from support.helpers import randomize

from llava_manager import (
    ManagerConfig,
    apply_manager,
    from_pretrained,
    get_managers,
    has_manager,
    load_manager,
    manager_plan,
    remove_manager,
    save_manager,
)
from llava_manager.core.managers import ManagerStack

# The top half up to the feature layer: CLIP tiny (6 layers, vision_feature_layer=-2 -> f = 5) gives 3, 4, 5;
# SigLIP tiny (-1 -> f = 6) gives 4, 5, 6. Managers before decoder layers 0 and 4 of 8.
DEFAULT_VISION_LAYERS = {
    "llava": (3, 4, 5),
    "llava_next": (3, 4, 5),
    "llava_next_video": (3, 4, 5),
    "llava_onevision": (4, 5, 6),
}


def hook_counts(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("family", FAMILIES)
def test_default_layout(family):
    model = apply_manager(family_model(family))
    managers = get_managers(model)
    assert [m.layer_idx for m in managers] == [0, 4]
    assert all(m.vision_layers == DEFAULT_VISION_LAYERS[family] for m in managers)
    assert manager_plan(model)["family"] == family


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("family", FAMILIES)
def test_identity_at_init_bit_for_bit(family, train):
    model = family_model(family)
    batch = build_batch(model, default_samples(family))
    model.train(train)
    torch.manual_seed(0)
    base = model(**batch, output_hidden_states=True)
    apply_manager(model)
    torch.manual_seed(0)
    patched = model(**batch, output_hidden_states=True)
    assert torch.equal(base.logits, patched.logits)
    for a, b in zip(base.hidden_states, patched.hidden_states, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_at_init_generate_greedy_and_beam(family):
    model = family_model(family)
    batch = build_batch(model, default_samples(family))
    greedy = model.generate(**batch, max_new_tokens=5, do_sample=False)
    beam = model.generate(**batch, max_new_tokens=5, do_sample=False, num_beams=3, num_return_sequences=2)
    apply_manager(model)
    assert torch.equal(greedy, model.generate(**batch, max_new_tokens=5, do_sample=False))
    assert torch.equal(
        beam, model.generate(**batch, max_new_tokens=5, do_sample=False, num_beams=3, num_return_sequences=2)
    )


CONFIGS = {
    "default": ManagerConfig(),
    "interval1-all": ManagerConfig(interval=1, vision_layers="all"),
    "explicit-base": ManagerConfig(inject_layers=[1, 6], vision_layers=[1, 3], manage="base"),
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("family", FAMILIES)
def test_formula_matches_independent_reference(family, config):
    model = family_model(family)
    batch = build_batch(model, default_samples(family))
    apply_manager(model, config)
    weights = randomize(model)
    vision_layers = get_managers(model)[0].vision_layers
    with torch.no_grad():
        patched = model(**batch).logits
    reference = family_model(family)
    handles = add_reference_hooks(reference, batch, weights, vision_layers, config.manage)
    with torch.no_grad():
        expected = reference(**batch).logits
        base = family_model(family)(**batch).logits
    for h in handles:
        h.remove()
    assert not torch.allclose(patched, base, atol=1e-3)  # the managers do something
    torch.testing.assert_close(patched, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llava_next", "llava_next_video", "llava_onevision"])
def test_grid_crops_only(family):
    model = family_model(family)
    batch = build_batch(model, IMAGES)
    apply_manager(model, manage="grids")
    weights = randomize(model)
    reference = family_model(family)
    handles = add_reference_hooks(reference, batch, weights, get_managers(model)[0].vision_layers, "grids")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=1e-5, atol=1e-5)
    for h in handles:
        h.remove()


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_bare_model_class(family):
    """`apply_manager` on the bare `...Model`: identity at init, then the reference formula."""
    full = any_model(family)
    batch = any_batch(full, family)
    inner = full.model
    with torch.no_grad():
        base = inner(**batch).last_hidden_state
    apply_manager(inner)
    with torch.no_grad():
        assert torch.equal(inner(**batch).last_hidden_state, base)
    weights = randomize(inner)
    reference = any_model(family)
    handles = reference_hooks(reference, family, batch, weights, get_managers(inner)[0].vision_layers)
    with torch.no_grad():
        torch.testing.assert_close(
            inner(**batch).last_hidden_state, reference.model(**batch).last_hidden_state, rtol=1e-5, atol=1e-5
        )
    for h in handles:
        h.remove()


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_gradients_reach_zero_weights_at_step_zero(family):
    model = any_model(family).train()
    batch = any_batch(model, family)
    apply_manager(model)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    for m in get_managers(model):
        assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0
        assert m.weight.abs().sum() == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_steps_do_no_manager_work(family, monkeypatch):
    model = apply_manager(family_model(family))
    batch = build_batch(model, default_samples(family))
    calls = []
    original = ManagerStack.forward

    def counting(self, grouped, index=None):
        calls.append(index)
        return original(self, grouped, index)

    monkeypatch.setattr(ManagerStack, "forward", counting)
    model.generate(**batch, max_new_tokens=6, do_sample=False)
    modalities = 2 if family in VIDEO_FAMILIES else 1  # every manager's terms in one call per modality, at the prefill
    assert calls == [None] * modalities


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_generate_matches_the_reference(family):
    model = apply_manager(any_model(family))
    batch = any_batch(model, family)
    weights = randomize(model)
    reference = any_model(family)
    handles = reference_hooks(reference, family, batch, weights, get_managers(model)[0].vision_layers)
    expected = reference.generate(**batch, max_new_tokens=6, do_sample=False)
    for h in handles:
        h.remove()
    assert torch.equal(model.generate(**batch, max_new_tokens=6, do_sample=False), expected)
    assert not torch.equal(expected, reference.generate(**batch, max_new_tokens=6, do_sample=False))


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_save_load_and_from_pretrained(family, tmp_path):
    model = apply_manager(any_model(family), interval=2)
    batch = any_batch(model, family)
    randomize(model)
    with torch.no_grad():
        expected = model(**batch).logits

    save_manager(model, tmp_path / "adapter")
    loaded = load_manager(any_model(family), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, expected)

    model.save_pretrained(tmp_path / "full")
    reloaded = from_pretrained(tmp_path / "full", attn_implementation=model.config._attn_implementation)
    assert isinstance(reloaded, model_class(family)) and type(reloaded) is not model_class(family)
    assert has_manager(reloaded) and manager_plan(reloaded) == manager_plan(model)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(**batch).logits, expected)

    any_model(family).save_pretrained(tmp_path / "plain")
    plain = from_pretrained(tmp_path / "plain")
    assert type(plain) is model_class(family) and not has_manager(plain)


def test_load_manager_into_another_family_is_refused(tmp_path):
    save_manager(apply_manager(family_model("llava_next")), tmp_path)
    target = family_model("llava_next_video")
    with pytest.raises(ValueError, match="family: saved llava_next, this model llava_next_video"):
        load_manager(target, tmp_path)
    assert not has_manager(target)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_remove_restores_the_base_model(family):
    model = any_model(family)
    batch = any_batch(model, family)
    with torch.no_grad():
        expected = model(**batch).logits
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    hooks, config, inner_dict = hook_counts(model), model.config.to_dict(), set(model.model.__dict__)
    apply_manager(model, interval=1)
    randomize(model)
    remove_manager(model)
    assert not has_manager(model) and hook_counts(model) == hooks
    assert sorted(n for n, _ in model.named_parameters()) == sorted(params)
    assert model.config.to_dict() == config and set(model.model.__dict__) == inner_dict
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, expected)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_peft_lora_with_trainable_managers(family, tmp_path):
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)", modules_to_save=["managers"]
    )
    model = get_peft_model(apply_manager(any_model(family)), lora)
    batch = any_batch(model, family)
    managers = get_managers(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and sum(".managers." in n for n in trainable) == 2
    model.train()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in managers)
    randomize(model)
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(apply_manager(any_model(family)), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, expected)


@pytest.mark.slow
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_torch_compile_matches_eager(family):
    model = apply_manager(any_model(family))
    batch = any_batch(model, family)
    randomize(model)
    with torch.no_grad():
        eager = model(**batch).logits
        compiled = torch.compile(model, backend="aot_eager")
        assert torch.equal(compiled(**batch).logits, eager)


BAD = {
    "interval-too-large": (dict(interval=9), ValueError, "larger than the LLM's 8 decoder layers"),
    "vision-layer-past-feature": (dict(vision_layers=[1, 7]), ValueError, "out of range"),
    "manage-videos-not-bool": (dict(manage_videos="yes"), ValueError, "manage_videos must be True or False"),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_bad_inputs_are_refused_before_anything_is_touched(family, case):
    overrides, error, message = case
    model = any_model(family)
    hooks, config, modules = hook_counts(model), model.config.to_dict(), len(list(model.modules()))
    with pytest.raises(error, match=message):
        apply_manager(model, **overrides)
    assert not has_manager(model) and hook_counts(model) == hooks
    assert model.config.to_dict() == config and len(list(model.modules())) == modules


def test_grids_on_a_family_without_grids_is_refused():
    model = family_model("llava")
    with pytest.raises(ValueError, match="LLaVA-1.5 has no grid crops"):
        apply_manager(model, manage="grids")
    assert not has_manager(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_several_feature_layers_are_refused(family):
    model = family_model(family, vision_feature_layer=[-2, -1])
    with pytest.raises(ValueError, match="single vision feature layer"):
        apply_manager(model)
    assert not has_manager(model)


# ---- videos --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_mixed_batch_image_only_and_video_only_samples(family):
    model = apply_manager(family_model(family))
    batch = build_batch(model, [{"image": (40, 80)}, {"video": FRAMES}, {"image": (28, 56), "video": FRAMES}])
    weights = randomize(model)
    reference = family_model(family)
    handles = add_reference_hooks(reference, batch, weights, get_managers(model)[0].vision_layers)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=1e-5, atol=1e-5)
    expected = reference.generate(**batch, max_new_tokens=4, do_sample=False)
    for h in handles:
        h.remove()
    assert torch.equal(model.generate(**batch, max_new_tokens=4, do_sample=False), expected)


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_video_knob_off_leaves_video_tokens_alone(family):
    model = apply_manager(family_model(family), manage_videos=False)
    assert "get_video_features" not in model.model.__dict__
    batch = build_batch(model, IMAGES_AND_VIDEOS_ONE)
    weights = randomize(model)
    reference = family_model(family)
    handles = add_reference_hooks(reference, batch, weights, get_managers(model)[0].vision_layers, videos=False)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=1e-5, atol=1e-5)
    for h in handles:
        h.remove()


IMAGES_AND_VIDEOS_ONE = [{"image": (40, 80), "video": FRAMES}]


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_video_only_batch(family):
    model = apply_manager(family_model(family))
    batch = build_batch(model, [{"video": FRAMES}, {"video": FRAMES}])
    weights = randomize(model)
    reference = family_model(family)
    handles = add_reference_hooks(reference, batch, weights, get_managers(model)[0].vision_layers)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=1e-5, atol=1e-5)
    for h in handles:
        h.remove()


def test_next_video_conv_and_max_resamplers_are_followed_exactly():
    """The resampler runs per layer before the projector, so any pooling mode (a conv mixes channels, max is not
    linear) is brought through as the model brings its own feature layer."""
    for mode in ("conv", "max"):
        model = apply_manager(family_model("llava_next_video", spatial_pool_mode=mode))
        batch = build_batch(model, [{"video": FRAMES}])
        weights = randomize(model)
        reference = family_model("llava_next_video", spatial_pool_mode=mode)
        handles = add_reference_hooks(reference, batch, weights, get_managers(model)[0].vision_layers)
        with torch.no_grad():
            torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=1e-5, atol=1e-5)
        for h in handles:
            h.remove()


def test_onevision_images_behave_as_before_and_old_saves_load(tmp_path):
    """A OneVision manager saved before families and videos (no `family`, no `manage_videos`) loads, and image
    outputs do not depend on the video knob."""
    import json

    model = apply_manager(family_model("llava_onevision"))
    randomize(model)
    save_manager(model, tmp_path)
    payload = json.loads((tmp_path / "manager_config.json").read_text())
    del payload["model"]["family"], payload["manager_config"]["manage_videos"]
    (tmp_path / "manager_config.json").write_text(json.dumps(payload))
    batch = build_batch(model, IMAGES)
    with torch.no_grad():
        expected = model(**batch).logits
        old = load_manager(family_model("llava_onevision"), tmp_path)
        assert torch.equal(old(**batch).logits, expected)
        off = load_manager(family_model("llava_onevision"), tmp_path)
        remove_manager(off)
        apply_manager(off, manage_videos=False)
        for a, b in zip(get_managers(off), get_managers(model)):
            a.weight.copy_(b.weight)
        assert torch.equal(off(**batch).logits, expected)
