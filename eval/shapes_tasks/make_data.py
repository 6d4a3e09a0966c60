"""Writes `shapes.parquet` next to the task YAMLs: held-out synthetic shapes images with colour questions, for
scoring a model trained on the embedded default with lmms-eval (offline); and `shapes_varied.parquet`, the same
documents with prompts of different lengths and images of different sizes (tasks `shapes_varied_gen` and
`shapes_varied_mc`), where batching pads every batch differently: their scores must not depend on `--batch_size`.

    python eval/shapes_tasks/make_data.py [--samples 200] [--seed S]
    lmms-eval --model llava_ov_manager --model_args pretrained=runs/stage2 --device cpu \\
        --include_path eval/shapes_tasks --tasks shapes_gen,shapes_mc --output_path results/shapes
    (shapes_varied_gen,shapes_varied_mc: the same questions, varied prompt lengths and image sizes)

The documents are `llava_manager.synthetic.score.heldout_docs`, the ones the main job (`python recipes/stage2.py`)
scores itself on at the end: with the same --samples and --seed, lmms-eval gives the scores it printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llava_manager.synthetic.score import CHOICES, DEFAULT_SAMPLES, HELDOUT_SEED, heldout_docs

__all__ = ["CHOICES", "VARIED_SIZES", "varied_docs", "write", "write_varied"]

# shapes_varied: document i is asked its question after i % 4 copies of VARIED_PREFIX, about its image resized to
# VARIED_SIZES[i % 9] ((height, width) px: 1 to 16 anyres crops of 28 px, so different numbers of image tokens).
VARIED_PREFIX = "the image shows a shape on a background ."
VARIED_SIZES = ((28, 28), (20, 70), (90, 30), (56, 84), (14, 14), (60, 60), (33, 47), (84, 28), (100, 112))


def varied_docs(samples: int = DEFAULT_SAMPLES, seed: int = HELDOUT_SEED) -> list[dict]:
    """`heldout_docs` with prompts of 4 lengths and images of 9 sizes (see VARIED_PREFIX, VARIED_SIZES)."""
    docs = heldout_docs(samples, seed)
    for i, doc in enumerate(docs):
        height, width = VARIED_SIZES[i % len(VARIED_SIZES)]
        doc["image"] = doc["image"].resize((width, height))
        doc["question"] = " ".join([VARIED_PREFIX] * (i % 4) + [doc["question"]])
    return docs


def write(folder: str | Path, samples: int = DEFAULT_SAMPLES, seed: int = HELDOUT_SEED) -> Path:
    """`shapes.parquet` in `folder`: the documents of the shapes_gen and shapes_mc tasks."""
    return _write(Path(folder) / "shapes.parquet", heldout_docs(samples, seed))


def write_varied(folder: str | Path, samples: int = DEFAULT_SAMPLES, seed: int = HELDOUT_SEED) -> Path:
    """`shapes_varied.parquet` in `folder`: the documents of the shapes_varied_gen and shapes_varied_mc tasks."""
    return _write(Path(folder) / "shapes_varied.parquet", varied_docs(samples, seed))


def _write(path: Path, docs: list[dict]) -> Path:
    import datasets

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
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED)
    args = parser.parse_args()
    for writer in (write, write_varied):
        print(writer(Path(__file__).parent, args.samples, args.seed))
