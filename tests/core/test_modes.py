"""A patched model in every mode: gradient checkpointing, dtypes, .to(), eval/train noise, determinism, compile."""

import pytest
import torch
from support.helpers import make_batch, randomize, tiny_model
from support.reference import add_reference_hooks

from llava_manager import apply_manager, get_managers

IMAGES = [(40, 80), (28, 28)]


def loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    return loss.detach(), [m.weight.grad.clone() for m in get_managers(model)]


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_loss_and_manager_grads(reentrant):
    model = apply_manager(tiny_model()).train()
    batch = make_batch(model, IMAGES)
    randomize(model)
    torch.manual_seed(0)
    loss, grads = loss_and_grads(model, batch)
    model.activation_checkpointing_enable({"use_reentrant": reentrant})
    assert all(layer.gradient_checkpointing for layer in model.model.language_model.layers)
    torch.manual_seed(0)
    loss_ckpt, grads_ckpt = loss_and_grads(model, batch)
    assert torch.equal(loss, loss_ckpt)
    for a, b in zip(grads, grads_ckpt):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        assert a.abs().sum() > 0


def test_bf16_identity_at_init_and_formula():
    model = tiny_model().to(torch.bfloat16)
    batch = make_batch(model, IMAGES)
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    with torch.no_grad():
        base = model(**batch).logits
    apply_manager(model)
    assert all(m.weight.dtype == torch.bfloat16 for m in get_managers(model))
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, base)
    weights = randomize(model)
    with torch.no_grad():
        patched = model(**batch).logits.float()
    reference = tiny_model().to(torch.bfloat16)
    add_reference_hooks(reference, batch, weights, get_managers(model)[0].vision_layers)
    with torch.no_grad():
        expected = reference(**batch).logits.float()
    assert (patched - base.float()).abs().max() > 0.05
    torch.testing.assert_close(patched, expected, rtol=0.05, atol=0.1)  # bf16 summation order differs


def test_to_moves_and_casts_managers():
    model = apply_manager(tiny_model())
    randomize(model)
    model.to(torch.float64)
    assert all(m.weight.dtype == torch.float64 for m in get_managers(model))
    batch = make_batch(model, IMAGES)
    batch["pixel_values"] = batch["pixel_values"].double()
    with torch.no_grad():
        assert model(**batch).logits.dtype == torch.float64
    model.to("meta")
    assert all(m.weight.device.type == "meta" for m in get_managers(model))


def test_noise_only_in_training_and_deterministic_under_seed():
    model = apply_manager(tiny_model())
    batch = make_batch(model, IMAGES)
    randomize(model)
    with torch.no_grad():
        model.eval()
        eval_a, eval_b = model(**batch).logits, model(**batch).logits
        model.train()
        torch.manual_seed(11)
        train_a = model(**batch).logits
        torch.manual_seed(11)
        train_b = model(**batch).logits
        train_c = model(**batch).logits
    assert torch.equal(eval_a, eval_b)
    assert torch.equal(train_a, train_b)
    assert not torch.equal(train_a, eval_a)
    assert not torch.equal(train_b, train_c)
    # jitter 2%: the noisy output stays within a small band around the clean one
    assert (train_a - eval_a).abs().max() < 0.1 * (eval_a - tiny_model()(**batch).logits).abs().max() + 1e-3


def test_jitter_zero_makes_training_forward_exact():
    model = apply_manager(tiny_model(), jitter=0.0)
    batch = make_batch(model, IMAGES)
    randomize(model)
    with torch.no_grad():
        clean = model.eval()(**batch).logits
        assert torch.equal(model.train()(**batch).logits, clean)


def test_noise_is_uniform_in_the_jitter_band():
    from llava_manager.core.managers import Manager

    manager = Manager(0, [1, 2], hidden_size=64, jitter=0.02)
    with torch.no_grad():
        manager.weight.fill_(1.0)
    features = [[torch.ones(500, 64)], [torch.zeros(500, 64)]]
    torch.manual_seed(0)
    noisy = manager.train()(features)
    assert noisy.min() >= 0.98 and noisy.max() <= 1.02
    assert noisy.min() < 0.981 and noisy.max() > 1.019  # spread over the whole band
    assert abs(noisy.mean().item() - 1.0) < 1e-3
    assert torch.equal(manager.eval()(features), torch.ones(500, 64))


def test_torch_compile_matches_eager():
    model = apply_manager(tiny_model())
    batch = make_batch(model, IMAGES)
    randomize(model)
    with torch.no_grad():
        eager = model(**batch).logits
        compiled = torch.compile(model, backend="aot_eager")
        assert torch.equal(compiled(**batch).logits, eager)
        text = torch.randint(0, 100, (2, 7))
        assert torch.equal(compiled(input_ids=text).logits, model(input_ids=text).logits)


def test_static_cache_generate_matches_dynamic():
    model = apply_manager(tiny_model())
    batch = make_batch(model, IMAGES)
    randomize(model)
    dynamic = model.generate(**batch, max_new_tokens=5, do_sample=False)
    static = model.generate(**batch, max_new_tokens=5, do_sample=False, cache_implementation="static")
    assert torch.equal(dynamic, static)
