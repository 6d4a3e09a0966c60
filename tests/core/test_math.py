"""Items 1-3: identity at init, the formula against an independent computation, gradients at step 0."""

import pytest
import torch
from support.helpers import make_batch, randomize, tiny_model
from support.reference import add_reference_hooks

from llava_manager import ManagerConfig, apply_manager, get_managers

# Image sizes covering: one crop per side, several grid crops, unpadding (odd aspect) and anyres_max_9 downsampling
# (100 x 110 picks the 4 x 4 pinpoint: 16 crops of 16 tokens, above 9 crops' worth).
IMAGES = [(28, 28), (40, 80), (100, 110)]


@pytest.mark.parametrize("train", [False, True])
def test_identity_at_init_bit_for_bit(train):
    model = tiny_model()
    batch = make_batch(model, IMAGES)
    model.train(train)
    torch.manual_seed(0)
    base = model(**batch, output_hidden_states=True)
    apply_manager(model)
    torch.manual_seed(0)
    patched = model(**batch, output_hidden_states=True)
    assert torch.equal(base.logits, patched.logits)
    assert len(base.hidden_states) == len(patched.hidden_states)
    for a, b in zip(base.hidden_states, patched.hidden_states):
        assert torch.equal(a, b)
    for a, b in zip(projected_image_features(base), projected_image_features(patched), strict=True):
        assert torch.equal(a, b)


def projected_image_features(output) -> list[torch.Tensor]:
    """The projected image features a model output carries: `image_outputs.pooler_output` (transformers >= 5.24, a
    tensor or one per image) or `image_hidden_states` (before)."""
    if getattr(output, "image_outputs", None) is not None:
        features = output.image_outputs.pooler_output
    else:
        features = output.image_hidden_states
    assert features is not None
    return list(features) if isinstance(features, (list, tuple)) else [features]


def test_identity_at_init_generate_greedy_and_beam():
    model = tiny_model()
    batch = make_batch(model, IMAGES[:2])
    greedy = model.generate(**batch, max_new_tokens=6, do_sample=False)
    beam = model.generate(**batch, max_new_tokens=6, do_sample=False, num_beams=3, num_return_sequences=2)
    apply_manager(model)
    assert torch.equal(greedy, model.generate(**batch, max_new_tokens=6, do_sample=False))
    assert torch.equal(
        beam, model.generate(**batch, max_new_tokens=6, do_sample=False, num_beams=3, num_return_sequences=2)
    )


@pytest.mark.parametrize(
    "config",
    [
        ManagerConfig(),
        ManagerConfig(interval=1),
        ManagerConfig(inject_layers=[2, 7], vision_layers="all"),
        ManagerConfig(start=1, interval=3, vision_layers="bottom_half", manage="base"),
        ManagerConfig(vision_layers=[1, 3, 5], manage="grids"),
    ],
    ids=["default", "interval1", "explicit-all", "start-bottom-base", "list-grids"],
)
def test_formula_matches_independent_computation(config):
    model = tiny_model()
    batch = make_batch(model, IMAGES)
    apply_manager(model, config)
    weights = randomize(model)
    vision_layers = get_managers(model)[0].vision_layers
    with torch.no_grad():
        patched = model(**batch).logits
    # The reference: a fresh base model with the same weights and the test's own hooks.
    reference = tiny_model()
    handles = add_reference_hooks(reference, batch, weights, vision_layers, config.manage)
    with torch.no_grad():
        expected = reference(**batch).logits
        base = tiny_model()(**batch).logits
    for h in handles:
        h.remove()
    assert not torch.allclose(patched, base, atol=1e-3)  # the managers do something
    torch.testing.assert_close(patched, expected, rtol=1e-5, atol=1e-5)


def test_default_layout_for_tiny_model():
    model = apply_manager(tiny_model())  # 8 decoder layers, SigLIP 6 layers, feature layer 6
    managers = get_managers(model)
    assert [m.layer_idx for m in managers] == [0, 4]
    assert all(m.vision_layers == (4, 5, 6) for m in managers)
    assert all(m.weight.shape == (3, 32) and m.weight.abs().sum() == 0 for m in managers)


def test_feature_layer_minus_two_shifts_top_half():
    model = apply_manager(tiny_model(vision_feature_layer=-2))  # f = 5: ceil(5/2) = 3 layers ending at 5
    assert get_managers(model)[0].vision_layers == (3, 4, 5)


def test_gradients_reach_zero_weights_at_step_zero():
    model = tiny_model().train()
    batch = make_batch(model, IMAGES[:2])
    apply_manager(model)
    labels = batch["input_ids"].clone()
    loss = model(**batch, labels=labels).loss
    loss.backward()
    for m in get_managers(model):
        assert m.weight.grad is not None
        assert m.weight.grad.abs().sum() > 0
        assert m.weight.abs().sum() == 0
