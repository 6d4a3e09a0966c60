"""Training recipes: stage defaults, parameter groups by module, a plain-python run that trains and exports, the
norm callback, and skipped data. DeepSpeed runs are in test_deepspeed.py."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import LlavaOnevisionForConditionalGeneration

import llava_manager
from llava_manager import apply_manager, get_managers
from llava_manager.synthetic.data import tiny_model_config, tiny_processor
from llava_manager.training.data import BATCH_INFO
from llava_manager.training.parts import module_parameters, parameter_groups, set_trainable
from llava_manager.training.train import run
from llava_manager.training.train_args import _CHECKPOINTING, parse

NO_CHECKPOINTING = [f"--{_CHECKPOINTING}", "false"]  # faster on a tiny model


def test_stage_defaults_follow_llava_onevision_and_the_command_line_wins():
    real = ["--model_name_or_path", "some/model"]
    m, mg, d, t = parse("stage1", real)
    assert (t.learning_rate, m.train_modules, d.template, t.per_device_train_batch_size) == (
        1e-3,
        "projector",
        "plain",
        16,
    )
    m, mg, d, t = parse("stage2", real)
    assert (t.learning_rate, m.vision_tower_lr, m.manager_lr) == (1e-5, 2e-6, None)
    assert m.modules() == {"vision_tower", "projector", "llm"} and d.template is None  # the model's LLM's, at run time
    assert (t.num_train_epochs, t.lr_scheduler_type.value, t.warmup_steps, t.weight_decay) == (1, "cosine", 0.03, 0.0)
    assert getattr(t, _CHECKPOINTING) and d.max_length == 16384 and not t.remove_unused_columns
    assert t.bf16 == (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    m, mg, d, t = parse(
        "stage1_5",
        real
        + [
            "--learning_rate",
            "3e-5",
            "--manager_lr",
            "1e-4",
            "--local_rank",
            "0",
            "--manager_interval",
            "2",
            "--manager_vision_layers",
            "3,4",
        ],
    )
    assert (t.learning_rate, m.manager_lr, t.output_dir) == (3e-5, 1e-4, "runs/stage1_5")
    assert mg.config().interval == 2 and mg.config().vision_layers == [3, 4]
    with pytest.raises(ValueError, match="--train_modules 'projector,eyes'"):
        parse("stage2", real + ["--train_modules", "projector,eyes"])
    with pytest.raises(ValueError, match="interval"):
        parse("stage2", real + ["--manager_interval", "0"])
    with pytest.raises(ValueError, match="stage 'stage3'"):
        parse("stage3", real)


def tiny_patched():
    processor = tiny_processor()
    torch.manual_seed(0)
    return apply_manager(LlavaOnevisionForConditionalGeneration(tiny_model_config(processor)))


def test_parameter_groups_are_chosen_by_module():
    model = tiny_patched()
    parts = module_parameters(model)
    inner = model.model
    assert {id(p) for p in parts["vision_tower"]} == {id(p) for p in inner.vision_tower.parameters()}
    assert {id(p) for p in parts["managers"]} == {id(m.weight) for m in get_managers(model)}
    assert {id(p) for p in parts["llm"]} == {
        id(p) for p in list(inner.language_model.parameters()) + list(model.lm_head.parameters())
    }
    assert sum(len(v) for v in parts.values()) == len(list(model.parameters()))

    set_trainable(model, {"projector"})  # Stage-1
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in parts["projector"] + parts["managers"]}

    set_trainable(model, {"vision_tower", "projector", "llm"})
    decay = {n for n, _ in model.named_parameters() if n.endswith("weight") and "norm" not in n}
    groups = parameter_groups(model, 1e-5, 0.1, decay, vision_tower_lr=2e-6, manager_lr=1e-3)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert len(lr_of) == len(list(model.parameters()))
    assert all(lr_of[id(p)][0] == 2e-6 for p in parts["vision_tower"])
    assert all(lr_of[id(p)] == (1e-3, 0.0) for p in parts["managers"])
    assert all(lr_of[id(p)][0] == 1e-5 for p in parts["llm"] + parts["projector"])
    assert lr_of[id(model.lm_head.weight)] == (1e-5, 0.1)


def log_losses(output_dir):
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {e["step"]: e for e in state["log_history"] if "loss" in e}


@pytest.fixture(scope="module")
def stage2_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage2")
    trainer = run(
        "stage2",
        [
            "--output_dir",
            str(out),
            "--max_steps",
            "16",
            "--synthetic_samples",
            "128",
            "--logging_steps",
            "1",
            "--save_steps",
            "8",
            "--dataloader_num_workers",
            "0",
            *NO_CHECKPOINTING,
        ],
    )
    return out, trainer


def test_default_run_trains_logs_norms_and_exports(stage2_run):
    out, trainer = stage2_run
    logs = log_losses(out)
    losses = [logs[s]["loss"] for s in sorted(logs)]
    assert len(losses) == 16 and losses[0] > 2.0
    assert sum(losses[-4:]) / 4 < 0.9 * sum(losses[:4]) / 4  # the loss falls
    norms = [logs[16][k] for k in logs[16] if k.startswith("manager_norm/layer_")]
    assert len(norms) == len(get_managers(trainer.model)) and all(n > 0 for n in norms)
    assert logs[1]["manager_norm/layer_0"] < logs[16]["manager_norm/layer_0"]  # the managers wake up
    assert (out / "checkpoint-8").is_dir() and (out / "checkpoint-16").is_dir()

    exported = llava_manager.from_pretrained(out)
    trained = get_managers(trainer.model)
    for saved, live in zip(get_managers(exported), trained):
        assert torch.equal(saved.weight, live.weight.detach().cpu()) and saved.weight.abs().sum() > 0
    processor = llava_manager.processing.processors.load_processor(out)
    assert len(processor.tokenizer) == exported.config.text_config.vocab_size
    assert json.loads((out / "data_skipped.json").read_text())["skipped"] == 0


def test_exported_model_is_the_trained_model(stage2_run):
    out, trainer = stage2_run
    exported = llava_manager.from_pretrained(out).eval()
    live = trainer.model.eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    batch.pop(BATCH_INFO)
    with torch.no_grad():
        assert torch.equal(exported(**batch).logits, live(**batch).logits)


def test_stage1_trains_only_projector_and_managers(tmp_path):
    trainer = run(
        "stage1",
        [
            "--output_dir",
            str(tmp_path),
            "--max_steps",
            "3",
            "--synthetic_samples",
            "32",
            "--per_device_train_batch_size",
            "4",
            "--dataloader_num_workers",
            "0",
            "--save_steps",
            "100",
        ]
        + NO_CHECKPOINTING,
    )
    from transformers import set_seed

    set_seed(42)  # the recipes' default seed builds the same initial weights
    before = LlavaOnevisionForConditionalGeneration(tiny_model_config(tiny_processor()))
    after = dict(trainer.model.named_parameters())
    changed = {n for n, p in before.named_parameters() if not torch.equal(p, after[n].detach())}
    assert changed and all(n.startswith(("model.multi_modal_projector", "model.image_newline")) for n in changed)
    assert all(m.weight.abs().sum() > 0 for m in get_managers(trainer.model))


def _bad_data(tmp_path) -> list[str]:
    """Four samples, two of them bad (a missing image, malformed turns); the arguments that train on them."""
    from PIL import Image

    Image.new("RGB", (28, 28), (250, 0, 0)).save(tmp_path / "red.png")
    good = {
        "image": "red.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the shape ?"},
            {"from": "gpt", "value": "red ."},
        ],
    }
    data = [
        good,
        {"id": "gone", "image": "gone.png", "conversations": good["conversations"]},
        {"id": "bad-turns", "conversations": [{"from": "gpt", "value": "x"}]},
        good,
    ]
    (tmp_path / "data.json").write_text(json.dumps(data))
    common = [
        "--data_path",
        str(tmp_path / "data.json"),
        "--image_folder",
        str(tmp_path),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--dataloader_num_workers",
        "0",
        "--save_steps",
        "100",
        "--logging_steps",
        "1",
        *NO_CHECKPOINTING,
    ]
    return common


def test_bad_samples_are_skipped_counted_and_summarised(tmp_path):
    common = _bad_data(tmp_path)
    run("stage2", common + ["--output_dir", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "data_skipped.json").read_text())
    assert summary["by_reason"] == {
        "missing image": summary["by_reason"]["missing image"],
        "malformed": summary["by_reason"]["malformed"],
    }
    assert {tuple(s[1:]) for s in summary["samples"]} == {("gone", "missing image"), ("bad-turns", "malformed")}
    logs = log_losses(tmp_path / "out")
    assert logs[max(logs)]["data_skipped"] == summary["skipped"] > 0 and all(
        math.isfinite(e["loss"]) for e in logs.values()
    )
    with pytest.raises(ValueError, match=r"id '(gone|bad-turns)'"):
        run("stage2", common + ["--output_dir", str(tmp_path / "strict"), "--strict_data", "true"])


def test_the_skip_report_survives_a_resume(tmp_path):
    """A run resumed from checkpoint-2 of 4 steps reports every sample skipped in the whole run, in its
    data_skipped.json and in the logged counts, as the uninterrupted run does."""
    import shutil

    common = [*_bad_data(tmp_path), "--max_steps", "4", "--save_steps", "2"]  # the later flags win
    run("stage2", common + ["--output_dir", str(tmp_path / "whole")])
    shutil.copytree(tmp_path / "whole" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    run("stage2", common + ["--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", "last"])
    whole, resumed = (json.loads((tmp_path / d / "data_skipped.json").read_text()) for d in ("whole", "resumed"))
    at_checkpoint = json.loads((tmp_path / "whole" / "checkpoint-2" / "data_skipped.json").read_text())
    assert 0 < at_checkpoint["skipped"] < whole["skipped"]  # skips on both sides of the checkpoint
    assert resumed == whole
    counts = {d: {s: e["data_skipped"] for s, e in log_losses(tmp_path / d).items()} for d in ("whole", "resumed")}
    assert counts["resumed"] == counts["whole"] and counts["whole"][4] == whole["skipped"]


def test_a_patched_checkpoint_continues_with_its_own_managers(stage2_run, tmp_path):
    """Stage chaining: the next stage starts from the previous stage's export; its managers are kept."""
    out, _ = stage2_run
    before = [m.weight.clone() for m in get_managers(llava_manager.from_pretrained(out))]
    trainer = run(
        "stage2",
        [
            "--model_name_or_path",
            str(out),
            "--output_dir",
            str(tmp_path),
            "--max_steps",
            "2",
            "--synthetic_samples",
            "16",
            "--dataloader_num_workers",
            "0",
            "--save_steps",
            "100",
            "--per_device_train_batch_size",
            "4",
            "--learning_rate",
            "1e-3",
        ]
        + NO_CHECKPOINTING,
    )
    after = get_managers(trainer.model)
    assert len(after) == len(before) and all(not torch.equal(a.weight.detach(), b) for a, b in zip(after, before))
    with pytest.raises(ValueError, match="already has managers.*interval"):
        run(
            "stage2", ["--model_name_or_path", str(out), "--output_dir", str(tmp_path / "x"), "--manager_interval", "2"]
        )
