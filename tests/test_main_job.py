"""The main job proves itself: `python recipes/stage2.py`, exactly as the README runs it (the embedded default), learns
to answer colour questions about held-out images and prints the score; the same scorer gives an untrained model
chance, so this test fails when the default stops learning."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoModelForImageTextToText, set_seed

from llava_manager import apply_manager
from llava_manager.persistence import from_pretrained
from llava_manager.processors import load_processor
from llava_manager.shapes_score import (CHOICES, DEFAULT_SAMPLES, choice_nlls, generate_answers, heldout_docs,
                                        normalise, score)
from llava_manager.synthetic import tiny_model_config, tiny_processor

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    out = tmp_path_factory.mktemp("main_job")
    result = subprocess.run([sys.executable, "recipes/stage2.py", "--output_dir", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=1800)
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
    training = {np.asarray(Image.open(p).convert("RGB")).tobytes() for p in (out / "shapes_data" / "images").iterdir()}
    assert len(training) > 900
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


def test_lmms_eval_gives_the_same_answers_and_likelihoods(main_job, tmp_path):
    """The scorer is lmms-eval's shapes tasks through `llava_ov_manager`, document by document (on the first 40)."""
    pytest.importorskip("lmms_eval")
    pytest.importorskip("datasets")
    from eval.shapes_tasks.make_data import write

    out, _ = main_job
    tasks = tmp_path / "tasks"
    shutil.copytree(ROOT / "eval" / "shapes_tasks", tasks, ignore=shutil.ignore_patterns("*.parquet", "__pycache__"))
    write(tasks, 40)
    command = [sys.executable, "-m", "lmms_eval", "--model", "llava_ov_manager", "--model_args",
               f"pretrained={out},dtype=float32", "--device", "cpu", "--tasks", "shapes_gen,shapes_mc",
               "--include_path", str(tasks), "--batch_size", "8", "--output_path", str(tmp_path / "results"),
               "--log_samples", "--verbosity", "DEBUG"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    logged = {}
    for task in ("shapes_gen", "shapes_mc"):
        lines = next((tmp_path / "results").rglob(f"*_samples_{task}.jsonl")).read_text().splitlines()
        logged[task] = sorted((json.loads(line) for line in lines if line.strip()), key=lambda s: s["doc_id"])

    model, processor = from_pretrained(out).eval(), load_processor(out)
    docs = heldout_docs(40)
    answers = generate_answers(model, processor, docs)
    assert [normalise(a) for a in answers] == [normalise(s["filtered_resps"][0]) for s in logged["shapes_gen"]]
    for doc, sample in zip(docs, logged["shapes_mc"]):
        assert choice_nlls(model, processor, doc) == pytest.approx([float(c[0]) for c in sample["filtered_resps"]],
                                                                   abs=1e-4)
