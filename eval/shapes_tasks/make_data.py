"""Writes `shapes.parquet` next to the task YAMLs: held-out synthetic shapes images with colour questions, for
scoring a model trained on the embedded default with lmms-eval (offline).

    python eval/shapes_tasks/make_data.py [--samples 200] [--seed S]
    lmms-eval --model llava_ov_manager --model_args pretrained=runs/stage2 --device cpu \\
        --include_path eval/shapes_tasks --tasks shapes_gen,shapes_mc --output_path results/shapes

The documents are `llava_manager.shapes.score.heldout_docs`, the ones the main job (`python recipes/stage2.py`)
scores itself on at the end: with the same --samples and --seed, lmms-eval gives the scores it printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llava_manager.shapes.score import CHOICES, DEFAULT_SAMPLES, HELDOUT_SEED, heldout_docs

__all__ = ["CHOICES", "write"]


def write(folder: str | Path, samples: int = DEFAULT_SAMPLES, seed: int = HELDOUT_SEED) -> Path:
    import datasets

    docs = heldout_docs(samples, seed)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "choices": datasets.Sequence(datasets.Value("string")),
            "label": datasets.Value("int64"),
        }
    )
    rows = {key: [d[key] for d in docs] for key in features}
    path = Path(folder) / "shapes.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED)
    args = parser.parse_args()
    print(write(Path(__file__).parent, args.samples, args.seed))
