"""Resuming without DeepSpeed: `python recipes/stage2.py --resume_from_checkpoint` in a fresh process continues with
the checkpoint's weights, optimizer, schedule, data order and RNG, exactly; `load_best_model_at_end` loads the best
weights; a checkpoint whose keys do not cover the model is an error naming them. (ZeRO-2/3: test_deepspeed.py.)"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from support.helpers import logged_losses, run_recipe
from transformers import AutoModelForImageTextToText, TrainingArguments

import llava_manager
from llava_manager import apply_manager, get_managers
from llava_manager.core.checkpoint import CheckpointMismatchError
from llava_manager.runtime.commits import commit
from llava_manager.synthetic.data import tiny_model_config, tiny_processor, write_shapes_dataset
from llava_manager.training.data import Collator, SupervisedDataset, load_records
from llava_manager.training.train import run
from llava_manager.training.train_args import _CHECKPOINTING
from llava_manager.training.trainer import ManagerTrainer

COMMON = (
    "--max_steps",
    "6",
    "--save_steps",
    "3",
    "--logging_steps",
    "1",
    "--synthetic_samples",
    "48",
    "--per_device_train_batch_size",
    "4",
    "--dataloader_num_workers",
    "0",
    "--data_seed",
    "42",
    f"--{_CHECKPOINTING}",
    "false",
)


@pytest.fixture(scope="module", params=[1, 2], ids=["accumulation-1", "accumulation-2"])
def full_run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"full-{request.param}")
    args = (*COMMON, "--gradient_accumulation_steps", str(request.param))
    run_recipe("stage2", out, *args)
    return out, args


@pytest.mark.slow
def test_plain_python_resume_in_a_fresh_process_continues_exactly(full_run, tmp_path):
    full, args = full_run
    reference = logged_losses(full)
    assert sorted(reference) == [1, 2, 3, 4, 5, 6]
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")
    # Another --seed builds another initial model: a run that kept its initial weights could not match the losses.
    run_recipe("stage2", resumed, *args, "--resume_from_checkpoint", str(resumed / "checkpoint-3"), "--seed", "7")
    after = logged_losses(resumed)  # steps 1-3 come from the checkpoint's trainer state, 4-6 from the new run
    assert after == reference
    for a, b in zip(
        get_managers(llava_manager.from_pretrained(resumed)), get_managers(llava_manager.from_pretrained(full))
    ):
        assert torch.equal(a.weight, b.weight) and a.weight.abs().sum() > 0


@pytest.mark.parametrize("full_run", [1], indirect=True, ids=["accumulation-1"])
@pytest.mark.parametrize("change", ["drop a manager", "drop a vision layer", "add a key"])
def test_a_checkpoint_that_does_not_cover_the_model_is_an_error_naming_the_keys(full_run, tmp_path, change):
    full, args = full_run
    broken = tmp_path / "checkpoint-3"
    shutil.copytree(full / "checkpoint-3", broken)
    state = load_file(broken / "model.safetensors")
    if change == "drop a manager":
        del state["model.managers.1.weight"]
        expected = r"missing \['model.managers.1.weight'\]"
    elif change == "drop a vision layer":
        dropped = [k for k in state if ".encoder.layers.0." in k]
        for key in dropped:
            del state[key]
        expected = r"missing \[.model.vision_tower.encoder.layers.0.layer_norm1.bias.*and 6 more \(16 keys\)"
    else:
        state["model.extra.weight"] = torch.zeros(2)
        expected = r"unexpected \['model.extra.weight'\]"
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    commit(broken)  # a complete checkpoint whose keys do not match (another model's), not a torn one
    with pytest.raises(CheckpointMismatchError, match=expected):
        run("stage2", [*args, "--output_dir", str(tmp_path), "--resume_from_checkpoint", str(broken)])


def test_load_best_model_at_end_loads_the_best_weights(tmp_path):
    processor = tiny_processor()
    torch.manual_seed(0)
    model = apply_manager(AutoModelForImageTextToText.from_config(tiny_model_config(processor)))
    paths = write_shapes_dataset(tmp_path / "data", 48)
    records = load_records(paths["instruct"])
    train, held_out = (SupervisedDataset(r, processor, paths["image_folder"]) for r in (records[:40], records[40:]))
    # greater_is_better on the loss makes the "best" checkpoint the worst one: an early one, not the last.
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        eval_strategy="steps",
        eval_steps=2,
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        greater_is_better=True,
        remove_unused_columns=False,
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=True,
    )
    trainer = ManagerTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=held_out,
        data_collator=Collator(processor.tokenizer.pad_token_id),
    )
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and not best.endswith("checkpoint-6")
    expected = llava_manager.from_pretrained(best).state_dict()
    last = llava_manager.from_pretrained(tmp_path / "out" / "checkpoint-6").state_dict()
    live = trainer.model.state_dict()
    assert all(torch.equal(live[k], expected[k]) for k in expected)
    assert not all(torch.equal(live[k], last[k]) for k in last)
