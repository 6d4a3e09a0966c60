"""Manager overhead per family, base vs patched side by side (random weights).

    python benchmarks/overhead.py --family all            # every family; CPU, fp32
    python benchmarks/overhead.py --family llava_next --checkpoint llava-v1.6-mistral-7b
    python benchmarks/overhead.py --family llava --device cuda --dtype bfloat16 --full-depth   # real shape, timed

Input per sample: one image (336 x 336, 384 x 384 for OneVision, or `--image-side`; the family's own crops, grids or
patch grid; the fixed-size towers of InternVL and Gemma 3 take one tile of their own size) and, for the families that
take videos, a 4-frame video, then a 40-token prompt.

1. FLOPs at the real published shape, counted by torch's flop counter, not timed (a 7B model does not fit this
   machine in fp32). Every decoder layer of a model has the same shape and sees the same tokens, so FLOPs are
   affine in the decoder depth: base and patched prefills are counted with 1 and 2 decoder layers at the real
   widths and the real vision tower, and carried to the real depth (patched: a manager before each layer, then
   the real number of managers). The counter counts matmuls, convolutions and attention, not elementwise work.
2. Time at a reduced-depth shape (the real widths and vision tower, `--text-layers` decoder layers, managers
   every 4th, or every `--intervals` given): prefill (and with --train, a training step), base and each patched
   variant once per round, the order rotated every round, each ratio the median over rounds of the per-round
   ratios, printed with its min-max; next to its FLOP floor, the counted FLOP ratio of that same shape; and the time
   per cached decode step (no media tokens, so the floor is 1). `--intervals 1 4` also prints interval 1 over
   interval 4, round by round. With --full-depth the real shape is timed instead (the 0.5B one fits a CPU).
3. With --memory, the peak memory of one prefill, base and patched, as torch's MemTracker counts the tensors
   (parameters included), on any device.

    python benchmarks/overhead.py --family llava_onevision --full-depth --skip-flops --intervals 1 4 --memory
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time

import torch

from llava_manager import apply_manager, manager_plan, remove_manager
from llava_manager.analysis.timing import count_flops, peak_tensor_bytes, ratio_spread, rounds, sync, timed
from llava_manager.families import FAMILIES, get_family, random_inputs

IMAGE_SIDE = {"llava_onevision": 384}  # others: 336
FRAMES = 4


def build(adapter, make_config, text_layers, device, dtype):
    """The model of `make_config` with `text_layers` decoder layers: a count (the first layers of the real stack),
    a list of layer kinds (`layer_types`), or None for the real depth."""
    config = make_config()
    if text_layers is not None:
        kinds = getattr(config.text_config, "layer_types", None)
        if isinstance(text_layers, int):
            text_layers = kinds[:text_layers] if kinds else [None] * text_layers
        config.text_config.num_hidden_layers = len(text_layers)
        if kinds:
            config.text_config.layer_types = list(text_layers)
    torch.manual_seed(0)
    return adapter.model_class(config).to(device, dtype).eval()


def inputs_for(model, adapter, prompt_tokens: int, side: int | None = None):
    side = side or IMAGE_SIDE.get(adapter.name, 336)
    return random_inputs(model, side, side, prompt_tokens, video_frames=FRAMES if adapter.has_video else 0)


def prefill(model, inputs):
    with torch.no_grad():
        return model(**inputs, logits_to_keep=1)


def decode(model, inputs, steps: int = 16) -> float:
    """Seconds per cached decode step after an untimed prefill (no media tokens: the managers must do nothing)."""
    # transformers >= 5.24 takes and returns the cache as `cache` (`past_key_values` before, deprecated since)
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def cache_of(out):
        return out.cache if getattr(out, "cache", None) is not None else out.past_key_values

    with torch.no_grad():
        out = model(**inputs, logits_to_keep=1, use_cache=True)
        cache, token, mask = cache_of(out), out.logits[:, -1:].argmax(-1), inputs["attention_mask"]
        start = None
        for step in range(steps + 1):
            if step == 1:  # the first step builds what the cache needs; time the rest
                sync(token.device)
                start = time.perf_counter()
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            out = model(input_ids=token, attention_mask=mask, use_cache=True, **{name: cache})
            cache, token = cache_of(out), out.logits[:, -1:].argmax(-1)
        sync(token.device)
        return (time.perf_counter() - start) / steps


def train_step(model, inputs):
    model.zero_grad(set_to_none=True)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()


def counted(model, inputs, fn=prefill, **manager) -> tuple[int, int]:
    inference = model if fn is prefill else None
    base = count_flops(lambda: fn(model, inputs), inference_of=inference)
    apply_manager(model, **manager)
    try:
        patched = count_flops(lambda: fn(model, inputs), inference_of=inference)
    finally:
        remove_manager(model)
    return base, patched


def peak_memory(model, inputs) -> int:
    """Peak bytes of tensors alive during one prefill, parameters included (torch's MemTracker, any device)."""
    return peak_tensor_bytes(lambda: prefill(model, inputs), model)


def spread(stats) -> str:
    median, low, high = stats
    return f"x{median:.4f} (x{low:.4f}-x{high:.4f})"


def published_or_default(adapter) -> dict:
    """The family's published shapes; for a family with none on record (Qwen3.5), its config class's defaults."""
    if adapter.published:
        return adapter.published
    name = f"{adapter.config_class.__name__} defaults (no published config on record)"

    def defaults():
        config = adapter.config_class()
        vision = getattr(config, "vision_config", None)
        if hasattr(vision, "out_hidden_size"):  # Qwen3.5's defaults merge into 3,584 channels for a 4,096-wide LLM
            vision.out_hidden_size = config.text_config.hidden_size
        return config

    return {"defaults": (name, defaults)}


def layer_kinds(text_config) -> list[str]:
    """Each decoder layer's kind as far as FLOPs go: Qwen3.5's linear-attention layers differ from its full-attention
    ones; sliding-window layers count as full attention (on prompts shorter than the window they compute the same
    matmuls); a stack without `layer_types` is uniform."""
    kinds = getattr(text_config, "layer_types", None) or ["full_attention"] * text_config.num_hidden_layers
    return [kind.replace("sliding_attention", "full_attention") for kind in kinds]


def published_flops(adapter, make_config, args, device, dtype) -> dict:
    """Base and patched prefill FLOPs at the real depth, from counts of one- and two-layer models at the real widths
    (see the module doc): everything outside the decoder layers is the same in each, so a layer of each kind, and
    a manager, cost the differences between them."""
    real = make_config()
    depth = real.text_config.num_hidden_layers
    kinds = layer_kinds(real.text_config)
    # A full-attention layer in every counted stack: transformers cannot run a stack of linear-attention layers only.
    anchor = "full_attention" if "full_attention" in kinds else kinds[0]
    stacks = {"one": [anchor], "two": [anchor, anchor]}
    stacks |= {kind: [kind, anchor] for kind in dict.fromkeys(kinds) if kind != anchor}
    counts = {}
    for name, stack in stacks.items():
        model = build(adapter, make_config, stack, device, dtype)
        inputs = inputs_for(model, adapter, args.prompt_tokens, args.image_side)
        counts[name] = counted(model, inputs, inject_layers=list(range(len(stack))))
        tokens = inputs["input_ids"].shape[1]
        media = {
            name: int((inputs["input_ids"] == getattr(model.config, f"{name}_token_id", -1)).sum())
            for name in ("image", "video")
        }
        del model
    (b1, p1), (b2, p2) = counts["one"], counts["two"]
    per_manager = (p2 - b2) - (p1 - b1)
    per_kind = {anchor: b2 - b1}
    per_kind |= {kind: counts[kind][0] - b1 for kind in stacks if kind not in ("one", "two")}
    outside = b1 - per_kind[anchor]  # embeddings, vision tower, head: a one-layer model less its layer
    once = (p1 - b1) - per_manager  # the aggregated layers through the projector and the layout, once per forward
    managers = len(range(0, depth, 4))
    base = outside + sum(per_kind[kind] for kind in kinds)
    patched = base + once + managers * per_manager
    return dict(tokens=tokens, media=media, depth=depth, managers=managers, base=base, patched=patched)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="all", choices=["all", *FAMILIES])
    parser.add_argument("--checkpoint", default=None, help="a published checkpoint of --family (default: its first)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=40)
    parser.add_argument("--image-side", type=int, default=None, help="image height and width in px")
    parser.add_argument("--text-layers", type=int, default=4, help="decoder layers of the timed reduced-depth shape")
    parser.add_argument("--full-depth", action="store_true", help="time the real shape (needs a GPU's memory)")
    parser.add_argument("--train", action="store_true", help="also time a training step (forward + backward)")
    parser.add_argument(
        "--intervals", type=int, nargs="+", default=[4], help="time managers at these intervals (e.g. 1 4)"
    )
    parser.add_argument("--memory", action="store_true", help="peak memory of a prefill, base and patched")
    parser.add_argument("--skip-decode", action="store_true", help="do not time cached decode steps")
    parser.add_argument("--tiny", action="store_true", help="the family's tiny test model (a dry run of the script)")
    parser.add_argument("--skip-time", action="store_true", help="the published-shape FLOPs only")
    parser.add_argument("--skip-flops", action="store_true", help="the reduced-depth timing only")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    families = list(FAMILIES) if args.family == "all" else [args.family]
    if args.checkpoint and len(families) != 1:
        parser.error("--checkpoint needs one --family")
    print(f"device {device}, {args.dtype}, threads {torch.get_num_threads()}")

    table = []
    for name in families:
        adapter = get_family(name)
        shapes = {"tiny": ("the tiny test model", adapter.tiny_config)} if args.tiny else published_or_default(adapter)
        checkpoint = args.checkpoint or next(iter(shapes))
        if checkpoint not in shapes:
            parser.error(f"{adapter.title} checkpoints: {', '.join(shapes)}; got {checkpoint!r}")
        hub_id, make_config = shapes[checkpoint]
        print(f"\n== {adapter.title}: {hub_id}")
        row = [adapter.title, float("nan")]
        if not args.skip_flops:
            real = published_flops(adapter, make_config, args, device, dtype)
            print(
                f"   input {real['tokens']} tokens ({real['media']['image']} image, {real['media']['video']} video); "
                f"{real['managers']} managers over {real['depth']} decoder layers"
            )
            print(
                f"   prefill FLOPs at the published shape (counted): base {real['base'] / 1e12:.3f} T, patched "
                f"{real['patched'] / 1e12:.3f} T, ratio x{real['patched'] / real['base']:.4f}"
            )
            row[1] = real["patched"] / real["base"]
        if not args.skip_time:
            layers = None if args.full_depth else args.text_layers
            model = build(adapter, make_config, layers, device, dtype)
            inputs = inputs_for(model, adapter, args.prompt_tokens, args.image_side)
            shape = "published" if layers is None else f"{layers} decoder layers"
            fn = train_step if args.train else prefill
            if args.train:
                model.train()
            first = args.intervals[0]
            base_flops, patched_flops = counted(model, inputs, fn=fn, interval=first)
            floor = patched_flops / base_flops

            def variants(measure):
                def patched_at(interval):
                    def run():
                        apply_manager(model, interval=interval)
                        try:
                            return measure()
                        finally:
                            remove_manager(model)

                    return run

                return {"base": measure} | {f"interval {i}": patched_at(i) for i in args.intervals}

            fn(model, inputs)  # warm-up
            what = "train step" if args.train else "prefill"
            times = rounds(
                variants(lambda: timed(lambda: fn(model, inputs), device)),
                args.repeats,
                desc=f"{adapter.title} {what}",
                warmup=False,
            )
            ratios = ratio_spread(times, "base")
            ratio = ratios[f"interval {first}"][0]
            model.eval()
            steps, decode_ratio = None, float("nan")
            if not args.skip_decode:
                steps = rounds(variants(lambda: decode(model, inputs)), args.repeats, desc=f"{adapter.title} decode")
                decode_ratio = ratio_spread(steps, "base")[f"interval {first}"][0]
            print(
                f"   {what} time at {shape}, {args.repeats} rounds: "
                f"base {statistics.median(times['base']) * 1e3:.0f} ms"
            )
            for interval in args.intervals:
                apply_manager(model, interval=interval)
                plan = manager_plan(model)
                remove_manager(model)
                name = f"interval {interval}"
                print(
                    f"     {name} ({len(plan['inject_layers'])} managers x {len(plan['vision_layers'])} vision "
                    "layers): "
                    f"{statistics.median(times[name]) * 1e3:.0f} ms, ratio {spread(ratios[name])}"
                    + (f", FLOP floor x{floor:.4f}" if interval == first else "")
                )
            if 1 in args.intervals and 4 in args.intervals:
                print(
                    "     interval 1 / interval 4, round by round: "
                    + spread(ratio_spread(times, "interval 4")["interval 1"])
                )
            if steps is not None:
                print(
                    f"   decode per token: base {statistics.median(steps['base']) * 1e3:.1f} ms, "
                    f"interval {first} {statistics.median(steps[f'interval {first}']) * 1e3:.1f} ms, "
                    f"ratio {spread(ratio_spread(steps, 'base')[f'interval {first}'])} (floor x1)"
                )
            if args.memory:
                base_peak = peak_memory(model, inputs)
                apply_manager(model, interval=first)
                try:
                    patched_peak = peak_memory(model, inputs)
                finally:
                    remove_manager(model)
                print(
                    f"   peak memory of a prefill (MemTracker, parameters included): base {base_peak / 2**20:.1f} MiB, "
                    f"interval {first} {patched_peak / 2**20:.1f} MiB, +{(patched_peak - base_peak) / 2**20:.1f} MiB "
                    f"(x{patched_peak / base_peak:.4f})"
                )
            row += [shape, ratio, floor, decode_ratio]
            del model
        table.append(row)

    print(
        f"\n{'family':<18}{'FLOPs, published':>18}"
        + (
            ""
            if args.skip_time
            else f"{'timed shape':>20}{'time ratio':>12}{'FLOP floor':>12}{'ratio - floor':>15}{'decode ratio':>14}"
        )
    )
    for row in table:
        line = f"{row[0]:<18}{'x' + format(row[1], '.4f'):>18}"
        if len(row) > 2:
            line += (
                f"{row[2]:>20}{'x' + format(row[3], '.4f'):>12}{'x' + format(row[4], '.4f'):>12}"
                f"{row[3] - row[4]:>+15.4f}{'x' + format(row[5], '.4f'):>14}"
            )
        print(line)


if __name__ == "__main__":
    main()
