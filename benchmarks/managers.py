"""The managers' own work in one prefill, side by side: every manager run on its own (each reads every aggregated
layer: `ManagerStack(features, index)` per manager) vs one pass for all of them (`ManagerStack(features)`).

    python benchmarks/managers.py                       # the 0.5B OneVision shape: 13 layers x 896, 2,270 tokens
    python benchmarks/managers.py --tokens 1216 --hidden 4096 --layers 12 --dtype bfloat16   # NeXT-7B's

Features are laid out as the families give them (groups cut from folded `(tokens, layers * hidden)` tensors: an
image's base and grid tokens, a video). For 6 managers (interval 4 over 24 decoder layers) and 24 (interval 1),
without and with autograd (forward + backward of the terms), each variant runs once per round, the order rotated
every round; printed: the median time of each, and the median (min-max) over rounds of the per-round ratio one pass /
each on its own. The terms are checked equal first.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from llava_manager.analysis.timing import ratio_spread, rounds, timed
from llava_manager.core.managers import Manager, ManagerStack
from llava_manager.families.base import unfold_groups


def features(groups, layers, hidden, dtype, requires_grad):
    torch.manual_seed(0)
    folded = [torch.randn(n, layers * hidden, dtype=dtype, requires_grad=requires_grad) for n in groups]
    return unfold_groups(folded, layers)


def stack_of(managers, layers, hidden, dtype, requires_grad):
    torch.manual_seed(1)
    stack = ManagerStack([Manager(4 * i, range(layers), hidden, dtype=dtype) for i in range(managers)]).eval()
    with torch.no_grad():
        for m in stack:
            m.weight.normal_()
    return stack.requires_grad_(requires_grad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1485, 785], help="rows of each token group")
    parser.add_argument("--layers", type=int, default=13, help="aggregated vision layers")
    parser.add_argument("--hidden", type=int, default=896, help="the LLM's width")
    parser.add_argument("--managers", type=int, nargs="+", default=[6, 24])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    device = torch.device("cpu")
    print(
        f"{sum(args.tokens)} tokens in groups of {args.tokens}, {args.layers} layers x {args.hidden}, {args.dtype}, "
        f"threads {torch.get_num_threads()}"
    )
    for grad in (False, True):
        grouped = features(args.tokens, args.layers, args.hidden, dtype, grad)
        for count in args.managers:
            stack = stack_of(count, args.layers, args.hidden, dtype, grad)

            def each():
                return torch.stack([stack(grouped, i) for i in range(count)])

            def together():
                return stack(grouped)

            with torch.no_grad():
                assert torch.equal(each(), together()), "the one pass must give each manager's own terms"

            def run(fn):
                def measure():
                    if not grad:
                        with torch.no_grad():
                            return timed(fn, device)
                    return timed(lambda: fn().sum().backward(), device)

                return measure

            times = rounds(
                {"each on its own": run(each), "one pass": run(together)},
                args.repeats,
                desc=f"{count} managers{' (autograd)' if grad else ''}",
            )
            median, low, high = ratio_spread(times, "each on its own")["one pass"]
            print(
                f"{count:>3} managers, {'forward + backward' if grad else 'forward (no grad)':<18}: each on its own "
                f"{statistics.median(times['each on its own']) * 1e3:8.1f} ms, one pass "
                f"{statistics.median(times['one pass']) * 1e3:8.1f} ms, ratio x{median:.3f} (x{low:.3f}-x{high:.3f})"
            )


if __name__ == "__main__":
    main()
