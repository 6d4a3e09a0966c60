"""Padded vs padding-free (packed) training batches, side by side on the same samples: useful-token fraction and
tokens/s, per packed row length.

    python benchmarks/packing.py                                   # small model, CPU, lengths x 0.14; row sweep
    python benchmarks/packing.py --samples 128 --repeats 9
    python benchmarks/packing.py --max-packed-tokens longest 2247   # chosen row lengths only
    python benchmarks/packing.py --shape 0.5b --device cuda --dtype bfloat16 --attn flash_attention_2   # GPU

The samples go through the recipes' own pipeline (`data.SupervisedDataset`: images through the OneVision processor,
conversation template, image tokens expanded), then into batches of `--batch-size` in the same order, collated two
ways: `data.Collator` (right-padded to the batch's longest sample) and `packing.PackingCollator` once per row length
of the sweep (`longest`: each batch's rows as long as its longest sample; a number: rows of at most that many tokens,
shorter rows filled to the longest). The default sweep: `longest`, then fixed rows of 1, 1.5 and 2 times the longest
sample, then the recipes' one-row default of 16,384 real tokens (times the length scale), when longer. The row
length the recipes pick by default for `--attn` (`packing.default_row_length`) is marked.

A training step is a forward and backward over all batches (no optimizer step: the same in both). Each packed
variant is timed against the padded baseline in adjacent pairs, the order within a pair alternating from one
repetition to the next and the variants' order rotating, so the machine's drifts cancel in the per-pair ratios
(padded time / packed time = packed tokens/s / padded tokens/s: the same real tokens). The table gives the median of
those ratios over `--repeats` pairs with their min-max, and the median seconds of each variant.

The length mix (OneVision-like; an assumption, not counted from the released data): a quarter text-only samples of
100-600 tokens; the rest one image each, resized to a grid of a x b crops (a, b in 1..3 at random: 1-9 grid crops plus
the base crop, as anyres_max_9 lays them out, with one newline token per feature row) and 30-300 tokens of text.
At LLaVA-OneVision's real shape a crop is 729 tokens (SigLIP 384 px / 14 px patches = 27 x 27), so an image is 1.5K
to 7.4K tokens. `--shape small` (CPU) keeps that mix scaled down: crops of 10 x 10 = 100 tokens (70 px / 7 px
patches), and text lengths times the same 100 / 729 = 0.14, so the image/text proportions hold; the useful-token
fraction depends only on those proportions, the speed ratio also on the absolute lengths (attention). Its model is a
small random LLaVA-OneVision with managers: Qwen2 128 wide (2 heads of 64), 4 layers, a vocabulary of 3,072, so that
attention and the LM head take about the shares of the model FLOPs they take in the 0.5B model at its own lengths
(~20% and ~20%); SigLIP 32 x 2 layers. `--shape 0.5b` is llava-onevision-qwen2-0.5b's shape with random weights (a
GPU's memory).

Attention: on CPU (SDPA, eager) transformers isolates the packed samples with a block-diagonal mask over each whole
row, so a row of W tokens costs W^2 attention like a padded row of W; with flash_attention_2 (GPU) the packed rows
go through the varlen kernel, which costs only each sample's own length squared.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from llava_manager import apply_manager
from llava_manager.analysis.timing import timed
from llava_manager.families import get_family
from llava_manager.families.llava_onevision import SIGLIP_SO400M, onevision_0_5b_config
from llava_manager.processing.processors import build_processor
from llava_manager.synthetic.data import tiny_tokenizer, vocabulary
from llava_manager.training.data import Collator, SupervisedDataset, model_inputs
from llava_manager.training.packing import LONGEST, PackingCollator, default_row_length, row_length
from llava_manager.training.throughput import COUNTS, count_batch

REAL_CROP_TOKENS = 27 * 27  # LLaVA-OneVision: SigLIP 384 px crops of 14 px patches
SHAPES = {  # patches per crop side, patch px
    "small": dict(side=10, patch=7),
    "0.5b": dict(side=27, patch=14),
}


def build(shape: str):
    """(model, processor) of `shape` with managers; pinpoints 1..3 x 1..3 crops."""
    spec = SHAPES[shape]
    crop = spec["side"] * spec["patch"] if shape == "small" else SIGLIP_SO400M["image_size"]
    pinpoints = [[a * crop, b * crop] for a in (1, 2, 3) for b in (1, 2, 3)]
    tokenizer = tiny_tokenizer()
    adapter = get_family("llava_onevision")
    image_processor = adapter.image_processor_class(
        size={"height": crop, "width": crop}, image_grid_pinpoints=pinpoints
    )
    processor = build_processor(
        image_processor,
        tokenizer,
        family="llava_onevision",
        num_image_tokens=spec["side"] ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    ids = dict(
        image_token_index=processor.image_token_id,
        video_token_index=processor.video_token_id,
        image_grid_pinpoints=pinpoints,
    )
    if shape == "small":
        # the vocabulary gives the LM head its share of the FLOPs; the ids above the tiny tokenizer's go unused
        text = dict(
            model_type="qwen2",
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=3072,
            max_position_embeddings=32768,
            tie_word_embeddings=False,
        )
        vision = dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            patch_size=spec["patch"],
            image_size=crop,
            vision_use_head=False,
        )
        config = adapter.tiny_config(**ids, text_config=text, vision_config=vision)
    else:
        config = onevision_0_5b_config(**ids)
    torch.manual_seed(0)
    return adapter.model_class(config), processor


def write_samples(folder: Path, count: int, crop: int, scale: float, seed: int = 0) -> list[dict]:
    """LLaVA records of the module doc's length mix, their images written under `folder`."""
    rng = random.Random(seed)
    words = [w for w in vocabulary() if w.isalpha()]

    def text(tokens: int) -> str:
        return " ".join(rng.choice(words) for _ in range(max(1, round(tokens * scale))))

    records = []
    for i in range(count):
        if rng.random() < 0.25:
            length = rng.randint(100, 600)
            records.append(
                {
                    "id": f"text{i}",
                    "conversations": [
                        {"from": "human", "value": text(0.3 * length)},
                        {"from": "gpt", "value": text(0.7 * length)},
                    ],
                }
            )
            continue
        rows, cols = rng.randint(1, 3), rng.randint(1, 3)
        name = f"image{i}.png"
        Image.new("RGB", (cols * crop, rows * crop), tuple(rng.randrange(256) for _ in range(3))).save(folder / name)
        length = rng.randint(30, 300)
        records.append(
            {
                "id": f"image{i}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": "<image>\n" + text(0.3 * length)},
                    {"from": "gpt", "value": text(0.7 * length)},
                ],
            }
        )
    return records


def to_device(batch: dict, device, dtype) -> dict:
    out = {}
    for k, v in model_inputs(batch).items():
        if isinstance(v, torch.Tensor):
            v = v.to(device)
            if v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


def step(model, batches) -> None:
    for batch in batches:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)


def paired(baseline, variants: dict, repeats: int) -> tuple[list[float], dict[str, list[float]], dict]:
    """Each variant timed against `baseline` in adjacent pairs, `repeats` pairs each: the order within a pair
    alternates between repetitions, the variants' order rotates. Returns the baseline's times, each variant's times
    and each variant's per-pair ratios (baseline time / variant time). One untimed warm-up call each comes first."""
    names = list(variants)
    baseline()
    for name in names:
        variants[name]()
    base: list[float] = []
    times: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for r in range(repeats):
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            if (r + j) % 2:
                t_variant, t_base = variants[name](), baseline()
            else:
                t_base, t_variant = baseline(), variants[name]()
            base.append(t_base)
            times[name].append(t_variant)
            ratios[name].append(t_base / t_variant)
        print(f"  repetition {r + 1}/{repeats} done ({time.perf_counter() - start:.0f} s)", flush=True)
    return base, times, ratios


def sweep(longest: int, scale: float) -> list[int | str]:
    """The default row lengths: `longest`, 1, 1.5 and 2 x the longest sample, and the one-row default (16,384 real
    tokens x `scale`) when longer."""
    rows: list[int | str] = [LONGEST, longest, round(1.5 * longest), 2 * longest]
    one_row = round(16384 * scale)
    return rows + ([one_row] if one_row > 2 * longest else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="small", choices=list(SHAPES))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--max-packed-tokens",
        type=row_length,
        nargs="+",
        default=None,
        help="row lengths of the packed batches, one variant each: numbers of tokens or 'longest' (default: "
        "longest; 1, 1.5 and 2 x the longest sample; 16,384 x the length scale, the recipes' one-row default)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="padded / packed pairs per variant")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--attn", default="sdpa", help="sdpa, eager or flash_attention_2")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    model, processor = build(args.shape)
    model.set_attn_implementation(args.attn)
    apply_manager(model)
    model.config.use_cache = False
    model.to(device, dtype).train()
    side = SHAPES[args.shape]["side"]
    scale = side**2 / REAL_CROP_TOKENS
    max_length = round(16384 * scale)  # the stages' --max_length, scaled
    with tempfile.TemporaryDirectory() as tmp:
        crop = model.config.vision_config.image_size
        records = write_samples(Path(tmp), args.samples, crop, scale, args.seed)
        dataset = SupervisedDataset(
            records, processor, tmp, "qwen_1_5", max_length=max_length, strict=True, model_config=model.config
        )
        samples = [dataset[i] for i in range(len(dataset))]
    lengths = [len(s["input_ids"]) for s in samples]
    budgets = list(dict.fromkeys(args.max_packed_tokens or sweep(max(lengths), scale)))
    numbers = [b for b in budgets if b != LONGEST]
    if numbers and max(lengths) > min(numbers):
        parser.error(f"the longest sample has {max(lengths)} tokens, over --max-packed-tokens {min(numbers)}")
    default, _ = default_row_length(args.attn, max_length)
    with_images = sum("pixel_values" in s for s in samples)
    pad = processor.tokenizer.pad_token_id
    collators = {"padded": Collator(pad)}
    collators.update({f"packed {b}": PackingCollator(pad, max_packed_tokens=b) for b in budgets})
    groups = [samples[i : i + args.batch_size] for i in range(0, len(samples), args.batch_size)]
    batches = {name: [collate(g) for g in groups] for name, collate in collators.items()}
    image_token = model.config.image_token_id
    totals = {
        name: {k: sum(count_batch(b, image_token)[i].item() for b in bs) for i, k in enumerate(COUNTS)}
        for name, bs in batches.items()
    }
    shapes = {
        name: sorted({tuple(b["input_ids"].shape) for b in bs}, key=lambda s: -s[0] * s[1])
        for name, bs in batches.items()
    }
    inputs = {name: [to_device(b, device, dtype) for b in bs] for name, bs in batches.items()}

    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
        f"{args.dtype}, {args.attn}, threads {torch.get_num_threads()}; shape {args.shape}, crops of {side}x{side} "
        f"= {side**2} tokens, text lengths x {scale:.2f}"
    )
    print(
        f"{len(samples)} samples: {len(samples) - with_images} text-only, {with_images} with one image of 2-10 "
        f"crops; tokens per sample min {min(lengths)}, median {statistics.median(lengths):.0f}, mean "
        f"{statistics.mean(lengths):.0f}, max {max(lengths)}"
    )
    print(
        f"{len(groups)} batches of {args.batch_size}; packed rows of {', '.join(map(str, budgets))} tokens "
        f"(longest: each batch's longest sample); the recipes' default for {args.attn}: {default} (marked *)"
    )

    model.eval()  # the same losses every way (no manager noise in eval mode)
    with torch.no_grad():
        reference = [model(**b).loss.item() for b in inputs["padded"][:2]]
        diff = max(
            abs(model(**b).loss.item() - r)
            for name in inputs
            if name != "padded"
            for b, r in zip(inputs[name][:2], reference)
        )
    model.train()

    def run(bs):
        return lambda: timed(lambda: step(model, bs), device)

    packed = {name: run(bs) for name, bs in inputs.items() if name != "padded"}
    print(f"\ntiming: {len(packed)} packed variants x {args.repeats} pairs with the padded step", flush=True)
    base, times, ratios = paired(run(inputs["padded"]), packed, args.repeats)

    print(f"\nloss, padded vs packed, first two batches: max difference {diff:.2e}\n")
    print(
        f"{'':<16}{'batch shapes (rows x width)':>32}{'computed':>10}{'real':>9}{'useful':>8}{'s / epoch':>11}"
        f"{'tokens/s':>10}{'packed / padded tokens/s':>32}"
    )
    for name in inputs:
        t = totals[name]
        computed = t["tokens"] + t["padding"]
        seconds = statistics.median(base if name == "padded" else times[name])
        listed = ", ".join(f"{r}x{w}" for r, w in shapes[name][:3]) + (", ..." if len(shapes[name]) > 3 else "")
        if name == "padded":
            versus = "x1 (baseline)"
        else:
            r = ratios[name]
            versus = f"x{statistics.median(r):.2f} (x{min(r):.2f}-x{max(r):.2f})"
        label = name + (" *" if name == f"packed {default}" else "")
        print(
            f"{label:<16}{listed:>32}{computed:>10,}{t['tokens']:>9,}{t['tokens'] / computed:>8.1%}{seconds:>11.2f}"
            f"{t['tokens'] / seconds:>10,.0f}{versus:>32}"
        )
    print(
        f"\npacked / padded tokens/s: the median of {args.repeats} per-pair ratios (padded time / packed time, each "
        f"pair back to back, the order alternating), min-max in brackets; s / epoch and tokens/s: medians. Per pair:"
    )
    for name in packed:
        print(f"  {name}: " + ", ".join(f"x{q:.2f}" for q in ratios[name]))


if __name__ == "__main__":
    main()
