"""The paper's analyses as commands; each writes PNG figures and CSV tables to --out.

    python -m llava_manager.analysis weights    --model runs/stage2 --out analysis/
    python -m llava_manager.analysis similarity --model runs/stage2 --compare BASE_DIR --inputs IMAGES --out analysis/
    python -m llava_manager.analysis attention  --model runs/stage2 --compare BASE_DIR --inputs data.json \
        --out analysis/
    python -m llava_manager.analysis siglip     --model runs/stage2 --inputs IMAGES --out analysis/
    python -m llava_manager.analysis budget     --out analysis/          # 0.5B-SI shape, random weights
    python -m llava_manager.analysis budget     --shape llava-1.5-7b --out analysis/     # any published shape
    python -m llava_manager.analysis budget     --shape tiny --family llava_next --out analysis/
    python -m llava_manager.analysis budget     --model runs/stage2 --out analysis/
    python -m llava_manager.analysis layouts    --out analysis/          # every family's defaults, published sizes

--inputs is a folder of images (prompt from a same-named .txt file, else --prompt) or a LLaVA JSON file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..core.config import ManagerConfig
from ..core.persistence import from_pretrained
from ..families import FAMILIES, family_of, get_family
from ..processing.processors import load_processor
from ..processing.prompts import PROMPT_FORMATS, chat_prompt
from . import collect, figures
from .budget import format_table, measure_budget, write_budget
from .inputs import DEFAULT_PROMPT, load_samples
from .layouts import markdown_table, published_layouts, write_layouts

COMMANDS = ("weights", "similarity", "attention", "siglip", "budget", "layouts")
# --shape: "tiny" (of --family), "0.5b" (LLaVA-OneVision-0.5B), or any published checkpoint of any family.
PUBLISHED = {name: (adapter, make) for adapter in FAMILIES.values() for name, (_, make) in adapter.published.items()}
SHAPES = ["tiny", "0.5b", *PUBLISHED]


def load(path: str, device: str):
    return from_pretrained(path, dtype=torch.float32).to(device).eval(), load_processor(path)


def budget(args, parser) -> dict[str, Path]:
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    if args.model and args.shape:
        parser.error("budget takes --model DIR or --shape, not both")
    if args.model:
        model, what = from_pretrained(args.model, dtype=dtype), args.model
    else:
        shape = {None: "0.5b", "0.5b": "llava-onevision-qwen2-0.5b-ov"}.get(args.shape, args.shape)
        adapter, make = (get_family(args.family), None) if shape == "tiny" else PUBLISHED[shape]
        torch.manual_seed(0)
        model = adapter.model_class(adapter.tiny_config() if make is None else make())
        what = f"{adapter.title} {shape} shape, random weights"
    model = model.to(args.device, dtype)
    height, width = args.image_size
    title = (
        f"{what}; {args.device} {str(dtype).replace('torch.', '')}; one sample = {height}x{width} image + "
        f"{args.text_tokens} text tokens; inference = {args.new_tokens} new tokens; batch {args.batch_size}"
    )
    print(f"budget: {title}")
    rows = measure_budget(
        model,
        image_size=(height, width),
        text_tokens=args.text_tokens,
        new_tokens=args.new_tokens,
        batch_size=args.batch_size,
        repeats=args.repeats,
        timings=not args.no_timing,
        config=None if args.interval is None else ManagerConfig(interval=args.interval),
    )
    print(format_table(rows))
    return write_budget(rows, Path(args.out), title)


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(
        prog="python -m llava_manager.analysis",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument(
        "--model", help="a model directory (patched or plain); budget: default the --shape, random weights"
    )
    parser.add_argument("--compare", help="a second model directory drawn on the same plot (e.g. the base model)")
    parser.add_argument("--labels", nargs=2, default=None, metavar=("MODEL", "COMPARE"))
    parser.add_argument("--inputs", help="folder of images or LLaVA JSON file (all but `weights`)")
    parser.add_argument("--image-folder", help="image folder of a JSON file (default: the JSON's folder)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument(
        "--prompt-format",
        choices=PROMPT_FORMATS,
        default=None,
        help="qwen_1_5: the format LLaVA-OneVision was trained with; chat_template: the model "
        "directory's chat template with typed content (default: the family's, as lmms-eval)",
    )
    parser.add_argument("--limit", type=int, default=None, help="use the first N samples")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True)
    budget_args = parser.add_argument_group("budget")
    budget_args.add_argument(
        "--shape",
        choices=SHAPES,
        default=None,
        help="without --model: the model shape built with random weights (default 0.5b); a "
        "published checkpoint's name, or tiny (of --family)",
    )
    budget_args.add_argument(
        "--family", choices=list(FAMILIES), default="llava_onevision", help="the family of --shape tiny"
    )
    budget_args.add_argument("--image-size", type=int, nargs=2, default=[384, 384], metavar=("H", "W"))
    budget_args.add_argument("--text-tokens", type=int, default=400)
    budget_args.add_argument("--new-tokens", type=int, default=8, help="tokens generated per sample (inference)")
    budget_args.add_argument("--batch-size", type=int, default=1)
    budget_args.add_argument("--repeats", type=int, default=3, help="timed rounds (after one warm-up round)")
    budget_args.add_argument(
        "--interval",
        type=int,
        default=None,
        help="+Manager rows: a manager every INTERVAL layers (default: a patched model's own, else 4)",
    )
    budget_args.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="default: bfloat16 on CUDA, float32 on CPU",
    )
    budget_args.add_argument("--no-timing", action="store_true", help="parameters and FLOPs only")
    args = parser.parse_args(argv)
    figures.pyplot()  # fail before any model is loaded or measured, not after
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.command == "layouts":
        rows = published_layouts(None if args.interval is None else ManagerConfig(interval=args.interval))
        print(markdown_table(rows))
        paths = {"table": write_layouts(rows, out)}
        print(f"table: {paths['table']}")
        return paths
    if args.command == "budget":
        paths = budget(args, parser)
        for kind, path in paths.items():
            print(f"{kind}: {path}")
        return paths
    if not args.model:
        parser.error(f"{args.command} needs --model (a model directory)")

    model, processor = load(args.model, args.device)
    if args.command == "weights":
        paths = figures.aggregation_weights(model, out)
    else:
        if not args.inputs:
            parser.error(f"{args.command} needs --inputs (a folder of images or a LLaVA JSON file)")
        labels = args.labels or [Path(args.model).name, Path(args.compare).name if args.compare else ""]
        models = {labels[0]: (model, processor)}
        if args.compare:
            models[labels[1]] = load(args.compare, args.device)
        fmt = args.prompt_format or family_of(model)[0].prompt_format
        for _, p in models.values():  # a template that renders no image placeholder fails here, before any sample
            chat_prompt(p, args.prompt, 1, fmt)
        samples = load_samples(args.inputs, args.image_folder, args.limit, args.prompt, processor=processor)
        marks = collect.injected_layers(model)
        if args.command == "similarity":
            curves = {}
            for label, (m, p) in models.items():
                for part, values in collect.layer_similarity(m, p, samples, fmt).items():
                    curves[f"{label}, {part}"] = values
            paths = figures.per_layer(
                curves,
                "cosine similarity of consecutive decoder layers' outputs",
                "cosine similarity",
                out,
                "layer_similarity",
                marks,
                first_layer=1,
            )
        elif args.command == "attention":
            stats = {label: collect.attention_statistics(m, p, samples, fmt) for label, (m, p) in models.items()}
            paths = {}
            for key, title in (("entropy", "mean attention entropy (nats)"), ("head_kl", "mean KL between heads")):
                curves = {
                    f"{label}, {kind.replace('_', ' ')}": s[f"{kind}_{key}"]
                    for label, s in stats.items()
                    for kind in ("visual", "text_to_visual")
                }
                paths.update(
                    {
                        f"{key}_{k}": v
                        for k, v in figures.per_layer(curves, title, title, out, f"attention_{key}", marks).items()
                    }
                )
        else:
            paths = figures.attention_distance(
                {label: collect.siglip_attention_distance(m, p, samples, fmt) for label, (m, p) in models.items()}, out
            )
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return paths


if __name__ == "__main__":
    main()
