"""A non-finite loss or gradient stops the run with an error naming the step, before its optimizer step: the
checkpoints before it stay complete and resumable, and nothing of the bad step (checkpoint or export) is written."""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer

from llava_manager.core import commits
from llava_manager.training.nonfinite import NonFiniteError
from llava_manager.training.train import run
from llava_manager.training.train_args import _CHECKPOINTING

ARGS = (
    "--max_steps", "6", "--save_steps", "2", "--logging_steps", "1", "--synthetic_samples", "32",
    "--per_device_train_batch_size", "4", "--dataloader_num_workers", "0", "--data_seed", "42",
    f"--{_CHECKPOINTING}", "false",
)  # fmt: skip


def _break_step(monkeypatch, step: int, what: str):
    """From optimizer step `step` on, the loss is NaN ("loss"), or finite with NaN gradients ("gradient")."""
    real = Trainer.compute_loss  # under ManagerTrainer.compute_loss, which watches the loss it returns

    def compute_loss(self, model, inputs, *args, **kwargs):
        loss = real(self, model, inputs, *args, **kwargs)
        if model.training and self.state.global_step + 1 >= step:
            if what == "loss":
                loss = loss * float("nan")
            else:  # value 0, gradient 0 * inf = NaN
                weight = next(p for n, p in model.named_parameters() if "managers" in n)
                loss = loss + 0 * torch.sqrt((weight - weight.detach()).abs().sum())
        return loss

    monkeypatch.setattr(Trainer, "compute_loss", compute_loss)


@pytest.mark.parametrize("what", ["loss", "gradient"])
def test_a_non_finite_step_stops_the_run_and_saves_nothing_of_it(monkeypatch, tmp_path, what):
    _break_step(monkeypatch, 3, what)
    expected = (
        r"step 3: the loss is nan" if what == "loss" else r"step 3: gradients are not finite \(in \d+ of \d+ parameters"
    )
    with pytest.raises(NonFiniteError, match=expected):
        run("stage2", [*ARGS, "--output_dir", str(tmp_path)])
    assert [c.name for c in commits.checkpoints(tmp_path)] == ["checkpoint-2"]
    assert commits.problems(tmp_path / "checkpoint-2") == []
    assert not (tmp_path / "model.safetensors").exists()  # no export
    monkeypatch.undo()
    run("stage2", [*ARGS, "--output_dir", str(tmp_path), "--resume_from_checkpoint", "last"])
    assert (tmp_path / "model.safetensors").exists()
