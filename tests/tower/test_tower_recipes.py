"""The ManagerTower recipes (`recipes/tower_pretrain.py`, `recipes/tower_finetune.py`) run in-process on the
embedded tiny default for a few steps: export, evaluation, optimizer groups, strict starts and resumes, the paper's
defaults, and one DeepSpeed ZeRO-2 run on CPU."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from support.helpers import subprocess_env

from llava_manager.core.checkpoint import CheckpointMismatchError
from llava_manager.runtime.commits import commit
from llava_manager.tower import training
from llava_manager.tower.training import TASK_MODELS, parse

ROOT = Path(__file__).resolve().parents[2]
QUICK = [
    "--max_steps",
    "2",
    "--logging_steps",
    "1",
    "--synthetic_samples",
    "16",
    "--per_device_train_batch_size",
    "4",
    "--per_device_eval_batch_size",
    "8",
    "--disable_tqdm",
    "true",
    "--save_steps",
    "100",
]
# Rates that are none of the tasks' defaults, so the groups are checked against these numbers and not the table.
RATES = ["--learning_rate", "1e-4", "--lr_mult_head", "7", "--lr_mult_cross_modal", "3"]


def recipe(name: str):
    """The recipe script as a module (its `run(argv)`)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train(task: str, output_dir: Path, *extra: str):
    if task == "pretrain":
        return recipe("tower_pretrain").run(["--output_dir", str(output_dir), *QUICK, *extra])
    return recipe("tower_finetune").run(["--task", task, "--output_dir", str(output_dir), *QUICK, *extra])


def losses(output_dir: Path) -> dict[int, float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


def expected_group(name: str) -> str:
    """The official rule (meter_utils.py set_schedule), on our names: the five heads -> head, anything with
    "cross_modal" or the ITC projections (the official cross_modal_itc_*_head) -> cross-modal, the rest -> base."""
    if name.split(".")[0] in ("mlm_score", "itm_score", "vqa_classifier", "snli_classifier", "nlvr2_classifier"):
        return "head"
    if "cross_modal" in name or name.startswith(("itc_text_head.", "itc_image_head.")):
        return "cross_modal"
    return "base"


def expected_decay(name: str, norms: set[str]) -> bool:
    """Decay all but biases, LayerNorms (`norms`: their weights), the managers' scores and temperatures and the ITC
    temperature."""
    return not (
        name.endswith("bias")
        or name in norms
        or name == "temperature"
        or re.search(r"\.(layer_scores(_cross)?|softmax_temperature(_cross)?)$", name)
    )


def check_groups(trainer, lr=1e-4, head=7.0, cross=3.0) -> None:
    rates = {"base": lr, "cross_modal": lr * cross, "head": lr * head}
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    norms = {f"{m}.weight" for m, module in trainer.model.named_modules() if isinstance(module, torch.nn.LayerNorm)}
    seen = set()
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            seen.add(name)
            assert group["initial_lr"] == pytest.approx(rates[expected_group(name)]), name
            assert (group["weight_decay"] > 0) == expected_decay(name, norms), name
    assert seen == set(names.values())  # every parameter trains, once
    cross_names = [n for n in names.values() if expected_group(n) == "cross_modal"]
    if trainer.model.config.manager_type != "bridge":
        assert any(".cross_modal_text_managers." in n for n in cross_names)  # the managers: cross-modal rate
    base_names = [n for n in names.values() if expected_group(n) == "base"]
    assert "managertower.token_type_embeddings.weight" in base_names


def same_outputs(trainer, loaded, task: str) -> None:
    """The exported model gives the trained model's outputs on an evaluation batch."""
    batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(min(4, len(trainer.eval_dataset)))])
    batch = {k: v for k, v in batch.items() if not k.endswith("labels") and k != "image_ids"}
    if task == "flickr30k":
        batch["return_loss"] = False
    trainer.model.eval()
    loaded.eval()
    with torch.no_grad():
        ours, theirs = trainer.model(**batch), loaded(**batch)
    keys = [k for k, v in ours.items() if isinstance(v, torch.Tensor) and "logits" in k]
    assert keys
    for key in keys:
        assert torch.equal(ours[key], theirs[key]), key


def check_export(trainer, out: Path, task: str, manager_type: str) -> dict:
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert (out / "processor_config.json").is_file() or (out / "preprocessor_config.json").is_file()
    assert (out / "tokenizer_config.json").is_file()
    assert trainer.state.global_step == 2
    report = json.loads((out / "metrics.json").read_text())
    assert report["task"] == task and report["manager_type"] == manager_type and report["global_step"] == 2
    wanted = {
        "pretrain": ["eval_mlm_accuracy", "eval_itm_accuracy"],
        "vqav2": ["eval_vqa_score"],
        "snli_ve": ["eval_accuracy"],
        "nlvr2": ["eval_accuracy"],
        "flickr30k": [f"eval_{d}_r{k}" for d in ("ir", "tr") for k in (1, 5, 10)],
    }[task]
    for key in wanted:
        assert 0 <= report["eval"][key] <= 100, key
    loaded = TASK_MODELS[task].from_pretrained(out)
    assert loaded.config.manager_type == manager_type
    same_outputs(trainer, loaded, task)
    check_groups(trainer)
    return report


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tower") / "pretrain"
    return train("pretrain", out, *RATES), out


def test_pretrain_exports_evaluates_and_groups_the_rates(pretrained):
    trainer, out = pretrained
    check_export(trainer, out, "pretrain", "aaum")
    assert {"mlm_loss", "itm_loss"} <= set(json.loads((out / "trainer_state.json").read_text())["log_history"][0])


@pytest.mark.parametrize(
    "task, manager_type",
    [("vqav2", "aaum"), ("snli_ve", "aaum"), ("nlvr2", "aaum"), ("flickr30k", "aaum"), ("nlvr2", "bridge")],
)
def test_finetune_exports_evaluates_and_groups_the_rates(tmp_path, task, manager_type):
    trainer = train(task, tmp_path, *RATES, "--manager_type", manager_type)
    check_export(trainer, tmp_path, task, manager_type)


def test_finetune_from_the_pretrained_export_at_another_resolution(pretrained, tmp_path):
    """A real start: --model_name_or_path (so the task's table applies; the batch is cut down), the new VQA head
    initialised, the pre-training heads left over, position embeddings interpolated to --image_size."""
    _, source = pretrained
    before = load_file(source / "model.safetensors")
    trainer = train(
        "vqav2",
        tmp_path,
        "--model_name_or_path",
        str(source),
        "--image_size",
        "64",
        "--total_batch_size",
        "4",
        "--dataloader_num_workers",
        "0",
        "--min_answer_count",
        "1",
    )
    assert trainer.args.learning_rate == 9e-6 and trainer.args.weight_decay == 0.06
    assert trainer.lr_mult_head == 50 and trainer.model.config.head_hidden_scale == 2
    check_groups(trainer, lr=9e-6, head=50, cross=5)
    exported = load_file(tmp_path / "model.safetensors")
    assert exported["managertower.vision_model.visual.embeddings.position_embedding.weight"].shape[0] == 8 * 8 + 1
    assert before["managertower.vision_model.visual.embeddings.position_embedding.weight"].shape[0] == 4 * 4 + 1
    assert "mlm_score.bias" not in exported and "vqa_classifier.3.weight" in exported
    loaded = TASK_MODELS["vqav2"].from_pretrained(tmp_path)
    assert loaded.config.vision_config.image_size == 64
    same_outputs(trainer, loaded, "vqav2")


def test_a_checkpoint_of_another_architecture_is_refused(pretrained, tmp_path):
    _, source = pretrained
    with pytest.raises(ValueError, match="--manager_type bridge.*aaum model"):
        train(
            "vqav2",
            tmp_path,
            "--model_name_or_path",
            str(source),
            "--manager_type",
            "bridge",
            "--total_batch_size",
            "4",
            "--min_answer_count",
            "1",
        )


REAL = ["--image_size", "32", "--total_batch_size", "4", "--dataloader_num_workers", "0"]  # a "real" start, cut down


def test_a_bridgetower_checkpoint_is_warm_started_into_managertower(tmp_path):
    """transformers' BridgeTower by the same recipe: its weights land on the backbone and heads of the same name,
    the managers and layer embeddings start fresh."""
    from transformers import BridgeTowerConfig, BridgeTowerForMaskedLM

    from llava_manager.tower.data.synthetic import tiny_tower_processor

    processor = tiny_tower_processor()
    tiny = training.tiny_config(processor).to_dict()
    config = BridgeTowerConfig(
        text_config=tiny["text_config"],
        vision_config=tiny["vision_config"],
        hidden_size=64,
        num_attention_heads=2,
        num_hidden_layers=2,
    )
    torch.manual_seed(3)
    source = tmp_path / "bridgetower"
    BridgeTowerForMaskedLM(config).save_pretrained(source)
    processor.save_pretrained(source)
    bt = load_file(source / "model.safetensors")
    trainer = train(
        "pretrain",
        tmp_path / "out",
        "--model_name_or_path",
        str(source),
        "--manager_type",
        "aaum",
        "--max_steps",
        "1",
        "--learning_rate",
        "0",
        *REAL,
    )
    assert trainer.model.config.manager_type == "aaum"
    exported = load_file(tmp_path / "out" / "model.safetensors")
    for key in (
        "text_model.embeddings.word_embeddings.weight",
        "cross_modal_text_layers.1.output.dense.weight",
        "vision_model.visual.ln_post.weight",
    ):
        assert torch.equal(exported[f"managertower.{key}"], bt[f"bridgetower.{key}"]), key
    assert torch.equal(exported["mlm_score.decoder.weight"], bt["mlm_score.decoder.weight"])
    assert "managertower.cross_modal_image_managers.1.linear_controller.weight" in exported
    assert not any("link_tower" in k for k in exported)


def test_built_from_unimodal_encoders(tmp_path):
    """--text_model / --vision_model: RoBERTa and CLIP weights in the towers, the rest new (weights.from_unimodal)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, RobertaConfig, RobertaModel

    from llava_manager.tower.data.synthetic import tiny_tower_tokenizer

    tokenizer = tiny_tower_tokenizer()
    torch.manual_seed(4)
    RobertaModel(
        RobertaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=64,
            layer_norm_eps=1e-5,
        )
    ).save_pretrained(tmp_path / "roberta")
    tokenizer.save_pretrained(tmp_path / "roberta")
    clip = CLIPVisionConfig(
        hidden_size=128,
        intermediate_size=512,
        num_attention_heads=2,
        num_hidden_layers=4,
        image_size=32,
        patch_size=8,
        layer_norm_eps=1e-5,
    )
    CLIPVisionModel(clip).save_pretrained(tmp_path / "clip")
    roberta = load_file(tmp_path / "roberta" / "model.safetensors")
    trainer = train(
        "pretrain",
        tmp_path / "out",
        "--text_model",
        str(tmp_path / "roberta"),
        "--vision_model",
        str(tmp_path / "clip"),
        "--num_cross_layers",
        "2",
        "--max_steps",
        "1",
        "--learning_rate",
        "0",
        *REAL,
    )
    assert trainer.model.config.num_hidden_layers == 2
    exported = load_file(tmp_path / "out" / "model.safetensors")
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(exported[f"managertower.text_model.{key}"], roberta[key if key in roberta else f"roberta.{key}"])


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory):
    """4 steps of VQAv2 with a checkpoint at step 2."""
    out = tmp_path_factory.mktemp("tower") / "vqa_full"
    args = [
        "--max_steps",
        "4",
        "--save_steps",
        "2",
        "--data_seed",
        "42",
        "--logging_steps",
        "1",
        "--synthetic_samples",
        "16",
        "--per_device_train_batch_size",
        "4",
        "--disable_tqdm",
        "true",
    ]
    recipe("tower_finetune").run(["--task", "vqav2", "--output_dir", str(out), *args])
    return out, args


def test_resume_continues_at_the_saved_step_with_the_saved_weights(vqa_run, tmp_path, monkeypatch):
    full, args = vqa_run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    saved = load_file(resumed / "checkpoint-2" / "model.safetensors")
    key = "managertower.cross_modal_image_managers.1.linear_controller.weight"
    seen = {}
    original = training.TowerTrainer._load_from_checkpoint

    def spy(self, checkpoint, model=None):
        original(self, checkpoint, model)
        seen["weight"] = dict(self.model.named_parameters())[key].detach().clone()
        seen["step"] = self.state.global_step

    monkeypatch.setattr(training.TowerTrainer, "_load_from_checkpoint", spy)
    # another --seed: a run that started over would have another initial model (and other losses)
    trainer = recipe("tower_finetune").run(
        [
            "--task",
            "vqav2",
            "--output_dir",
            str(resumed),
            *args,
            "--resume_from_checkpoint",
            str(resumed / "checkpoint-2"),
            "--seed",
            "7",
        ]
    )
    assert torch.equal(seen["weight"], saved[key])
    assert trainer.state.global_step == 4
    reference, after = losses(full), losses(resumed)
    assert sorted(after) == [1, 2, 3, 4]  # steps 1-2 from the checkpoint's state, 3-4 trained now
    assert [after[s] for s in (3, 4)] == [reference[s] for s in (3, 4)]
    final, expected = load_file(resumed / "model.safetensors"), load_file(full / "model.safetensors")
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_a_preempted_tower_run_saves_stops_and_resumes_exactly(vqa_run, tmp_path, monkeypatch):
    """SIGTERM during step 3 of 4: checkpoint-3 saved complete, nothing exported or evaluated; the resumed run logs
    the uninterrupted run's losses and exports its weights."""
    import os
    import signal

    from llava_manager.runtime.commits import problems
    from llava_manager.runtime.preemption import PreemptionCallback

    full, args = vqa_run

    def on_step_begin(self, a, state, control, **kwargs):
        if state.global_step + 1 == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(PreemptionCallback, "on_step_begin", on_step_begin, raising=False)
    out = tmp_path / "run"
    trainer = recipe("tower_finetune").run(["--task", "vqav2", "--output_dir", str(out), *args])
    assert trainer.preemption.stopped_at == 3 and problems(out / "checkpoint-3") == []
    assert not (out / "model.safetensors").exists() and not (out / "metrics.json").exists()
    monkeypatch.undo()
    recipe("tower_finetune").run(
        ["--task", "vqav2", "--output_dir", str(out), *args, "--resume_from_checkpoint", "last"]
    )
    assert losses(out) == losses(full)
    final, expected = load_file(out / "model.safetensors"), load_file(full / "model.safetensors")
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_a_non_finite_tower_loss_stops_the_run_naming_the_step(vqa_run, tmp_path, monkeypatch):
    from transformers import Trainer

    from llava_manager.runtime.nonfinite import NonFiniteError

    _, args = vqa_run
    real = Trainer.compute_loss  # under TowerTrainer.compute_loss, which watches the loss it returns

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        loss, outputs = real(self, model, inputs, return_outputs=True, **kwargs)
        if model.training and self.state.global_step + 1 == 2:
            loss = loss * float("nan")
        return (loss, outputs) if return_outputs else loss

    monkeypatch.setattr(Trainer, "compute_loss", compute_loss)
    with pytest.raises(NonFiniteError, match="step 2: the loss is nan"):
        recipe("tower_finetune").run(["--task", "vqav2", "--output_dir", str(tmp_path), *args])
    assert not (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize("change", ["missing", "renamed"])
def test_a_checkpoint_that_does_not_match_fails_instead_of_restarting(vqa_run, tmp_path, change):
    full, args = vqa_run
    broken = tmp_path / "checkpoint-2"
    shutil.copytree(full / "checkpoint-2", broken)
    state = load_file(broken / "model.safetensors")
    key = "managertower.cross_modal_text_managers.1.layer_scores_cross"
    value = state.pop(key)
    if change == "renamed":
        state[key.replace("layer_scores_cross", "cross_scores")] = value
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    commit(broken)  # a complete checkpoint whose keys do not match, not a torn one
    expected = re.escape(f"missing ['{key}']") + (".*unexpected" if change == "renamed" else "")
    with pytest.raises(CheckpointMismatchError, match=expected):
        recipe("tower_finetune").run(
            ["--task", "vqav2", "--output_dir", str(tmp_path), *args, "--resume_from_checkpoint", str(broken)]
        )


def test_the_paper_defaults_apply_unless_a_flag_is_given():
    a = parse("finetune", ["--task", "vqav2", "--model_name_or_path", "some/model"])
    t = a.training
    assert (t.num_train_epochs, t.learning_rate, t.weight_decay, t.warmup_steps) == (10, 9e-6, 0.06, 0.06)
    assert (t.adam_beta1, t.adam_beta2, t.adam_epsilon, str(t.lr_scheduler_type)) == (
        0.9,
        0.98,
        1e-8,
        "SchedulerType.LINEAR",
    )
    assert a.optim.total_batch_size == 576 and t.per_device_train_batch_size * t.gradient_accumulation_steps == 576
    assert (a.optim.lr_mult_head, a.optim.lr_mult_cross_modal, a.model.head_hidden_scale) == (50, 5, 2)
    assert a.model.image_size == 576 and a.data.max_text_len == 50 and not a.tiny and t.max_grad_norm == 0
    p = parse("pretrain", ["--model_name_or_path", "m"]).training
    total = p.per_device_train_batch_size * p.gradient_accumulation_steps
    assert (p.max_steps, p.warmup_steps, p.learning_rate, total) == (100_000, 10_000, 1e-5, 4096)
    for task, (epochs, lr, wd, warmup, size, head, scale) in {
        "snli_ve": (4, 3e-6, 0.01, 0.06, 384, 10, 2),
        "nlvr2": (5, 1.4e-5, 0.01, 0.1, 384, 10, 1),
        "flickr30k": (20, 6e-6, 0.01, 0.1, 384, 5, 1),
    }.items():
        a = parse("finetune", ["--task", task, "--model_name_or_path", "m"])
        assert (
            a.training.num_train_epochs,
            a.training.learning_rate,
            a.training.weight_decay,
            a.training.warmup_steps,
            a.model.image_size,
            a.optim.lr_mult_head,
            a.model.head_hidden_scale,
        ) == (epochs, lr, wd, warmup, size, head, scale)
    a = parse(
        "finetune",
        [
            "--task",
            "nlvr2",
            "--model_name_or_path",
            "m",
            "--learning_rate",
            "1e-5",
            "--gradient_accumulation_steps",
            "3",
            "--lr_mult_head",
            "2",
        ],
    )
    assert (a.training.learning_rate, a.training.gradient_accumulation_steps, a.optim.lr_mult_head) == (1e-5, 3, 2)
    with pytest.raises(ValueError, match="not a multiple"):
        parse("finetune", ["--task", "nlvr2", "--model_name_or_path", "m", "--total_batch_size", "10"])
    with pytest.raises(ValueError, match="--task is required"):
        parse("finetune", [])
    with pytest.raises(ValueError, match="tower_finetune.py"):
        parse("pretrain", ["--task", "vqav2"])


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed")
def test_deepspeed_zero2_single_process_on_cpu(tmp_path):
    """Plain python with --deepspeed: the CPU shim makes a world of one; the recipe's optimizer groups go to the
    ZeRO-2 engine (its config has no optimizer section)."""
    command = [
        sys.executable,
        str(ROOT / "recipes" / "tower_finetune.py"),
        "--task",
        "snli_ve",
        "--deepspeed",
        str(ROOT / "recipes" / "zero2.json"),
        "--output_dir",
        str(tmp_path),
        *QUICK,
        "--dataloader_num_workers",
        "0",
        "--learning_rate",
        "3e-4",
    ]
    result = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(losses(tmp_path)) == [1, 2]
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["global_step"] == 2 and "eval_accuracy" in report["eval"]
    groups = {g["group"]: g for g in json.loads((tmp_path / "optimizer_groups.json").read_text())}  # DeepSpeed's
    base = groups["base/decay"]["initial_lr"]
    assert base == pytest.approx(3e-4)  # the embedded default's (no optimizer section in zero2.json)
    assert groups["cross_modal/no_decay"]["initial_lr"] == pytest.approx(5 * base)  # SNLI-VE: x5, x10
    assert groups["head/decay"]["initial_lr"] == pytest.approx(10 * base)
    assert groups["head/no_decay"]["weight_decay"] == 0 and groups["head/decay"]["weight_decay"] == 0.01
    TASK_MODELS["snli_ve"].from_pretrained(tmp_path)
