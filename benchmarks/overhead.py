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
   every 4th): prefill (and with --train, a training step), base and patched in adjacent pairs, the order
   alternating, the ratio the median of per-pair ratios; next to its FLOP floor, the counted FLOP ratio of that
   same shape; and the time per cached decode step (no media tokens, so the floor is 1). With --full-depth (a GPU)
   the real shape is timed instead.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from llava_manager import apply_manager, manager_plan, remove_manager
from llava_manager.analysis.timing import count_flops, ratio_to, rounds, sync, timed
from llava_manager.families import FAMILIES, get_family, random_inputs

IMAGE_SIDE = {"llava_onevision": 384}  # others: 336
FRAMES = 4


def build(adapter, make_config, text_layers: int | None, device, dtype):
    config = make_config()
    if text_layers is not None:
        config.text_config.num_hidden_layers = text_layers
        kinds = getattr(config.text_config, "layer_types", None)
        if kinds:  # the first `text_layers` of the real stack (a whole number of runs of layer kinds)
            config.text_config.layer_types = [kinds[i % len(kinds)] for i in range(text_layers)]
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
    with torch.no_grad():
        out = model(**inputs, logits_to_keep=1, use_cache=True)
        cache, token, mask = out.past_key_values, out.logits[:, -1:].argmax(-1), inputs["attention_mask"]
        start = None
        for step in range(steps + 1):
            if step == 1:  # the first step builds what the cache needs; time the rest
                sync(token.device)
                start = time.perf_counter()
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            out = model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        sync(token.device)
        return (time.perf_counter() - start) / steps


def train_step(model, inputs):
    model.zero_grad(set_to_none=True)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()


@contextlib.contextmanager
def frozen(model, when: bool = True):
    """Parameters not requiring grad for a while: torch's flop counter fails on the PyTorch fallback of Qwen3.5's
    linear attention when they do, even under no_grad ("Expected gradient function to be set")."""
    flags = [(p, p.requires_grad) for p in model.parameters()] if when else []
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def counted(model, inputs, fn=prefill, **manager) -> tuple[int, int]:
    with frozen(model, when=fn is prefill):
        base = count_flops(lambda: fn(model, inputs))
        apply_manager(model, **manager)
        try:
            patched = count_flops(lambda: fn(model, inputs))
        finally:
            remove_manager(model)
    return base, patched


def layer_period(text_config) -> int:
    """The shortest repeating run of decoder layer kinds: 1 for uniform stacks, 4 for Qwen3.5's three linear-attention
    layers and one full-attention layer. FLOPs are affine in the number of such runs. Sliding-window layers count as
    full attention: on prompts shorter than the window they compute the same matmuls."""
    kinds = [k.replace("sliding_attention", "full_attention") for k in getattr(text_config, "layer_types", None) or []]
    depth = text_config.num_hidden_layers
    for period in range(1, depth + 1):
        if depth % period == 0 and all(kinds[i] == kinds[i % period] for i in range(len(kinds))):
            return period
    return depth


def published_flops(adapter, make_config, args, device, dtype) -> dict:
    """Base and patched prefill FLOPs at the real depth, from counts at one and two runs of layer kinds (one and
    two layers for uniform stacks; see the module doc)."""
    real = make_config()
    depth = real.text_config.num_hidden_layers
    period = layer_period(real.text_config)
    counts = {}
    for runs in (1, 2):
        layers = runs * period
        model = build(adapter, make_config, layers, device, dtype)
        inputs = inputs_for(model, adapter, args.prompt_tokens, args.image_side)
        counts[runs] = counted(model, inputs, inject_layers=list(range(layers)))
        tokens = inputs["input_ids"].shape[1]
        media = {
            name: int((inputs["input_ids"] == getattr(model.config, f"{name}_token_id", -1)).sum())
            for name in ("image", "video")
        }
        del model
    (b1, p1), (b2, p2) = counts[1], counts[2]
    per_run, per_manager = b2 - b1, ((p2 - b2) - (p1 - b1)) // period
    once = (p1 - b1) - period * per_manager  # the aggregated layers through the projector and layout, once
    managers = len(range(0, depth, 4))
    base = b1 + (depth // period - 1) * per_run
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
        checkpoint = args.checkpoint or next(iter(adapter.published))
        if checkpoint not in adapter.published:
            parser.error(f"{adapter.title} checkpoints: {', '.join(adapter.published)}; got {checkpoint!r}")
        hub_id, make_config = adapter.published[checkpoint]
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
            base_flops, patched_flops = counted(model, inputs, fn=fn)
            floor = patched_flops / base_flops

            def pair(measure):
                def patched_run():
                    apply_manager(model)
                    try:
                        return measure()
                    finally:
                        remove_manager(model)

                return {"base": measure, "patched": patched_run}

            fn(model, inputs)  # warm-up
            what = "train step" if args.train else "prefill"
            times = rounds(
                pair(lambda: timed(lambda: fn(model, inputs), device)),
                args.repeats,
                desc=f"{adapter.title} {what}",
                warmup=False,
            )
            ratio = ratio_to(times, "base")["patched"]
            model.eval()
            steps = rounds(pair(lambda: decode(model, inputs)), args.repeats, desc=f"{adapter.title} decode")
            decode_ratio = ratio_to(steps, "base")["patched"]
            apply_manager(model)
            plan = manager_plan(model)
            remove_manager(model)
            print(
                f"   {what} time at {shape} ({len(plan['inject_layers'])} managers x {len(plan['vision_layers'])} "
                f"vision layers): base {statistics.median(times['base']) * 1e3:.0f} ms, patched "
                f"{statistics.median(times['patched']) * 1e3:.0f} ms, ratio x{ratio:.4f}, FLOP floor x{floor:.4f}"
            )
            print(
                f"   decode per token: base {statistics.median(steps['base']) * 1e3:.1f} ms, patched "
                f"{statistics.median(steps['patched']) * 1e3:.1f} ms, ratio x{decode_ratio:.4f} (floor x1)"
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
