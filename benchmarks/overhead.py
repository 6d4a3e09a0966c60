"""Manager overhead at the real LLaVA-OneVision-0.5B-SI shape (random weights), base vs patched side by side.

    python benchmarks/overhead.py                      # CPU, fp32, ~10 min on 2 cores
    python benchmarks/overhead.py --device cuda --dtype bfloat16

One 384 x 384 image (anyres: base crop + one grid crop, 1,485 image tokens) and a 40-token prompt. Prints, for
each measurement, the median time of the base model, of the patched model, the median of the per-pair ratios, and
the method's FLOP floor: 1 + (aggregated layers x crop tokens x projector FLOPs) / (base FLOPs), base FLOPs counted
by torch's flop counter. Base and patched runs come in adjacent pairs, in alternating order, to cancel drift.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlavaOnevisionForConditionalGeneration
from transformers.cache_utils import DynamicCache

from llava_manager import apply_manager, manager_plan, remove_manager
from llava_manager.analysis.timing import count_flops, rounds, ratio_to, sync, timed
from llava_manager.families import random_inputs
from llava_manager.families.llava_onevision import onevision_0_5b_config


def prefill(model, inputs):
    with torch.no_grad():
        return model(**inputs, logits_to_keep=1, use_cache=True)


def decode(model, inputs, steps):
    """Per-token time of `steps` cached decode steps after an untimed prefill."""
    with torch.no_grad():
        out = model(**inputs, logits_to_keep=1, use_cache=True, past_key_values=DynamicCache())
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        mask = inputs["attention_mask"]
        device = token.device
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
            out = model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        sync(device)
        return (time.perf_counter() - start) / steps


def train_step(model, inputs):
    model.zero_grad(set_to_none=True)
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()


def compare(name, base_fn, patched_fn, repeats, floor, results):
    """Base and patched in adjacent pairs, the order alternating between pairs; the ratio is the median of the
    per-pair ratios, so that slow drifts of the machine (clock, other load) cancel within each pair."""
    times = rounds({"base": base_fn, "patched": patched_fn}, repeats, desc=name, warmup=False)
    ratio = ratio_to(times, "base")["patched"]
    results.append((name, statistics.median(times["base"]), statistics.median(times["patched"]), ratio, floor))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=40)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    torch.manual_seed(0)
    config = onevision_0_5b_config()
    model = LlavaOnevisionForConditionalGeneration(config).to(device, dtype).eval()
    inputs = {k: v.to(device) for k, v in random_inputs(model, 384, 384, args.prompt_tokens).items()}
    crops = inputs["pixel_values"].shape[1]
    crop_tokens = crops * (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    v, d = config.vision_config.hidden_size, config.text_config.hidden_size
    projector_flops_per_token = 2 * (v * d + d * d)
    print(f"device {device}, {dtype}, threads {torch.get_num_threads()}; input: {inputs['input_ids'].shape[1]} tokens "
          f"({int((inputs['input_ids'] == config.image_token_id).sum())} image tokens, {crops} crops)")

    base_flops = count_flops(lambda: prefill(model, inputs))
    apply_manager(model, interval=4)
    num_vision = len(manager_plan(model)["vision_layers"])
    patched_flops = count_flops(lambda: prefill(model, inputs))
    remove_manager(model)
    floor = 1 + num_vision * crop_tokens * projector_flops_per_token / base_flops
    print(f"prefill FLOPs: base {base_flops / 1e9:,.1f} G, patched {patched_flops / 1e9:,.1f} G "
          f"(counted x{patched_flops / base_flops:.4f}); floor x{floor:.4f} = 1 + {num_vision} layers x "
          f"{crop_tokens} crop tokens x {projector_flops_per_token / 1e6:.2f} MFLOP / base")

    # One model object, patched and unpatched in turn: identical weights, identical memory placement.
    def run_patched(interval, fn):
        def go():
            apply_manager(model, interval=interval)
            try:
                return fn()
            finally:
                remove_manager(model)
        return go

    results = []
    prefill(model, inputs)  # warm-up
    compare("prefill, interval 4", lambda: timed(lambda: prefill(model, inputs), device),
            run_patched(4, lambda: timed(lambda: prefill(model, inputs), device)), args.repeats, floor, results)
    compare("prefill, interval 1 vs 4", run_patched(4, lambda: timed(lambda: prefill(model, inputs), device)),
            run_patched(1, lambda: timed(lambda: prefill(model, inputs), device)), args.repeats, 1.0, results)
    compare("decode per token", lambda: decode(model, inputs, args.decode_steps),
            run_patched(4, lambda: decode(model, inputs, args.decode_steps)), args.repeats, 1.0, results)

    if not args.skip_train:
        model.train()
        base_train = count_flops(lambda: train_step(model, inputs))
        apply_manager(model)
        train_floor = count_flops(lambda: train_step(model, inputs)) / base_train
        remove_manager(model)
        compare("train step (fwd+bwd)", lambda: timed(lambda: train_step(model, inputs), device),
                run_patched(4, lambda: timed(lambda: train_step(model, inputs), device)),
                args.repeats, train_floor, results)

    print(f"\n{'measurement':<26}{'base':>12}{'patched':>12}{'ratio':>9}{'floor':>9}{'ratio - floor':>15}")
    for name, b, p, ratio, fl in results:
        unit = "ms" if b < 1 else "s"
        scale = 1e3 if unit == "ms" else 1
        print(f"{name:<26}{b * scale:>10.2f}{unit:>2}{p * scale:>10.2f}{unit:>2}{ratio:>9.4f}{fl:>9.4f}{ratio - fl:>+15.4f}")
    print("(interval 1 vs 4: 'base' is the interval-4 patched model)")


if __name__ == "__main__":
    main()
