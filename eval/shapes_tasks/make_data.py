"""Writes `shapes.parquet` next to the task YAMLs: held-out synthetic shapes images with colour questions, for
scoring a model trained on the embedded default with lmms-eval (offline).

    python eval/shapes_tasks/make_data.py [--samples 40]
    lmms-eval --model llava_ov_manager --model_args pretrained=runs/stage2 --device cpu \
        --include_path eval/shapes_tasks --tasks shapes_gen,shapes_mc --output_path results/shapes
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from llava_manager.synthetic import BACKGROUNDS, COLOURS, SHAPES, SIZES, draw_shape

CHOICES = list(COLOURS)


def write(folder: str | Path, samples: int = 40, seed: int = 1234) -> Path:
    import datasets

    rng = random.Random(seed)
    docs = [(rng.choice(SHAPES), rng.choice(CHOICES), rng.choice(list(BACKGROUNDS)), rng.choice(SIZES))
            for _ in range(samples)]
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string"),
                                  "choices": datasets.Sequence(datasets.Value("string")),
                                  "label": datasets.Value("int64")})
    rows = {"image": [draw_shape(s, c, "middle", bg, size) for s, c, bg, size in docs],
            "question": ["What colour is the shape ?"] * samples, "answer": [c for _, c, _, _ in docs],
            "choices": [CHOICES] * samples, "label": [CHOICES.index(c) for _, c, _, _ in docs]}
    path = Path(folder) / "shapes.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=40)
    print(write(Path(__file__).parent, parser.parse_args().samples))
