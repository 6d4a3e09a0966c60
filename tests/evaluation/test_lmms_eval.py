"""lmms-eval end to end, offline: `--model llava_ov_manager` through lmms-eval's entry points, on tiny models and a
small local task (generation + multiple choice), with the results file and scores checked. Also through the command
line: an evaluation killed part of the way and run again answers its finished documents from the response store and
gives the results of an uninterrupted run; answers and log-likelihoods are the same at --batch_size 1 and 8 on
documents of different prompt lengths and image sizes; `python -m llava_manager.evaluation` exits 1 when lmms-eval
fails (which itself exits 0)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from support.helpers import subprocess_env

pytest.importorskip("lmms_eval")
datasets = pytest.importorskip("datasets")

from transformers import AutoModelForImageTextToText  # noqa: E402

import llava_manager  # noqa: E402
from eval.shapes_tasks.make_data import CHOICES, VARIED_SIZES, write, write_varied  # noqa: E402
from llava_manager import apply_manager, get_managers, load_manager, save_manager  # noqa: E402
from llava_manager.processing.templates import QWEN  # noqa: E402
from llava_manager.synthetic.data import tiny_model_config, tiny_processor  # noqa: E402

pytestmark = pytest.mark.slow  # launches processes or trains; outside the fast tier

ROOT = Path(__file__).resolve().parents[2]
NUM_DOCS = 5
VARIED_DOCS = len(VARIED_SIZES)  # a batch of 8 and one of 1 at --batch_size 8
TASKS = "shapes_gen,shapes_mc"
LMMS_EVAL = ("-m", "lmms_eval")
OURS = ("-m", "llava_manager.evaluation")  # exits 1 when lmms-eval fails


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms")
    tasks = root / "tasks"
    shutil.copytree(ROOT / "eval" / "shapes_tasks", tasks, ignore=shutil.ignore_patterns("*.parquet", "__pycache__"))
    write(tasks, NUM_DOCS)
    write_varied(tasks, VARIED_DOCS)

    processor = tiny_processor()
    torch.manual_seed(0)
    base = AutoModelForImageTextToText.from_config(tiny_model_config(processor))
    base.save_pretrained(root / "base")
    processor.save_pretrained(root / "base")
    patched = apply_manager(base, interval=2)
    torch.manual_seed(1)
    with torch.no_grad():
        for m in get_managers(patched):
            m.weight.normal_(std=2.0)
    patched.save_pretrained(root / "patched")
    processor.save_pretrained(root / "patched")
    save_manager(patched, root / "manager")
    return root


def lmms_eval(
    root: Path,
    name: str,
    model_args: str,
    batch_size: int = 2,
    tasks: str = TASKS,
    command: tuple[str, ...] = LMMS_EVAL,
    returncode: int | None = 0,
    verbosity: str = "DEBUG",  # DEBUG: lmms-eval re-raises errors instead of exiting 0
) -> tuple[Path, subprocess.CompletedProcess]:
    """Runs the lmms-eval command line as a user would (`command`: lmms-eval's, ours, or a test's wrapper script);
    without a response store unless `model_args` names one. Returns the output folder and the finished process,
    whose exit status must be `returncode` (None: any)."""
    out = root / "out" / name
    if "response_cache=" not in model_args:
        model_args += ",response_cache=none"  # every answer from the model
    arguments = [
        *("--model", "llava_ov_manager", "--model_args", model_args, "--device", "cpu", "--tasks", tasks),
        *("--include_path", str(root / "tasks"), "--batch_size", str(batch_size), "--output_path", str(out)),
        *("--log_samples", "--verbosity", verbosity),
    ]
    env = subprocess_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, *command, *arguments], capture_output=True, text=True, timeout=600, env=env
    )
    if returncode is not None:
        assert result.returncode == returncode, result.stdout[-3000:] + result.stderr[-5000:]
    return out, result


def read(out: Path, tasks: str = TASKS):
    [results] = list(out.rglob("*_results.json"))  # lmms-eval exits 0 even on errors: the file must exist
    samples = {
        task: [json.loads(line) for line in next(out.rglob(f"*_samples_{task}.jsonl")).open()]
        for task in tasks.split(",")
    }
    return json.loads(results.read_text())["results"], samples


@pytest.fixture(scope="module")
def runs(setup):
    # the patched model through our command (exit status 0), with a response store: tested with the reruns below
    patched_args = f"pretrained={setup / 'patched'},dtype=float32,response_cache={setup / 'responses-patched'}"
    return {
        "patched": read(lmms_eval(setup, "patched", patched_args, command=OURS)[0]),
        "base+manager": read(
            lmms_eval(
                setup,
                "base+manager",
                f"pretrained={setup / 'base'},manager_path={setup / 'manager'},dtype=float32",
                batch_size=1,
            )[0]
        ),
        "base": read(lmms_eval(setup, "base", f"pretrained={setup / 'base'},dtype=float32")[0]),
    }


def test_results_file_and_metrics(runs):
    results, samples = runs["patched"]
    assert 0.0 <= results["shapes_gen"]["exact_match,none"] <= 1.0
    assert 0.0 <= results["shapes_mc"]["acc,none"] <= 1.0
    assert len(samples["shapes_gen"]) == len(samples["shapes_mc"]) == NUM_DOCS
    for s in samples["shapes_gen"]:  # `until: ["."]` cut every answer
        assert "." not in s["filtered_resps"][0]


def mc_losses(samples):
    """Per document, the loss of each choice (the sample log writes the (loss, is_greedy) pairs as strings)."""
    return [
        [float(choice[0]) for choice in s["filtered_resps"]]
        for s in sorted(samples["shapes_mc"], key=lambda s: s["doc_id"])
    ]


def test_manager_weights_are_loaded_and_used(runs):
    patched, base_manager, base = (mc_losses(runs[k][1]) for k in ("patched", "base+manager", "base"))
    flat = lambda rows: [x for row in rows for x in row]  # noqa: E731
    # save_pretrained gives the same scores as base + manager_path (run at batch size 1 vs 2)
    assert flat(patched) == pytest.approx(flat(base_manager), rel=1e-5)
    assert flat(patched) != pytest.approx(flat(base), rel=1e-3)  # the managers change the scores


def independent_losses(model, processor, prompt: str, docs, doc_ids) -> list[list[float]]:
    """The mean NLL of each choice's tokens after `prompt` (one image), computed with the model's own loss."""
    rows = []
    for doc_id in doc_ids:
        context = processor(images=[docs[doc_id]["image"].convert("RGB")], text=[prompt], return_tensors="pt")
        row = []
        for choice in CHOICES:
            answer = processor.tokenizer(" " + choice, add_special_tokens=False, return_tensors="pt")["input_ids"]
            ids = torch.cat([context["input_ids"], answer], dim=1)
            labels = torch.full_like(ids, -100)
            labels[:, -answer.shape[1] :] = answer
            with torch.no_grad():
                loss = model(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    pixel_values=context["pixel_values"],
                    image_sizes=context["image_sizes"],
                    labels=labels,
                ).loss
            row.append(float(loss))
        rows.append(row)
    return rows


def shapes_docs(root: Path):
    return datasets.load_dataset("parquet", data_files={"test": str(root / "tasks" / "shapes.parquet")})["test"]


def test_loglikelihood_matches_an_independent_computation(setup, runs):
    model = llava_manager.from_pretrained(setup / "patched").eval()
    processor = llava_manager.processing.processors.load_processor(setup / "patched")
    prompt = (
        QWEN.system.format(QWEN.default_system)
        + QWEN.user.format("<image>\nWhat colour is the shape ?")
        + QWEN.assistant
    )
    expected = independent_losses(model, processor, prompt, shapes_docs(setup), (0, 1))
    assert mc_losses(runs["patched"][1])[:2] == [pytest.approx(row, rel=1e-4) for row in expected]


@pytest.fixture(scope="module")
def published_runs(setup, published_si, published_ov):
    """lmms-eval on checkpoints laid out like llava-hf's: the baseline in the default (training) prompt format and
    with the checkpoint's chat template, and a plain checkpoint + manager_path."""
    ov = apply_manager(llava_manager.from_pretrained(published_ov, dtype=torch.float32))
    torch.manual_seed(2)
    with torch.no_grad():
        for m in get_managers(ov):
            m.weight.normal_(std=2.0)
    save_manager(ov, setup / "ov_manager")
    return {
        "si": read(lmms_eval(setup, "published-si", f"pretrained={published_si},dtype=float32", batch_size=4)[0]),
        "si-chat": read(
            lmms_eval(
                setup, "published-si-chat", f"pretrained={published_si},dtype=float32,prompt_format=chat_template"
            )[0]
        ),
        "ov+manager": read(
            lmms_eval(
                setup,
                "published-ov-manager",
                f"pretrained={published_ov},manager_path={setup / 'ov_manager'},dtype=float32",
            )[0]
        ),
    }


@pytest.mark.parametrize(
    "run, prompt",
    [
        (
            "si",
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
            "What colour is the shape ?<|im_end|>\n<|im_start|>assistant\n",
        ),
        ("si-chat", "<|im_start|>user <image>\nWhat colour is the shape ?<|im_end|><|im_start|>assistant\n"),
    ],
)
def test_a_published_checkpoint_is_scored_in_either_prompt_format(setup, published_si, published_runs, run, prompt):
    results, samples = published_runs[run]
    assert len(samples["shapes_gen"]) == len(samples["shapes_mc"]) == NUM_DOCS
    assert 0.0 <= results["shapes_gen"]["exact_match,none"] <= 1.0 and 0.0 <= results["shapes_mc"]["acc,none"] <= 1.0
    model = llava_manager.from_pretrained(published_si, dtype=torch.float32).eval()
    processor = llava_manager.processing.processors.load_processor(published_si)
    expected = independent_losses(model, processor, prompt, shapes_docs(setup), range(NUM_DOCS))
    assert mc_losses(samples) == [pytest.approx(row, rel=1e-4) for row in expected]


def test_a_published_checkpoint_with_manager_path_is_scored_with_its_managers(setup, published_ov, published_runs):
    _, samples = published_runs["ov+manager"]
    processor = llava_manager.processing.processors.load_processor(published_ov)
    prompt = (
        QWEN.system.format(QWEN.default_system)
        + QWEN.user.format("<image>\nWhat colour is the shape ?")
        + QWEN.assistant
    )
    docs = shapes_docs(setup)
    plain = llava_manager.from_pretrained(published_ov, dtype=torch.float32).eval()
    without = independent_losses(plain, processor, prompt, docs, range(NUM_DOCS))
    with_managers = independent_losses(
        load_manager(plain, setup / "ov_manager"), processor, prompt, docs, range(NUM_DOCS)
    )
    assert mc_losses(samples) == [pytest.approx(row, rel=1e-4) for row in with_managers]
    assert with_managers != [pytest.approx(row, rel=1e-3) for row in without]


def test_bad_model_args_are_named(setup):
    from llava_manager.evaluation.lmms_eval_model import LlavaOvManager

    with pytest.raises(ValueError, match=r"unknown model_args \['colour'\]; allowed: pretrained"):
        LlavaOvManager(pretrained=str(setup / "patched"), colour="red")
    with pytest.raises(ValueError, match="already has managers"):
        LlavaOvManager(pretrained=str(setup / "patched"), manager_path=str(setup / "manager"), device="cpu")


def test_task_groups_name_installed_lmms_eval_tasks():
    import yaml
    from lmms_eval.tasks import TaskManager

    from llava_manager.evaluation.report import ABLATION, DATASETS

    known = set(TaskManager().all_tasks)
    groups = {}
    for name in ("llava_ov_manager_20", "llava_ov_manager_ablation"):
        text = (ROOT / "eval" / "tasks" / f"{name}.yaml").read_text()
        groups[name] = yaml.safe_load(text)["task"]
        assert set(groups[name]) <= known, set(groups[name]) - known
    assert groups["llava_ov_manager_20"] == [d.task for d in DATASETS]
    assert groups["llava_ov_manager_ablation"] == [d.task for d in DATASETS if d.name in ABLATION]


def test_a_recipe_export_is_scored(setup, tmp_path):
    """What `recipes/stage2.py` exports (model, processor) is what the plugin loads: its trained managers included."""
    from llava_manager.training.train import run

    trainer = run(
        "stage2",
        [
            "--output_dir",
            str(tmp_path / "run"),
            "--max_steps",
            "2",
            "--synthetic_samples",
            "16",
            "--dataloader_num_workers",
            "0",
            "--save_strategy",
            "no",
        ],
    )
    results, samples = read(lmms_eval(setup, "recipe", f"pretrained={tmp_path / 'run'},dtype=float32")[0])
    assert "exact_match,none" in results["shapes_gen"] and "acc,none" in results["shapes_mc"]
    from llava_manager.evaluation.lmms_eval_model import LlavaOvManager

    loaded = LlavaOvManager(pretrained=str(tmp_path / "run"), device="cpu", dtype="float32", response_cache="none")
    for a, b in zip(get_managers(loaded.model), get_managers(trainer.model)):
        assert torch.equal(a.weight, b.weight.detach()) and a.weight.abs().sum() > 0


def test_the_main_jobs_scorer_agrees_with_lmms_eval(setup, runs):
    """`python recipes/stage2.py` ends with `shapes_score`; on the same documents lmms-eval must say the same."""
    from llava_manager.synthetic.score import choice_nlls, generate_answers, heldout_docs, normalise, score

    model = llava_manager.from_pretrained(setup / "patched").eval()
    processor = llava_manager.processing.processors.load_processor(setup / "patched")
    docs = heldout_docs(NUM_DOCS)
    results, samples = runs["patched"]
    ours = score(model, processor, docs)
    assert ours["exact_match"] == results["shapes_gen"]["exact_match,none"]
    assert ours["mc_accuracy"] == results["shapes_mc"]["acc,none"]
    logged = {
        s["doc_id"]: s["filtered_resps"] if isinstance(s["filtered_resps"], str) else s["filtered_resps"][0]
        for s in samples["shapes_gen"]
    }
    assert [normalise(a) for a in generate_answers(model, processor, docs)] == [
        normalise(logged[i]) for i in range(NUM_DOCS)
    ]
    assert [choice_nlls(model, processor, d) for d in docs] == [
        pytest.approx(row, rel=1e-4) for row in mc_losses(samples)
    ]


# ---- the response store: an interrupted evaluation, run again -------------------------------------------------------
# Runs `python -m llava_manager.evaluation ARGS...` in its own process with the model's calls counted: a line per
# `_generate` batch ("generate N": N documents) and per `_score_questions` batch ("nll") in the file COUNTS; with
# CRASH_AFTER >= 0 the process dies (os._exit, as a killed one: nothing cleaned up) when batch CRASH_AFTER + 1 starts.
WRAPPER = """
import os, sys
from llava_manager.evaluation.__main__ import main
from llava_manager.evaluation.lmms_eval_model import LlavaManager

counts, crash_after = sys.argv[1], int(sys.argv[2])
generate, nll = LlavaManager._generate, LlavaManager._score_questions
batches = []


def counted_generate(self, contexts, images, kwargs):
    if len(batches) == crash_after:
        os._exit(1)
    batches.append(len(contexts))
    with open(counts, "a") as f:
        f.write(f"generate {len(contexts)}\\n")
    return generate(self, contexts, images, kwargs)


def counted_nll(self, *args):
    with open(counts, "a") as f:
        f.write("nll\\n")
    return nll(self, *args)


LlavaManager._generate, LlavaManager._score_questions = counted_generate, counted_nll
sys.exit(main(sys.argv[3:]))
"""


def by_doc(samples: list[dict]) -> dict[int, dict]:
    return {sample["doc_id"]: sample for sample in samples}


def store_records(folder: Path) -> dict[str, dict[str, dict]]:
    """file name -> key -> record, of every store file in `folder`."""
    return {
        file.name: {record["key"]: record for record in map(json.loads, file.read_text().splitlines())}
        for file in folder.glob("*.jsonl")
    }


def test_an_interrupted_evaluation_run_again_answers_from_the_store(setup, runs, tmp_path):
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER)
    store = tmp_path / "responses"
    model_args = f"pretrained={setup / 'patched'},dtype=float32,response_cache={store}"  # as runs["patched"]

    # Killed as the second generation batch starts (batch size 2): the loglikelihood requests (lmms-eval 0.7 runs them
    # first) and the first batch's 2 answers are on disk.
    crashed_counts = tmp_path / "crashed.txt"
    out, crashed = lmms_eval(
        setup, "crashed", model_args, command=(str(script), str(crashed_counts), "1"), returncode=1
    )
    assert not list(out.rglob("*_results.json"))
    [file] = store.glob("*.jsonl")
    kinds = Counter(json.loads(line)["kind"] for line in file.read_text().splitlines())
    assert kinds == {"loglikelihood": NUM_DOCS * len(CHOICES), "generate_until": 2}
    assert crashed_counts.read_text().split().count("generate") == 1
    with file.open("a") as handle:  # and a line torn by a crash in the middle of a write
        handle.write('{"key": "0123", "kind": "generate_un')

    # The same command again: the stored answers come from disk, the model runs on the rest only.
    counts = tmp_path / "rerun.txt"
    out, rerun = lmms_eval(setup, "rerun", model_args, command=(str(script), str(counts), "-1"))
    log = rerun.stdout + rerun.stderr
    assert f"generate_until: 2 of {NUM_DOCS} requests answered from the response store {file} (shapes_gen: 2)" in log
    assert f"loglikelihood: {NUM_DOCS * len(CHOICES)} of {NUM_DOCS * len(CHOICES)} requests answered from" in log
    assert f"dropped 1 unreadable line(s) (1 of {file.name})" in log
    calls = counts.read_text().split()
    assert sum(int(n) for word, n in zip(calls, calls[1:]) if word == "generate") == NUM_DOCS - 2
    assert "nll" not in calls

    # The results of the uninterrupted run, and the same answers on disk as its store (the same fingerprint: batch
    # size, output folder and process do not count), log-likelihoods written as the very same floats.
    results, samples = read(out)
    expected_results, expected_samples = runs["patched"]
    assert results == expected_results
    for task in ("shapes_gen", "shapes_mc"):  # answers, losses (written with repr: exact), scores
        assert by_doc(samples[task]) == by_doc(expected_samples[task])
    assert store_records(store) == store_records(setup / "responses-patched")
    assert len(store_records(store)[file.name]) == NUM_DOCS * (1 + len(CHOICES))


# ---- batch size ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def varied_runs(setup):
    """shapes_varied_gen / shapes_varied_mc (prompts of 4 lengths, images of 9 sizes) at --batch_size 1 and 8."""
    tasks = "shapes_varied_gen,shapes_varied_mc"
    return {
        size: read(
            lmms_eval(setup, f"varied-{size}", f"pretrained={setup / 'patched'},dtype=float32", size, tasks)[0], tasks
        )
        for size in (1, 8)
    }


def test_answers_do_not_depend_on_the_batch_size(setup, varied_runs):
    """The samples files and the results are the same at --batch_size 1 and 8: each generated answer exactly; each
    multiple-choice document's losses to float rounding (a batch of 8 prompts is padded: the same sums in another
    order), its choice and score exactly."""
    (results_1, samples_1), (results_8, samples_8) = varied_runs[1], varied_runs[8]
    for task in ("shapes_varied_gen", "shapes_varied_mc"):
        assert sorted(by_doc(samples_1[task])) == list(range(VARIED_DOCS))
    assert by_doc(samples_1["shapes_varied_gen"]) == by_doc(samples_8["shapes_varied_gen"])
    mc_1, mc_8 = by_doc(samples_1["shapes_varied_mc"]), by_doc(samples_8["shapes_varied_mc"])
    for doc_id, sample in mc_1.items():
        losses = lambda s: [float(choice[0]) for choice in s["filtered_resps"]]  # noqa: E731
        assert losses(sample) == pytest.approx(losses(mc_8[doc_id]), rel=1e-5, abs=1e-6)
        assert sample["acc"] == mc_8[doc_id]["acc"]
    assert results_1 == results_8
    # What makes it a test: the documents differ in prompt length and in image tokens (so a batch of 8 is padded),
    # and the answers are the model's (not all empty, not all alike).
    answers = [s["filtered_resps"] for s in samples_1["shapes_varied_gen"]]
    assert all(answers) and len(set(map(str, answers))) > 1
    assert len({len(s["input"]) for s in samples_1["shapes_varied_gen"]}) == 4
    processor = llava_manager.processing.processors.load_processor(setup / "patched")
    docs = datasets.load_dataset("parquet", data_files={"test": str(setup / "tasks" / "shapes_varied.parquet")})
    tokens = {
        len(processor(images=[d["image"].convert("RGB")], text=["<image>"])["input_ids"][0]) for d in docs["test"]
    }
    assert len(tokens) >= 5


# ---- python -m llava_manager.evaluation ---------------------------------------------------------------------------
def test_our_command_fails_when_lmms_eval_fails(setup, tmp_path):
    """lmms-eval exits 0 when the model cannot be loaded (without --verbosity DEBUG); our command exits 1 and names
    the problem. (A good run exits 0: runs["patched"].)"""
    missing = tmp_path / "no-such-model"
    out, result = lmms_eval(setup, "missing", f"pretrained={missing}", command=OURS, returncode=1, verbosity="INFO")
    [line] = [line for line in result.stderr.splitlines() if line.startswith("llava-manager-eval: error:")]
    assert "lmms-eval failed on --model llava_ov_manager --tasks shapes_gen,shapes_mc: FileNotFoundError" in line
    assert f"pretrained={missing} does not exist" in line
    assert not list(out.rglob("*_results.json"))


def test_the_console_script_is_our_command():
    import tomllib

    from llava_manager.evaluation import __main__ as ours

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["llava-manager-eval"].split(":")
    assert module == ours.__name__ and getattr(ours, function) is ours.run
