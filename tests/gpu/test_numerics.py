"""On the GPU, in bf16: the patch is the identity at init, bit for bit (logits and hidden states, eval and train
mode, the tiny model and the real 0.5B shape); and the managers compute paper Eq. 12-14 as the independent fp32
reference of `tests/support/reference.py` does (the CPU versions: `tests/core/test_math.py`).

Tolerance of the bf16 formula check, stated: the patched bf16 logits may differ from the fp32 reference by at most
twice what bf16 costs the same model without managers (its bf16 logits against its fp32 logits), plus 2^-8 of the
largest reference logit; the managers' own effect on the logits must be at least ten times that bound. In fp32 on the
GPU (TF32 off) the patched logits match the reference to 1e-4."""

from __future__ import annotations

import pytest
import torch
from support.helpers import make_batch, randomize, tiny_model
from support.reference import add_reference_hooks
from transformers import LlavaOnevisionForConditionalGeneration

from llava_manager import apply_manager, get_managers
from llava_manager.families import random_inputs
from llava_manager.families.llava_onevision import onevision_0_5b_config

pytestmark = pytest.mark.gpu

# one crop, a grid with unpadding, and anyres_max_9's downsampling (as tests/core/test_math.py)
IMAGES = [(28, 28), (40, 80), (100, 110)]


def to(batch: dict, device, dtype) -> dict:
    return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in batch.items()}


def forward(model, batch, train: bool):
    model.train(train)
    torch.manual_seed(0)  # the managers' jitter in train mode draws from the RNG
    with torch.no_grad():
        return model(**batch, output_hidden_states=True)


def assert_identical(base, patched):
    assert torch.equal(base.logits, patched.logits), (base.logits - patched.logits).abs().max()
    assert len(base.hidden_states) == len(patched.hidden_states)
    for i, (a, b) in enumerate(zip(base.hidden_states, patched.hidden_states)):
        assert torch.equal(a, b), f"hidden state {i}"


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_bf16_identity_at_init_tiny(device, train):
    model = tiny_model().to(device, torch.bfloat16)
    batch = to(make_batch(tiny_model(), IMAGES), device, torch.bfloat16)
    base = forward(model, batch, train)
    apply_manager(model)
    assert all(m.weight.device.type == device.type for m in get_managers(model))
    assert_identical(base, forward(model, batch, train))


def test_bf16_identity_at_init_at_the_0_5b_shape(device):
    if device.type != "cuda":
        pytest.skip("the 0.5B shape needs a GPU's memory and speed")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaOnevisionForConditionalGeneration(onevision_0_5b_config())
    model = model.to(torch.bfloat16).eval()
    batch = random_inputs(model, 384, 384, 40)  # 1,485 image tokens + 40 of text
    base = forward(model, batch, False)
    apply_manager(model)  # 6 managers over 24 decoder layers, 13 vision layers each
    assert len(get_managers(model)) == 6
    assert_identical(base, forward(model, batch, False))


@pytest.fixture(scope="module")
def reference():
    """The fp32 reference on the CPU (its hooks are CPU code): patched model's weights, logits with and without the
    managers' terms."""
    model = tiny_model()
    batch = make_batch(model, IMAGES)
    apply_manager(model)
    weights = randomize(model)  # non-zero managers, so that their terms count
    vision_layers = get_managers(model)[0].vision_layers
    ref = tiny_model()
    handles = add_reference_hooks(ref, batch, weights, vision_layers)
    with torch.no_grad():
        expected = ref(**batch).logits
        for h in handles:
            h.remove()
        base = ref(**batch).logits
    return model.state_dict(), batch, expected, base


def patched_on(device, dtype, state):
    model = apply_manager(tiny_model())
    model.load_state_dict(state)
    return model.to(device, dtype).eval()


def test_formula_in_fp32_matches_the_reference(device, reference):
    state, batch, expected, _ = reference
    model = patched_on(device, torch.float32, state)
    with torch.no_grad():
        logits = model(**to(batch, device, torch.float32)).logits.cpu()
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_formula_in_bf16_matches_the_fp32_reference_within_bf16_error(device, reference):
    state, batch, expected, base32 = reference
    model = patched_on(device, torch.bfloat16, state)
    plain = tiny_model().to(device, torch.bfloat16)  # the same base weights, no managers
    inputs = to(batch, device, torch.bfloat16)
    with torch.no_grad():
        patched = model(**inputs).logits.float().cpu()
        base16 = plain(**inputs).logits.float().cpu()
    bf16_cost = (base16 - base32).abs().max().item()
    bound = 2 * bf16_cost + 2**-8 * expected.abs().max().item()
    error = (patched - expected).abs().max().item()
    effect = (expected - base32).abs().max().item()
    print(f"bf16: error {error:.3e}, bound {bound:.3e} (base model's bf16 error {bf16_cost:.3e}), effect {effect:.3e}")
    assert effect >= 10 * bound, "the managers must change the logits well beyond the tolerance"
    assert error <= bound
