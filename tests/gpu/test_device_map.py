"""A patched model loaded with `device_map="auto"` generates what the same model on one device generates, bit for bit
(greedy tokens and the logits of a forward): placed whole on the GPU; with half of it offloaded to the CPU (a
`max_memory` that fits half the model on the GPU: accelerate's hooks bring the offloaded decoder layers, the managers
and the head to the GPU for each forward); and, on a machine with two GPUs, split across them (the managers then add
features computed on one device to hidden states on another)."""

from __future__ import annotations

import pytest
import torch
from support.helpers import make_batch, tiny_model

import llava_manager
from llava_manager import apply_manager, get_managers

pytestmark = pytest.mark.gpu

IMAGES = [(28, 28), (40, 80), (100, 110)]
DTYPE = torch.bfloat16


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A patched tiny model (managers every 2nd layer, random non-zero weights) saved with save_pretrained, and a
    left-padded batch of three images of different sizes."""
    model = apply_manager(tiny_model(), interval=2)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in get_managers(model):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g))
    folder = tmp_path_factory.mktemp("device-map") / "patched"
    model.save_pretrained(folder)
    size = sum(p.numel() * p.element_size() for p in model.to(DTYPE).parameters())
    return folder, make_batch(tiny_model(), IMAGES), size


def run(model, batch, device):
    inputs = {k: v.to(device, DTYPE) if v.is_floating_point() else v.to(device) for k, v in batch.items()}
    with torch.no_grad():
        logits = model(**inputs).logits.float().cpu()
        tokens = model.generate(**inputs, max_new_tokens=8, do_sample=False).cpu()
    return logits, tokens


@pytest.fixture(scope="module")
def single(saved, device):
    folder, batch, _ = saved
    return run(llava_manager.from_pretrained(folder, dtype=DTYPE).to(device).eval(), batch, device)


@pytest.mark.parametrize("placement", ["whole", "offloaded", "two-gpus"])
def test_device_map_auto_generates_as_one_device(saved, single, device, placement):
    folder, batch, size = saved
    if placement == "offloaded":
        if device.type != "cuda":
            pytest.skip("offloading to the CPU needs a GPU to offload from")
        memory = {0: size // 2, "cpu": 10**9}
    elif placement == "two-gpus":
        if torch.cuda.device_count() < 2:
            pytest.skip(f"a split across GPUs needs two; this machine has {torch.cuda.device_count()}")
        memory = {0: size // 2, 1: 10**9}
    else:
        memory = None
    kwargs = {"max_memory": memory} if memory else {}
    model = llava_manager.from_pretrained(folder, dtype=DTYPE, device_map="auto", **kwargs).eval()
    device_map = getattr(model, "hf_device_map", {})
    placed = set(device_map.values())
    print(f"{placement}: {device_map}")
    if placement == "offloaded":
        assert {0, "cpu"} <= placed, placed
    elif placement == "two-gpus":
        assert {0, 1} <= placed, placed
    else:
        assert model.device == device and all(p.device == device for p in model.parameters())
    logits, tokens = run(model, batch, device)
    want_logits, want_tokens = single
    assert torch.equal(tokens, want_tokens), (tokens, want_tokens)
    assert torch.equal(logits, want_logits), (logits - want_logits).abs().max()
