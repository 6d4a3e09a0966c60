"""Demo: patch a LLaVA-family model built in code, count what was added, generate with an image.

python -m llava_manager                 # tiny random model, a few seconds on a laptop CPU
python -m llava_manager --interval 1    # a manager before every decoder layer
python -m llava_manager --family llava_next_video     # any family: llava, llava_next, llava_next_video
python -m llava_manager --shape 0.5b    # the real 0.5B-SI shape (random weights, ~4 GB RAM, slower)
"""

from __future__ import annotations

import argparse
import time

import torch

from . import ManagerConfig, apply_manager, get_managers, manager_plan, remove_manager
from .families import FAMILIES, get_family, random_inputs
from .families.llava_onevision import onevision_0_5b_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--family",
        choices=list(FAMILIES),
        default="llava_onevision",
        help="the family of the tiny model (--shape 0.5b is LLaVA-OneVision)",
    )
    parser.add_argument("--shape", choices=["tiny", "0.5b"], default="tiny")
    parser.add_argument("--interval", type=int, default=4)
    parser.add_argument("--vision-layers", default="top_half", help="top_half | bottom_half | all")
    parser.add_argument("--manage", default="both", choices=["both", "base", "grids"])
    parser.add_argument("--max-new-tokens", type=int, default=12)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    adapter = get_family(args.family if args.shape == "tiny" else "llava_onevision")
    config = adapter.tiny_config() if args.shape == "tiny" else onevision_0_5b_config()
    model = adapter.model_class(config).eval()
    size = config.vision_config.image_size
    inputs = random_inputs(model, int(size * 1.5), size * 2, video_frames=2 if adapter.has_video else 0)
    base_params = sum(p.numel() for p in model.parameters())
    base_tokens = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)

    apply_manager(model, ManagerConfig(interval=args.interval, vision_layers=args.vision_layers, manage=args.manage))
    plan = manager_plan(model)
    added = sum(p.numel() for p in model.parameters()) - base_params
    media = f"{int((inputs['input_ids'] == config.image_token_id).sum())} image tokens"
    if "pixel_values_videos" in inputs:
        media += f", {int((inputs['input_ids'] == config.video_token_id).sum())} video tokens (2 frames)"
    print(
        f"model: {adapter.title} {args.shape} (LLM {plan['num_decoder_layers']} layers x {plan['text_hidden_size']}), "
        f"one {int(size * 1.5)} x {size * 2} px image -> {media}"
    )
    print(f"managers before decoder layers {plan['inject_layers']}, aggregating vision layers {plan['vision_layers']}")
    print(
        f"parameters: base {base_params:,} + managers {added:,} "
        f"(= {len(plan['inject_layers'])} x {len(plan['vision_layers'])} x {plan['text_hidden_size']})"
    )

    start = time.perf_counter()
    tokens = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    elapsed = time.perf_counter() - start
    print(f"zero-initialised managers: same tokens as the base model: {torch.equal(tokens, base_tokens)}")
    with torch.no_grad():
        for manager in get_managers(model):
            manager.weight.normal_(std=0.5)
    moved = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    n = inputs["input_ids"].shape[1]
    print(f"generated ({elapsed:.2f} s): {tokens[0, n:].tolist()}")
    print(f"with non-zero managers:      {moved[0, n:].tolist()}")
    remove_manager(model)
    restored = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    print(f"after remove_manager, same tokens as the base model: {torch.equal(restored, base_tokens)}")


if __name__ == "__main__":
    main()
