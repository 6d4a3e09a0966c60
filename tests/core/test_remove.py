"""remove_manager gives back the untouched base model."""

import torch
from support.helpers import make_batch, randomize, tiny_model

from llava_manager import apply_manager, get_managers, has_manager, remove_manager


def hook_counts(model):
    return {
        name: (len(m._forward_pre_hooks), len(m._forward_hooks))
        for name, m in model.named_modules()
        if m._forward_pre_hooks or m._forward_hooks
    }


def test_remove_restores_modules_parameters_outputs_and_hooks():
    model = tiny_model()
    batch = make_batch(model, [(40, 80), (28, 28)])
    with torch.no_grad():
        expected = model(**batch).logits
    modules = [(n, type(m)) for n, m in model.named_modules()]
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    hooks = hook_counts(model)
    config = model.config.to_dict()
    inner_dict = set(model.model.__dict__)

    apply_manager(model, interval=1)
    randomize(model)
    assert hook_counts(model) != hooks
    remove_manager(model)

    assert not has_manager(model)
    assert [(n, type(m)) for n, m in model.named_modules()] == modules
    assert sorted(n for n, _ in model.named_parameters()) == sorted(params)
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())
    assert hook_counts(model) == hooks
    assert model.config.to_dict() == config
    assert set(model.model.__dict__) == inner_dict  # no instance wrappers left
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, expected)
    apply_manager(model)  # and it can be patched again
    assert has_manager(model)


def test_manager_parameters_registered_once_and_counted():
    model = apply_manager(tiny_model())
    names = [n for n, _ in model.named_parameters() if "managers" in n]
    assert names == ["model.managers.0.weight", "model.managers.1.weight"]
    assert len({id(p) for p in model.parameters()}) == len(list(model.parameters()))
    added = sum(model.get_parameter(n).numel() for n in names)
    assert added == 2 * 3 * 32  # managers x vision layers x text hidden size
    assert set(model.state_dict()) - set(tiny_model().state_dict()) == set(names)


def test_deepcopy_gives_an_independent_patched_model():
    import copy

    model = apply_manager(tiny_model())
    batch = make_batch(model, [(40, 80)])
    randomize(model)
    with torch.no_grad():
        expected = model(**batch).logits
        clone = copy.deepcopy(model)
        assert torch.equal(clone(**batch).logits, expected)
        for m in get_managers(clone):
            m.weight.zero_()
        assert torch.equal(clone(**batch).logits, tiny_model()(**batch).logits)
        assert torch.equal(model(**batch).logits, expected)
    remove_manager(clone)
    assert has_manager(model) and not has_manager(clone)
