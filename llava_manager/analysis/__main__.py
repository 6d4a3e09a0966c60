"""The paper's analyses as commands; each writes PNG figures and CSV tables to --out.

    python -m llava_manager.analysis weights    --model runs/stage2 --out analysis/
    python -m llava_manager.analysis similarity --model runs/stage2 --compare BASE_DIR --inputs IMAGES --out analysis/
    python -m llava_manager.analysis attention  --model runs/stage2 --compare BASE_DIR --inputs data.json --out analysis/
    python -m llava_manager.analysis siglip     --model runs/stage2 --inputs IMAGES --out analysis/

--inputs is a folder of images (prompt from a same-named .txt file, else --prompt) or a LLaVA JSON file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..persistence import from_pretrained
from ..processors import load_processor
from . import collect, figures
from .inputs import DEFAULT_PROMPT, load_samples

COMMANDS = ("weights", "similarity", "attention", "siglip")


def load(path: str, device: str):
    return from_pretrained(path, dtype=torch.float32).to(device).eval(), load_processor(path)


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(prog="python -m llava_manager.analysis", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("--model", required=True, help="a model directory (patched or plain)")
    parser.add_argument("--compare", help="a second model directory drawn on the same plot (e.g. the base model)")
    parser.add_argument("--labels", nargs=2, default=None, metavar=("MODEL", "COMPARE"))
    parser.add_argument("--inputs", help="folder of images or LLaVA JSON file (all but `weights`)")
    parser.add_argument("--image-folder", help="image folder of a JSON file (default: the JSON's folder)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--limit", type=int, default=None, help="use the first N samples")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model, processor = load(args.model, args.device)
    if args.command == "weights":
        paths = figures.aggregation_weights(model, out)
    else:
        if not args.inputs:
            parser.error(f"{args.command} needs --inputs (a folder of images or a LLaVA JSON file)")
        samples = load_samples(args.inputs, args.image_folder, args.limit, args.prompt)
        labels = args.labels or [Path(args.model).name, Path(args.compare).name if args.compare else ""]
        models = {labels[0]: (model, processor)}
        if args.compare:
            models[labels[1]] = load(args.compare, args.device)
        marks = collect.injected_layers(model)
        if args.command == "similarity":
            curves = {}
            for label, (m, p) in models.items():
                for part, values in collect.layer_similarity(m, p, samples).items():
                    curves[f"{label}, {part}"] = values
            paths = figures.per_layer(curves, "cosine similarity of consecutive decoder layers' outputs",
                                      "cosine similarity", out, "layer_similarity", marks, first_layer=1)
        elif args.command == "attention":
            stats = {label: collect.attention_statistics(m, p, samples) for label, (m, p) in models.items()}
            paths = {}
            for key, title in (("entropy", "mean attention entropy (nats)"), ("head_kl", "mean KL between heads")):
                curves = {f"{label}, {kind.replace('_', ' ')}": s[f"{kind}_{key}"]
                          for label, s in stats.items() for kind in ("visual", "text_to_visual")}
                paths.update({f"{key}_{k}": v for k, v in figures.per_layer(
                    curves, title, title, out, f"attention_{key}", marks).items()})
        else:
            paths = figures.attention_distance(
                {label: collect.siglip_attention_distance(m, p, samples) for label, (m, p) in models.items()}, out)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return paths


if __name__ == "__main__":
    main()
