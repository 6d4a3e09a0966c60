"""generate() with KV cache, greedy, sampling, beams; managers act on the prefill only."""

import pytest
import torch
from support.helpers import make_batch, randomize, tiny_model
from support.reference import add_reference_hooks

from llava_manager import apply_manager, get_managers
from llava_manager.core.managers import ManagerStack

IMAGES = [(40, 80), (100, 110)]


def patched_and_reference():
    model = apply_manager(tiny_model())
    batch = make_batch(model, IMAGES)
    weights = randomize(model)
    reference = tiny_model()
    add_reference_hooks(reference, batch, weights, get_managers(model)[0].vision_layers)
    return model, reference, batch


def test_greedy_generate_matches_reference_and_changes_output():
    model, reference, batch = patched_and_reference()
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert torch.equal(out, reference.generate(**batch, max_new_tokens=8, do_sample=False))
    assert not torch.equal(out, tiny_model().generate(**batch, max_new_tokens=8, do_sample=False))


def test_sampling_generate_matches_reference_under_seed():
    model, reference, batch = patched_and_reference()
    torch.manual_seed(7)
    out = model.generate(**batch, max_new_tokens=8, do_sample=True, top_k=20)
    torch.manual_seed(7)
    assert torch.equal(out, reference.generate(**batch, max_new_tokens=8, do_sample=True, top_k=20))


@pytest.mark.parametrize("num_beams,num_return", [(3, 1), (3, 2), (1, 2)])
def test_beams_and_return_sequences_match_per_sample_generation(num_beams, num_return):
    """Expanded batches must line each copy up with its own image: generating the batch must equal generating
    each sample alone (which needs no cross-sample alignment)."""
    model = apply_manager(tiny_model())
    batch = make_batch(model, IMAGES)
    randomize(model)
    kw = dict(max_new_tokens=6, num_beams=num_beams, num_return_sequences=num_return)
    if num_beams == 1:
        kw.update(do_sample=True, top_k=1)  # several samples per prompt; top_k=1 keeps them deterministic
    together = model.generate(**batch, **kw)
    assert together.shape[0] == 2 * num_return
    for i in range(2):
        single = {k: v[i : i + 1] for k, v in batch.items()}
        solo = model.generate(**single, **kw)
        rows = together[i * num_return : (i + 1) * num_return]
        # the batch is left-padded; compare the generated tails
        assert torch.equal(rows[:, -6:], solo[:, -6:])


def test_decode_steps_do_no_manager_work(monkeypatch):
    """Every manager's term comes from one call of the stack at the prefill; decode steps call nothing."""
    model = apply_manager(tiny_model())
    batch = make_batch(model, IMAGES)
    calls = []
    original = ManagerStack.forward

    def counting(self, grouped, index=None):
        calls.append(index)
        return original(self, grouped, index)

    monkeypatch.setattr(ManagerStack, "forward", counting)
    model.generate(**batch, max_new_tokens=7, do_sample=False)
    assert calls == [None]  # once, for all managers, at the prefill
    calls.clear()
    model.generate(**batch, max_new_tokens=5, num_beams=2, do_sample=False)
    assert calls == [None]


def test_generate_without_cache_matches_with_cache():
    model, _, batch = patched_and_reference()
    with_cache = model.generate(**batch, max_new_tokens=5, do_sample=False)
    no_cache = model.generate(**batch, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, no_cache)
