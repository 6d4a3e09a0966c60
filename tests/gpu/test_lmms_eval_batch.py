"""lmms-eval on the GPU scores a patched model the same at --batch_size 8 as at 1: each document's answer (exactly),
its log-likelihoods (to 1e-5, the same choice) and the results, on the local `shapes_varied_gen` /
`shapes_varied_mc` tasks (prompts of 4 lengths, images of 9 sizes, so a batch of 8 is padded; `eval/shapes_tasks/`),
through
`python -m llava_manager.evaluation --model llava_manager --device cuda`. The CPU version is
`tests/evaluation/test_lmms_eval.py`.

In fp32 with TF32 off (NVIDIA_TF32_OVERRIDE=0): bf16 rounds a padded batch's matmuls differently from a batch of one,
which can flip a greedy token of a random model; the claim that answers do not depend on the batch size is about the
model's batching (left padding, the attention mask, each image laid out for itself), not about bf16 rounding."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from support.helpers import ROOT, subprocess_env

pytestmark = pytest.mark.gpu

TASKS = "shapes_varied_gen,shapes_varied_mc"
SIZES = (1, 8)


def lmms_eval_missing() -> str | None:
    try:
        import datasets  # noqa: F401
        import lmms_eval  # noqa: F401
    except Exception as error:
        return f"lmms-eval is not importable ({type(error).__name__}: {error})"
    return None


@pytest.fixture(scope="module")
def runs(tmp_path_factory, device):
    """{batch size: (results, {task: {doc_id: sample}})}, both runs side by side."""
    if reason := lmms_eval_missing():
        pytest.skip(reason)
    from transformers import AutoModelForImageTextToText

    from eval.shapes_tasks.make_data import VARIED_SIZES, write_varied
    from llava_manager import apply_manager, get_managers
    from llava_manager.synthetic.data import tiny_model_config, tiny_processor

    root = tmp_path_factory.mktemp("lmms-gpu")
    tasks = root / "tasks"
    shutil.copytree(ROOT / "eval" / "shapes_tasks", tasks, ignore=shutil.ignore_patterns("*.parquet", "__pycache__"))
    write_varied(tasks, len(VARIED_SIZES))  # 9 documents: a batch of 8 and one of 1 at --batch_size 8
    processor = tiny_processor()
    torch.manual_seed(0)
    model = apply_manager(AutoModelForImageTextToText.from_config(tiny_model_config(processor)), interval=2)
    torch.manual_seed(1)
    with torch.no_grad():
        for m in get_managers(model):
            m.weight.normal_(std=2.0)
    model.save_pretrained(root / "patched")
    processor.save_pretrained(root / "patched")

    env = subprocess_env(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", NVIDIA_TF32_OVERRIDE="0"
    )
    running = {}
    for size in SIZES:
        out = root / "out" / str(size)
        command = [
            *(sys.executable, "-m", "llava_manager.evaluation", "--model", "llava_manager"),
            *("--model_args", f"pretrained={root / 'patched'},dtype=float32,response_cache=none"),
            *("--device", device.type, "--tasks", TASKS, "--include_path", str(tasks)),
            *("--batch_size", str(size), "--output_path", str(out), "--log_samples", "--verbosity", "DEBUG"),
        ]
        log = (root / f"log-{size}.txt").open("w")
        running[size] = (subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env), log, out)
    results = {}
    for size, (process, log, out) in running.items():
        code = process.wait(timeout=540)
        log.close()
        assert code == 0, (root / f"log-{size}.txt").read_text()[-5000:]
        [file] = list(out.rglob("*_results.json"))
        samples = {
            task: {s["doc_id"]: s for s in map(json.loads, next(out.rglob(f"*_samples_{task}.jsonl")).open())}
            for task in TASKS.split(",")
        }
        results[size] = json.loads(file.read_text())["results"], samples
    return results


def test_batch_8_scores_as_batch_1(runs):
    (results_1, samples_1), (results_8, samples_8) = runs[1], runs[8]
    for task in TASKS.split(","):
        assert sorted(samples_1[task]) == list(range(9))
        for doc_id, sample in samples_1[task].items():
            other = samples_8[task][doc_id]
            if task.endswith("_mc"):  # the log-likelihoods to 1e-5 (another batch, other kernels), the same choice
                losses = [[float(choice[0]) for choice in s["filtered_resps"]] for s in (sample, other)]
                assert losses[1] == pytest.approx(losses[0], rel=1e-5), (doc_id, losses)
                assert min(range(4), key=losses[0].__getitem__) == min(range(4), key=losses[1].__getitem__)
                sample, other = ({k: v for k, v in s.items() if "resps" not in k} for s in (sample, other))
            assert other == sample, (task, doc_id)  # the generated answers exactly, and every score
    assert results_1 == results_8
    # what makes it a test: the model answers (not all empty, not all alike), on prompts of different lengths
    answers = [s["filtered_resps"] for s in samples_1["shapes_varied_gen"].values()]
    print(f"answers at batch 1: {answers}")
    assert all(answers) and len(set(map(str, answers))) > 1
    assert len({len(s["input"]) for s in samples_1["shapes_varied_gen"].values()}) == 4
