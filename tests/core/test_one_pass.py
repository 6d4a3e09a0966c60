"""Every manager's term from one pass over the aggregated layers (`ManagerStack.forward` without an index,
`managers.aggregate_all`), against each manager run on its own (`Manager.forward`, a chain per manager) and an
einsum written here: values, gradients, dtypes, the CPU blocking, the GPU path, the view of the folded layers, the
ZeRO-3 fallback and the jitter."""

from __future__ import annotations

import pytest
import torch

from llava_manager.core import managers as managers_module
from llava_manager.core.managers import Manager, ManagerStack, aggregate_all, stacked_layers
from llava_manager.families.base import unfold_groups

LAYERS, HIDDEN = 5, 24
ROWS = (7, 1, 12)  # token groups of different sizes


def make_stack(num_managers=3, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    stack = ManagerStack([Manager(i * 4, range(3, 3 + LAYERS), HIDDEN, dtype=dtype) for i in range(num_managers)])
    with torch.no_grad():
        for manager in stack:
            manager.weight.normal_()
    return stack.eval()


def folded_features(dtype=torch.float32, seed=1, requires_grad=False):
    """Groups cut from folded `(tokens, layers * hidden)` tensors, as the families' `unfold_groups` gives them."""
    torch.manual_seed(seed)
    folded = [torch.randn(n, LAYERS * HIDDEN, dtype=dtype, requires_grad=requires_grad) for n in ROWS]
    return folded, unfold_groups(folded, LAYERS)


def separate_features(dtype=torch.float32, seed=1):
    """Every layer of every group a tensor of its own (the Qwen families' merger outputs)."""
    torch.manual_seed(seed)
    return [[torch.randn(n, HIDDEN, dtype=dtype) for n in ROWS] for _ in range(LAYERS)]


def each_on_its_own(stack, grouped):
    return torch.stack([stack(grouped, index) for index in range(len(stack))])


def einsum_reference(stack, grouped):
    weight = torch.stack([m.weight for m in stack]).double()
    rows = [torch.stack([layer[g] for layer in grouped], 1).double() for g in range(len(grouped[0]))]
    return torch.cat([torch.einsum("nvd,mvd->mnd", x, weight) for x in rows], dim=1)


@pytest.mark.parametrize("layout", ["folded", "separate"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_pass_equals_each_manager_on_its_own(layout, dtype):
    stack = make_stack(dtype=dtype)
    grouped = folded_features(dtype)[1] if layout == "folded" else separate_features(dtype)
    together = stack(grouped)
    assert together.shape == (len(stack), sum(ROWS), HIDDEN) and together.dtype == dtype
    # the same chain of fused multiply-adds per element, in the same order: the same bits
    assert torch.equal(together, each_on_its_own(stack, grouped))
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=0.02, atol=0.1)
    torch.testing.assert_close(together.double(), einsum_reference(stack, grouped), **tolerance)


@pytest.mark.parametrize("cache_bytes", [1, 3 * LAYERS * HIDDEN * 4, 10**9])
def test_cpu_blocks_of_any_size_give_the_same_terms(cache_bytes, monkeypatch):
    """Blocks of 1 row, of 3 rows (groups of 7 and 12 rows end in a partial block) and one block for everything."""
    stack = make_stack()
    grouped = folded_features()[1]
    expected = each_on_its_own(stack, grouped)
    monkeypatch.setattr(managers_module, "_CACHE_BYTES", cache_bytes)
    assert torch.equal(stack(grouped), expected)


@pytest.mark.parametrize("path", ["cpu blocks", "einsum (GPU)"])
@pytest.mark.parametrize("grads", ["weights and features", "weights", "features"])
def test_gradients_equal_each_manager_on_its_own(path, grads, monkeypatch):
    if path != "cpu blocks":
        monkeypatch.setattr(managers_module, "_einsum", lambda x: True)
    results = []
    for together in (True, False):
        stack = make_stack()
        stack.requires_grad_("weights" in grads)
        folded, grouped = folded_features(requires_grad="features" in grads)
        torch.manual_seed(2)
        upstream = torch.randn(len(stack), sum(ROWS), HIDDEN)
        terms = stack(grouped) if together else each_on_its_own(stack, grouped)
        (terms * upstream).sum().backward()
        results.append(
            (
                [m.weight.grad for m in stack] if "weights" in grads else [],
                [f.grad for f in folded] if "features" in grads else [],
            )
        )
    (w1, x1), (w2, x2) = results
    for a, b in zip(w1 + x1, w2 + x2):
        assert a is not None and a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert len(w1) + len(x1) > 0


def test_gpu_path_gives_the_same_values(monkeypatch):
    stack = make_stack()
    grouped = separate_features()
    expected = each_on_its_own(stack, grouped)
    monkeypatch.setattr(managers_module, "_einsum", lambda x: True)
    torch.testing.assert_close(stack(grouped), expected, rtol=1e-5, atol=1e-5)


def test_folded_layers_are_read_as_a_view_and_others_stacked():
    folded, grouped = folded_features()
    for g, base in enumerate(folded):
        layers = [layer[g] for layer in grouped]
        viewed = stacked_layers(layers)
        assert viewed.data_ptr() == base.data_ptr() and viewed.shape == (ROWS[g], LAYERS, HIDDEN)
        assert all(torch.equal(viewed[:, k], layers[k]) for k in range(LAYERS))
    separate = separate_features()
    layers = [layer[0] for layer in separate]
    stacked = stacked_layers(layers)
    assert all(torch.equal(stacked[:, k], layers[k]) for k in range(LAYERS))
    # views in another order (or repeated, as generate() repeats groups for beams) are copied, not misread
    shuffled = [layers[0] for layers in [[layer[g] for layer in grouped] for g in range(1)]] + [
        grouped[k][0] for k in (2, 1, 3, 4)
    ]
    assert all(torch.equal(stacked_layers(shuffled)[:, k], shuffled[k]) for k in range(LAYERS))


def test_one_call_of_the_kernel_per_group_for_all_managers(monkeypatch):
    """The work of a forward: each group's layers go through the kernel once, whatever the number of managers."""
    calls = []
    original = managers_module._AggregateAll.forward

    def counting(ctx, x, weight):
        calls.append(weight.shape[0])
        return original(ctx, x, weight)

    monkeypatch.setattr(managers_module._AggregateAll, "forward", staticmethod(counting))
    stack = make_stack(num_managers=6)
    stack(folded_features()[1])
    assert calls == [6] * len(ROWS)


def test_zero3_partitioned_weights_run_each_manager_in_its_own_call(monkeypatch):
    """DeepSpeed ZeRO-3 gathers a manager's weight only inside its own module's call (`ds_id` marks its
    parameters): the stack then calls each manager, and the terms are the same."""
    stack = make_stack()
    grouped = folded_features()[1]
    expected = stack(grouped)
    calls = []
    original = Manager.forward

    def counting(self, features):
        calls.append(self.layer_idx)
        return original(self, features)

    monkeypatch.setattr(Manager, "forward", counting)
    for manager in stack:
        manager.weight.ds_id = manager.layer_idx
    assert torch.equal(stack(grouped), expected)
    assert calls == [m.layer_idx for m in stack]


def test_training_jitters_each_term_within_its_managers_range():
    stack = make_stack()
    stack[1].jitter = 0.0
    grouped = folded_features()[1]
    plain = stack(grouped)
    stack.train()
    torch.manual_seed(3)
    noisy = stack(grouped)
    ratio = noisy / plain
    for k, manager in enumerate(stack):
        j = manager.jitter
        assert ratio[k].min() >= 1 - j - 1e-5 and ratio[k].max() <= 1 + j + 1e-5
        if j:
            assert ratio[k].std() > j / 4  # drawn per element
        else:
            assert torch.equal(noisy[k], plain[k])
    torch.manual_seed(3)
    assert torch.equal(stack(grouped), noisy)  # seeded: the same draw


def test_aggregate_all_takes_weights_on_another_device_dtype_as_given():
    stack = make_stack()
    grouped = separate_features()
    weight = torch.stack([m.weight for m in stack]).detach()
    assert torch.equal(aggregate_all(grouped, weight), each_on_its_own(stack, grouped).detach())


def test_the_benchmark_runs_and_prints_its_ratios():
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "managers.py"
    args = ["--tokens", "9", "4", "--layers", "3", "--hidden", "8", "--managers", "2", "5", "--repeats", "2"]
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=True).stdout
    lines = [line for line in out.splitlines() if "ratio x" in line]
    assert len(lines) == 4  # 2 manager counts, without and with autograd
    assert all(re.search(r"ratio x\d+\.\d+ \(x\d+\.\d+-x\d+\.\d+\)", line) for line in lines)
