"""The Qwen-VL families' aggregated layers through the merger, side by side, at a published shape: one merger call a
layer, all layers stacked in one call, and the package's path (`llava_manager.families.qwen2_vl.merged_layers`):
the layers stacked, as many a call as keep the merger's widest buffer within `MAX_CALL_BYTES`.

    python benchmarks/merger.py                         # Qwen2.5-VL-7B: 16 layers of 576 patches x 1280 -> 3,584
    python benchmarks/merger.py --family qwen3_vl --patches 1024 --dtype bfloat16

The merger (an MLP over each 2 x 2 group of patches) is the whole cost of a Qwen-VL manager's features. Every
variant runs once per round, the order rotated every round; printed: the median time of each, the median (min-max)
over rounds of the per-round ratio to one call a layer, and the median page faults of a run (Linux and macOS), the
cost of buffers too large for the allocator to keep between calls. The outputs are checked equal first.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

try:
    import resource
except ImportError:  # Windows
    resource = None

import torch

from llava_manager.analysis.timing import ratio_spread, rounds
from llava_manager.families import get_family
from llava_manager.families.qwen2_vl import MAX_CALL_BYTES, merged_layers

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="qwen2_5_vl", choices=FAMILIES)
    parser.add_argument("--patches", type=int, default=576, help="patches of the image (a square grid)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    adapter = get_family(args.family)
    name, make = next(iter(adapter.published.values())) if adapter.published else ("defaults", adapter.config_class)
    config = make()
    side = int(args.patches**0.5)
    with torch.device("meta"):  # the tower's class, without building the LLM
        tower_class = type(adapter.model_class(config).model.visual)
    torch.manual_seed(0)
    visual = tower_class._from_config(config.vision_config).to(dtype).eval()
    num_layers = len(visual.blocks) // 2  # the top half, as the paper's default aggregates
    hidden = [torch.randn(side * side, config.vision_config.hidden_size, dtype=dtype) for _ in range(num_layers)]
    grid = torch.tensor([[1, side, side]])
    inner = SimpleNamespace(visual=visual, config=config)
    variants = {"one call a layer": 0, "one call": 1 << 62, f"calls of <= {MAX_CALL_BYTES >> 20} MiB": None}
    faults = {name: [] for name in variants}

    def run(name, budget):
        def call():
            before = page_faults()
            start = time.perf_counter()
            merged_layers(inner, hidden, grid, max_call_bytes=budget)
            seconds = time.perf_counter() - start
            faults[name].append(page_faults() - before)
            return seconds

        return call

    print(f"{name}: {num_layers} layers of {side * side} patches x {config.vision_config.hidden_size}, {args.dtype}")
    with torch.no_grad():
        outputs = [merged_layers(inner, hidden, grid, max_call_bytes=budget) for budget in variants.values()]
        for other in outputs[1:]:
            for a, b in zip(outputs[0], other):
                torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
        del outputs
        times = rounds({name: run(name, budget) for name, budget in variants.items()}, args.repeats, desc="merger")
    ratios = ratio_spread(times, "one call a layer")
    print(f"threads {torch.get_num_threads()}, {args.repeats} rounds; ratio to one call a layer, median (min-max):")
    for variant in variants:
        median, low, high = ratios[variant]
        print(
            f"  {variant:>24}: {statistics.median(times[variant]) * 1e3:8.1f} ms, "
            f"x{median:.3f} (x{low:.3f}-x{high:.3f})"
            + (f", {statistics.median(faults[variant][-args.repeats :]):,.0f} page faults" if resource else "")
        )


def page_faults() -> int:
    """Minor page faults of this process so far (0 where `resource` is missing)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


if __name__ == "__main__":
    main()
