"""`--group_by_modality_length` on two processes (the `deepspeed` launcher, ZeRO-2 on CPU): every rank of a step gets
samples of one modality, and a run resumed mid-epoch in a later epoch continues exactly. (Apart from
test_sampling.py, which stays under a minute: this one takes about 45 s.)"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from support.helpers import ROOT, logged_losses, run_recipe

from llava_manager.training.train_args import _CHECKPOINTING

pytestmark = pytest.mark.slow  # launches processes or trains; outside the fast tier


@pytest.mark.skipif(shutil.which("deepspeed") is None, reason="needs the deepspeed launcher")
def test_two_processes_resume_exactly_mid_epoch_in_a_later_epoch(tmp_path):
    """World size 2 (DeepSpeed ZeRO-2 on CPU), one sample a device: 8 steps an epoch, resumed after step 10. With
    the Trainer's own order this setting fails at once (a step with a text-only batch on one rank only: a collective
    mismatch); resumed in epoch 2, the sampler's epoch comes from `SamplerEpochCallback` (the Trainer's set_epoch
    does not reach it under skip_first_batches there), so the losses and the weights are those of the full run."""
    from safetensors.torch import load_file

    def launch(output_dir, *extra):
        port = 29500 + (os.getpid() + len(extra)) % 1000
        run_recipe(
            "stage2",
            output_dir,
            "--deepspeed",
            str(ROOT / "recipes" / "zero2.json"),
            *RECIPE_2,
            *extra,
            launcher=["deepspeed", "--num_gpus", "2", "--master_port", str(port)],
        )

    launch(tmp_path / "full")
    reference = logged_losses(tmp_path / "full")
    assert sorted(reference) == list(range(1, 13))
    shutil.copytree(tmp_path / "full" / "checkpoint-10", tmp_path / "resumed" / "checkpoint-10")
    launch(tmp_path / "resumed", "--resume_from_checkpoint", str(tmp_path / "resumed" / "checkpoint-10"))
    assert logged_losses(tmp_path / "resumed") == reference
    full, resumed = (load_file(tmp_path / d / "model.safetensors") for d in ("full", "resumed"))
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)


RECIPE_2 = (
    "--max_steps",
    "12",
    "--save_steps",
    "10",
    "--logging_steps",
    "1",
    "--synthetic_samples",
    "32",
    "--per_device_train_batch_size",
    "1",
    "--gradient_accumulation_steps",
    "2",
    "--dataloader_num_workers",
    "0",
    "--data_seed",
    "42",
    "--group_by_modality_length",
    "true",
    f"--{_CHECKPOINTING}",
    "false",
)
