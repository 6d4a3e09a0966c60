"""The real DeepSpeed engine on CPU through the `deepspeed` launcher, world size 2: ZeRO-2 and ZeRO-3 train, save,
export the trained managers, and resume with the same per-step losses as the uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from support.helpers import ROOT, run_recipe
from support.helpers import logged_losses as losses

import llava_manager
from llava_manager import get_managers
from llava_manager.training.train_args import _CHECKPOINTING

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("deepspeed") is None, reason="needs the deepspeed launcher"),
]


def launch(config: str, output_dir: Path, *extra: str, gpus: int = 2) -> None:
    run_recipe(
        "stage2",
        output_dir,
        "--deepspeed",
        str(ROOT / "recipes" / config),
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
        "1",
        "--data_seed",
        "42",
        f"--{_CHECKPOINTING}",
        "true",
        "--group_by_modality_length",
        "true",
        *extra,
        launcher=["deepspeed", "--num_gpus", str(gpus), "--master_port", str(29500 + os.getpid() % 1000)],
    )


@pytest.mark.parametrize("config", ["zero2.json", "zero3.json"])
def test_world_size_2_trains_exports_and_resumes_exactly(tmp_path, config):
    full = tmp_path / "full"
    launch(config, full)
    reference = losses(full)
    assert sorted(reference) == [1, 2, 3, 4, 5, 6]
    state = json.loads((full / "trainer_state.json").read_text())
    # 45 samples with an image and 3 text-only, grouped by modality, each group filled up to whole steps of 2 x 4:
    # 6 + 1 steps an epoch, one of them text-only on both ranks (the vision tower and the managers get no gradient)
    assert state["train_batch_size"] == 4 and state["log_history"][-1]["epoch"] == pytest.approx(6 / 7)

    # the exported model holds the trained managers (gathered from the ZeRO-3 partitions on save)
    exported = llava_manager.from_pretrained(full)
    weights = [m.weight for m in get_managers(exported)]
    assert all(w.abs().sum() > 0 for w in weights)
    last = json.loads((full / "trainer_state.json").read_text())["log_history"]
    norms = [e for e in last if "manager_norm/layer_0" in e][-1]
    assert torch.isclose(weights[0].float().norm(), torch.tensor(norms["manager_norm/layer_0"]), rtol=1e-4)

    # "crash" after step 3: a new run resumes from the step-3 checkpoint. It gets another --seed, so a run that
    # silently started over (another initial model) could not reproduce the losses; weights, optimizer, schedule
    # and RNG (the managers' noise) all come from the checkpoint.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")
    launch(config, resumed, "--resume_from_checkpoint", str(resumed / "checkpoint-3"), "--seed", "7")
    after = losses(resumed)
    assert [after[s] for s in (4, 5, 6)] == [reference[s] for s in (4, 5, 6)]
    again = llava_manager.from_pretrained(resumed)
    for a, b in zip(get_managers(again), get_managers(exported)):
        assert torch.equal(a.weight, b.weight)


def test_plain_python_with_deepspeed_on_cpu(tmp_path):
    """Without a launcher: the CPU shim sets up a world of one."""
    run_recipe(
        "stage2",
        tmp_path,
        "--deepspeed",
        str(ROOT / "recipes" / "zero2.json"),
        "--max_steps",
        "2",
        "--logging_steps",
        "1",
        "--synthetic_samples",
        "16",
        "--dataloader_num_workers",
        "0",
        "--save_steps",
        "100",
    )
    assert sorted(losses(tmp_path)) == [1, 2]
