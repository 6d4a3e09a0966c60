"""Side-by-side measurement: FLOPs counted by torch's flop counter, and wall times taken in rounds so that every
variant runs once per round, in an order that rotates between rounds, and slow drifts of the machine (clock, other
load) cancel in the per-round ratios."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of `fn` takes, the device synchronised on both sides."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def count_flops(fn: Callable[[], object], inference_of: torch.nn.Module | None = None) -> int:
    """FLOPs of one call of `fn` as torch's flop counter counts them (a multiply-add is 2 FLOPs).

    `inference_of`: a model `fn` runs without gradients, whose parameters are marked as not requiring them for the
    count (the counter's module tracker fails on modules handed a parameter that requires grad under `no_grad`, as
    the PyTorch fallback of Qwen3.5's linear attention does)."""
    with frozen(inference_of), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@contextlib.contextmanager
def frozen(model: torch.nn.Module | None):
    """`model`'s parameters not requiring grad for a while (none when `model` is None)."""
    flags = [(p, p.requires_grad) for p in model.parameters()] if model is not None else []
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def rounds(fns: dict[str, Callable[[], float]], repeats: int, desc: str, warmup: bool = True) -> dict[str, list[float]]:
    """Run every function once per round for `repeats` rounds, the order rotated by one each round; each function
    returns the seconds it measured. One untimed warm-up call each comes first."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    if warmup:
        for name in tqdm(names, desc=f"{desc} (warm-up)", leave=False):
            fns[name]()
    for r in tqdm(range(repeats), desc=desc, leave=False):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            times[name].append(fns[name]())
    return times


def peak_tensor_bytes(fn: Callable[[], object], model: torch.nn.Module) -> int:
    """Peak bytes of the tensors alive during one call of `fn`, `model`'s parameters and buffers included, on every
    device together (torch's MemTracker, which counts tensors, so it works on a CPU too)."""
    from torch.distributed._tools.mem_tracker import MemTracker  # upstream: see llava_manager/upstream.py

    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        fn()
    return sum(device["Total"] for device in tracker.get_tracker_snapshot("peak").values())


def ratio_spread(times: dict[str, list[float]], reference: str) -> dict[str, tuple[float, float, float]]:
    """(median, min, max) over rounds of each variant's time divided by the reference's time in the same round."""
    result = {}
    for name, values in times.items():
        ratios = [t / r for t, r in zip(values, times[reference])]
        result[name] = (statistics.median(ratios), min(ratios), max(ratios))
    return result


def ratio_to(times: dict[str, list[float]], reference: str) -> dict[str, float]:
    """Median over rounds of each variant's time divided by the reference's time in the same round."""
    return {name: statistics.median(t / r for t, r in zip(values, times[reference])) for name, values in times.items()}
