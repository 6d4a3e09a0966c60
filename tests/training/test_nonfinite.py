"""A non-finite loss or gradient stops the run with an error naming the step, before its optimizer step: the
checkpoints before it stay complete and resumable, and nothing of the bad step (checkpoint or export) is written."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from transformers import Trainer

from llava_manager.runtime import commits
from llava_manager.runtime.nonfinite import NonFiniteError, NonFiniteGuard
from llava_manager.training.train import run
from llava_manager.training.train_args import _CHECKPOINTING

ARGS = (
    "--max_steps", "6", "--save_steps", "2", "--logging_steps", "1", "--synthetic_samples", "32",
    "--per_device_train_batch_size", "4", "--dataloader_num_workers", "0", "--data_seed", "42",
    f"--{_CHECKPOINTING}", "false",
)  # fmt: skip


def _break_step(monkeypatch, step: int, what: str, until: int | None = None):
    """From optimizer step `step` on (to `until`), the loss is NaN ("loss"), or finite with NaN gradients
    ("gradient")."""
    real = Trainer.compute_loss  # under ManagerTrainer.compute_loss, which watches the loss it returns

    def compute_loss(self, model, inputs, *args, **kwargs):
        loss = real(self, model, inputs, *args, **kwargs)
        if model.training and step <= self.state.global_step + 1 <= (until or 10**9):
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


@pytest.mark.parametrize("what", ["loss", "gradient"])
def test_skipped_steps_change_nothing_are_logged_and_survive_a_resume(monkeypatch, tmp_path, what):
    """--skip_nonfinite_steps 2, steps 3 and 4 broken: the run goes on; checkpoint-4 holds exactly checkpoint-2's
    weights and optimizer state; the log shows step 3's real loss (NaN with a broken loss) and the count; a run
    resumed from checkpoint-4 reports both skipped steps at the end."""
    from safetensors.torch import load_file

    _break_step(monkeypatch, 3, what, until=4)
    args = [*ARGS, "--skip_nonfinite_steps", "2", "--save_total_limit", "3"]
    run("stage2", [*args, "--output_dir", str(tmp_path / "run")])
    two, four = (tmp_path / "run" / f"checkpoint-{n}" for n in (2, 4))
    a, b = load_file(two / "model.safetensors"), load_file(four / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    oa, ob = (torch.load(c / "optimizer.pt", weights_only=True)["state"] for c in (two, four))
    assert oa.keys() == ob.keys() and all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    logs = {e["step"]: e for e in state["log_history"] if "loss" in e}
    assert sorted(logs) == [1, 2, 3, 4, 5, 6]
    assert math.isnan(logs[3]["loss"]) == (what == "loss") and math.isfinite(logs[5]["loss"])
    assert [logs[s]["nonfinite_skipped"] for s in (2, 3, 4, 5)] == [0, 1, 2, 2]
    assert logs[6]["grad_norm"] != logs[2]["grad_norm"]  # training went on after the skipped steps
    monkeypatch.undo()
    resumed = tmp_path / "resumed"
    shutil.copytree(four, resumed / "checkpoint-4")
    run("stage2", [*args, "--output_dir", str(resumed), "--resume_from_checkpoint", "last"])
    assert json.loads((resumed / "nonfinite_skipped.json").read_text()) == {"skipped_steps": [3, 4]}


def test_more_non_finite_steps_in_a_row_than_allowed_stop_the_run(monkeypatch, tmp_path):
    _break_step(monkeypatch, 3, "loss")
    with pytest.raises(
        NonFiniteError, match=r"step 5: the loss is nan.* \(3 in a row, more than --skip_nonfinite_steps 2\)"
    ):
        run("stage2", [*ARGS, "--output_dir", str(tmp_path), "--skip_nonfinite_steps", "2"])
    assert [c.name for c in commits.checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]


def test_skipping_is_refused_where_the_step_cannot_be_skipped():
    with pytest.raises(ValueError, match="under DeepSpeed the engine steps inside backward"):
        NonFiniteGuard(deepspeed=True, skip_limit=1)
    with pytest.raises(ValueError, match="use 0 .* or a positive count"):
        NonFiniteGuard(skip_limit=-1)
