"""The Qwen-VL families' aggregated layers through the merger, side by side, at a published shape: one merger call a
layer, all layers stacked in one call, and the package's path (`llava_manager.families.qwen2_vl.merged_layers`):
the layers stacked, as many a call as keep the merger's widest buffer within `MAX_CALL_BYTES`.

    python benchmarks/merger.py                         # Qwen2.5-VL-7B: 16 layers of 576 patches x 1280 -> 3,584
    python benchmarks/merger.py --family qwen3_vl --patches 1024 --dtype bfloat16
    python benchmarks/merger.py --prefill               # whole prefills at the reduced depth, base beside each

The merger (an MLP over each 2 x 2 group of patches) is the whole cost of a Qwen-VL manager's features. Every
variant runs once per round, the order rotated every round; printed: the median time of each, the median (min-max)
over rounds of the per-round ratio to the first variant, and the median page faults of a run (Linux and macOS), the
cost of buffers too large for the allocator to keep between calls. The merger alone is checked equal first.

With --prefill, whole patched prefills (all layers in one call, and the package's calls) are timed instead, next to
the base model's, at `benchmarks/overhead.py`'s reduced depth (the real widths and tower, 4 decoder layers, one
336 x 336 image and a 4-frame video, a 40-token prompt): the merger's calls inside the forward the managers run in,
where the rest of the model's buffers are too.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from types import SimpleNamespace

try:
    import resource
except ImportError:  # Windows
    resource = None

import torch
from overhead import build, inputs_for, prefill, published_or_default  # the script beside this one

from llava_manager import apply_manager, remove_manager
from llava_manager.analysis.timing import ratio_spread, rounds, timed
from llava_manager.families import get_family, qwen2_vl
from llava_manager.families.qwen2_vl import MAX_CALL_BYTES, merged_layers

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"]
# merger-call budgets in bytes (None: the package's `MAX_CALL_BYTES`)
BUDGETS = {"one call a layer": 0, "one call": 1 << 62, f"calls of <= {MAX_CALL_BYTES >> 20} MiB": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="qwen2_5_vl", choices=FAMILIES)
    parser.add_argument("--patches", type=int, default=576, help="patches of the image (a square grid)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--prefill", action="store_true", help="whole prefills at the reduced depth, base beside")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    adapter = get_family(args.family)
    hub_id, make_config = next(iter(published_or_default(adapter).values()))
    print(f"{hub_id}, {args.dtype}")
    with torch.no_grad():
        if args.prefill:
            variants = in_prefill(adapter, make_config, dtype)
        else:
            variants = merger_alone(adapter, make_config, args.patches, dtype)
        compare(variants, args.repeats)


def merger_alone(adapter, make_config, patches: int, dtype) -> dict[str, Callable[[], object]]:
    """The merger over the top half of the tower's layers (random activations of one square image), per budget."""
    config = make_config()
    side = int(patches**0.5)
    with torch.device("meta"):  # the tower's class, without building the LLM
        tower_class = type(adapter.model_class(config).model.visual)
    torch.manual_seed(0)
    visual = tower_class._from_config(config.vision_config).to(dtype).eval()
    num_layers = len(visual.blocks) // 2  # the top half, as the paper's default aggregates
    hidden = [torch.randn(side * side, config.vision_config.hidden_size, dtype=dtype) for _ in range(num_layers)]
    grid = torch.tensor([[1, side, side]])
    inner = SimpleNamespace(visual=visual, config=config)
    print(f"{num_layers} layers of {side * side} patches x {config.vision_config.hidden_size}")
    outputs = [merged_layers(inner, hidden, grid, max_call_bytes=budget) for budget in BUDGETS.values()]
    for other in outputs[1:]:
        for a, b in zip(outputs[0], other):
            torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
    return {
        variant: (lambda budget=budget: merged_layers(inner, hidden, grid, max_call_bytes=budget))
        for variant, budget in BUDGETS.items()
    }


def in_prefill(adapter, make_config, dtype) -> dict[str, Callable[[], object]]:
    """A prefill of the base model, then of the patched one at each budget (set as the package's `MAX_CALL_BYTES`
    for the call)."""
    model = build(adapter, make_config, 4, torch.device("cpu"), dtype)
    inputs = inputs_for(model, adapter, 40)
    prefill(model, inputs)  # warm-up

    def patched(budget):
        def run():
            default = qwen2_vl.MAX_CALL_BYTES
            qwen2_vl.MAX_CALL_BYTES = default if budget is None else budget
            apply_manager(model)
            try:
                return prefill(model, inputs)
            finally:
                remove_manager(model)
                qwen2_vl.MAX_CALL_BYTES = default

        return run

    print("prefill at 4 decoder layers")
    return {"base": lambda: prefill(model, inputs)} | {
        variant: patched(budget) for variant, budget in BUDGETS.items() if budget != 0
    }


def compare(variants: dict[str, Callable[[], object]], repeats: int) -> None:
    faults = {variant: [] for variant in variants}

    def measured(variant):
        def call():
            before = page_faults()
            seconds = timed(variants[variant], torch.device("cpu"))
            faults[variant].append(page_faults() - before)
            return seconds

        return call

    times = rounds({variant: measured(variant) for variant in variants}, repeats, desc="merger")
    first = next(iter(variants))
    ratios = ratio_spread(times, first)
    print(f"threads {torch.get_num_threads()}, {repeats} rounds; ratio to {first}, median (min-max):")
    for variant in variants:
        median, low, high = ratios[variant]
        print(
            f"  {variant:>24}: {statistics.median(times[variant]) * 1e3:8.1f} ms, "
            f"x{median:.3f} (x{low:.3f}-x{high:.3f})"
            + (f", {statistics.median(faults[variant][-repeats:]):,.0f} page faults" if resource else "")
        )


def page_faults() -> int:
    """Minor page faults of this process so far (0 where `resource` is missing)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


if __name__ == "__main__":
    main()
