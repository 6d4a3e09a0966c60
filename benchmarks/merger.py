"""The Qwen-VL families' aggregated layers through the merger, side by side: one merger call a layer vs the layers
stacked, up to `MAX_STACKED_ROWS` merged rows a call (`llava_manager.families.qwen2_vl.merged_layers`, the package's
path; at the default 576 patches all layers go in one call), at a published shape.

    python benchmarks/merger.py                         # Qwen2.5-VL-7B: 16 layers of 576 patches x 1280 -> 3,584
    python benchmarks/merger.py --family qwen3_vl --patches 1024 --dtype bfloat16

The merger (an MLP over each 2 x 2 group of patches) is the whole cost of a Qwen-VL manager's features. Both
variants run once per round, the order rotated every round; printed: the median time of each, and the median
(min-max) over rounds of the per-round ratio stacked / one call a layer. The outputs are checked equal first.
"""

from __future__ import annotations

import argparse
import statistics
from types import SimpleNamespace

import torch

from llava_manager.analysis.timing import ratio_spread, rounds, timed
from llava_manager.families import get_family
from llava_manager.families.qwen2_vl import merged_layers

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
    inner = SimpleNamespace(visual=visual)

    def per_layer():
        return [merged_layers(inner, [layer], grid)[0] for layer in hidden]

    def stacked():
        return merged_layers(inner, hidden, grid)

    print(f"{name}: {num_layers} layers of {side * side} patches x {config.vision_config.hidden_size}, {args.dtype}")
    with torch.no_grad():
        for a, b in zip(per_layer(), stacked()):
            torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)

        def run(fn):
            return lambda: timed(fn, torch.device("cpu"))

        times = rounds({"one call a layer": run(per_layer), "stacked": run(stacked)}, args.repeats, desc="merger")
    median, low, high = ratio_spread(times, "one call a layer")["stacked"]
    print(
        f"one call a layer {statistics.median(times['one call a layer']) * 1e3:8.1f} ms, stacked "
        f"{statistics.median(times['stacked']) * 1e3:8.1f} ms, ratio x{median:.3f} (x{low:.3f}-x{high:.3f}), "
        f"threads {torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
