"""The main job proves itself: `python recipes/stage2.py`, exactly as the README runs it (the embedded default), learns
to answer colour questions about held-out images and prints the score; the same scorer gives an untrained model
chance, so this test fails when the default stops learning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.helpers import subprocess_env
from transformers import AutoModelForImageTextToText, set_seed

from llava_manager import apply_manager
from llava_manager.synthetic.data import tiny_model_config, tiny_processor
from llava_manager.synthetic.score import CHOICES, DEFAULT_SAMPLES, heldout_docs, score

pytestmark = pytest.mark.slow  # launches processes or trains; outside the fast tier

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    out = tmp_path_factory.mktemp("main_job")
    result = subprocess.run(
        [sys.executable, "recipes/stage2.py", "--output_dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        env=subprocess_env(),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return out, result.stdout


def test_the_main_job_learns_and_prints_its_held_out_score(main_job):
    out, stdout = main_job
    scores = json.loads((out / "shapes_score.json").read_text())
    assert scores["samples"] == DEFAULT_SAMPLES
    assert scores["exact_match"] >= 0.9 and scores["mc_accuracy"] >= 0.9, scores
    assert f"exact match      {scores['exact_match']:.3f}" in stdout
    assert f"multiple choice  {scores['mc_accuracy']:.3f}" in stdout


def test_held_out_images_are_not_training_images(main_job):
    out, _ = main_job
    files = list((out / "shapes_data" / "images").iterdir())
    training = {np.asarray(Image.open(p).convert("RGB")).tobytes() for p in files}
    assert len(files) > 1000 and len(training) == len(files)  # the jitter: no two images alike
    held_out = {np.asarray(d["image"]).tobytes() for d in heldout_docs()}
    assert len(held_out) == DEFAULT_SAMPLES and not held_out & training


def test_an_untrained_model_scores_chance():
    """The recipe's initial model (same seed, same config) answers at chance: the scorer can fail."""
    docs = heldout_docs()
    counts = [sum(d["label"] == k for d in docs) for k in range(len(CHOICES))]
    assert max(counts) / len(docs) < 0.4  # no constant answer scores high
    processor = tiny_processor()
    set_seed(42)
    model = apply_manager(AutoModelForImageTextToText.from_config(tiny_model_config(processor)))
    result = score(model, processor, docs)
    assert result["exact_match"] < 0.4 and result["mc_accuracy"] < 0.4, result
