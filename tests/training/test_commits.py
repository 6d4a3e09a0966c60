"""Checkpoint commit points (runtime/commits.py) on the plain-python recipe: every checkpoint is committed; a torn one
(the marker or a file missing, as a crash mid-save leaves it) is skipped by `--resume_from_checkpoint last`, which
resumes the newest complete one with the same losses as an uninterrupted run, and rewritten by the next save; an
explicit torn or model-only checkpoint, or none complete at all, is an error before anything loads; rotation counts
complete checkpoints only."""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support.helpers import ROOT, logged_losses, subprocess_env

from llava_manager.runtime import commits
from llava_manager.runtime.commits import MARKER, CheckpointWriteError, IncompleteCheckpointError, commit, problems
from llava_manager.training import train
from llava_manager.training.train import run
from llava_manager.training.train_args import _CHECKPOINTING

ARGS = (
    "--max_steps", "6", "--save_steps", "2", "--save_total_limit", "3", "--logging_steps", "1",
    "--synthetic_samples", "32", "--per_device_train_batch_size", "4", "--dataloader_num_workers", "0",
    "--data_seed", "42", f"--{_CHECKPOINTING}", "false",
)  # fmt: skip


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    (out / "checkpoint-99").mkdir(parents=True)  # a torn folder a crashed run left behind
    (out / "checkpoint-99" / "model.safetensors").write_bytes(b"torn")
    run("stage2", [*ARGS, "--output_dir", str(out)])
    return out


def test_every_checkpoint_is_committed_and_torn_leftovers_are_removed(full):
    assert [c.name for c in commits.checkpoints(full)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    for folder in commits.checkpoints(full):
        assert problems(folder) == []
        listed = json.loads((folder / MARKER).read_text())["files"]
        assert {"trainer_state.json", "optimizer.pt", "scheduler.pt", "model.safetensors"} <= set(listed)
        assert not (folder / (MARKER + ".tmp")).exists()


def _torn_copy(full, tmp_path):
    """The run as a crash while writing checkpoint-4 leaves it: checkpoint-2 complete, checkpoint-4 half written."""
    out = tmp_path / "run"
    for name in ("checkpoint-2", "checkpoint-4"):
        shutil.copytree(full / name, out / name)
    (out / "checkpoint-4" / MARKER).unlink()
    (out / "checkpoint-4" / "optimizer.pt").unlink()
    return out


def test_last_skips_a_torn_checkpoint_names_it_and_resumes_exactly(full, tmp_path, caplog):
    out = _torn_copy(full, tmp_path)
    with caplog.at_level(logging.WARNING, logger="llava_manager.runtime.commits"):
        run("stage2", [*ARGS, "--output_dir", str(out), "--resume_from_checkpoint", "last"])
    assert "skipping the incomplete checkpoint-4" in caplog.text and MARKER in caplog.text
    assert logged_losses(out) == logged_losses(full)  # steps 3-6 run again from checkpoint-2, as the full run did
    assert problems(out / "checkpoint-4") == []  # the torn folder was rewritten whole


def test_an_explicit_torn_checkpoint_is_an_error_before_anything_loads(full, tmp_path, monkeypatch):
    out = _torn_copy(full, tmp_path)
    monkeypatch.setattr(train, "build_model", lambda *a, **k: pytest.fail("the model was built"))
    with pytest.raises(IncompleteCheckpointError, match=rf"checkpoint-4: not a complete checkpoint: no {MARKER}.*"
                       r"Complete checkpoints beside it: checkpoint-2"):  # fmt: skip
        run("stage2", [*ARGS, "--output_dir", str(out), "--resume_from_checkpoint", str(out / "checkpoint-4")])


def test_a_committed_checkpoint_that_lost_its_optimizer_state_is_an_error(full, tmp_path):
    folder = tmp_path / "checkpoint-4"
    shutil.copytree(full / "checkpoint-4", folder)
    (folder / "optimizer.pt").unlink()
    with pytest.raises(IncompleteCheckpointError, match="optimizer.pt is missing"):
        run("stage2", [*ARGS, "--output_dir", str(tmp_path), "--resume_from_checkpoint", str(folder)])
    (folder / "rng_state.pth").write_bytes(b"")  # a file cut short
    assert any("rng_state.pth has 0 bytes" in p for p in problems(folder))


def test_last_without_a_complete_checkpoint_is_an_error_not_a_restart(full, tmp_path):
    out = _torn_copy(full, tmp_path)
    shutil.rmtree(out / "checkpoint-2")
    with pytest.raises(IncompleteCheckpointError, match=r"no complete checkpoint in .*checkpoint-4 \(no "):
        run("stage2", [*ARGS, "--output_dir", str(out), "--resume_from_checkpoint", "last"])
    assert [c.name for c in commits.checkpoints(out)] == ["checkpoint-4"]  # nothing trained, nothing removed


def test_auto_starts_a_run_without_checkpoints_and_resumes_one_with_them(full, tmp_path):
    """`auto`, for a job that requeues itself: from step 0 when the run folder has no checkpoint folder at all, else
    as `last` (the newest complete one; only torn ones is an error)."""
    fresh = tmp_path / "fresh"
    run("stage2", [*ARGS, "--output_dir", str(fresh), "--max_steps", "2", "--resume_from_checkpoint", "auto"])
    assert sorted(logged_losses(fresh)) == [1, 2]
    out = _torn_copy(full, tmp_path)
    assert commits.resolve("auto", out) == str(out / "checkpoint-2")
    shutil.rmtree(out / "checkpoint-2")
    with pytest.raises(IncompleteCheckpointError, match="--resume_from_checkpoint auto: no complete checkpoint"):
        commits.resolve("auto", out)


def test_rotation_counts_complete_checkpoints_and_keeps_the_newest(tmp_path):
    out = tmp_path / "run"
    run("stage2", [*ARGS, "--output_dir", str(out), "--save_total_limit", "2", "--max_steps", "4"])
    assert [c.name for c in commits.checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    torn = out / "checkpoint-6"
    shutil.copytree(out / "checkpoint-4", torn)
    (torn / MARKER).unlink()
    assert commits.rotate(out, 1) == [torn, out / "checkpoint-2"]  # torn first, then the oldest complete one
    assert [c.name for c in commits.checkpoints(out)] == ["checkpoint-4"]
    commit(out / "checkpoint-4")
    assert commits.rotate(out, 1) == []  # never the newest complete one


def test_a_model_only_checkpoint_does_not_resume(tmp_path):
    out = tmp_path / "run"
    run("stage2", [*ARGS, "--output_dir", str(out), "--max_steps", "2", "--save_only_model", "true"])
    with pytest.raises(IncompleteCheckpointError, match="holds the model only .*--model_name_or_path"):
        run("stage2", [*ARGS, "--output_dir", str(out), "--resume_from_checkpoint", "last"])


# ---- faults injected while saving --------------------------------------------------------------------------------


def _at_checkpoint(step: int, make) -> None:
    """Before the Trainer writes checkpoint-`step`'s optimizer.pt, `make(path)` puts something at that path."""
    from llava_manager.training.trainer import ManagerTrainer

    real = ManagerTrainer._save_optimizer_and_scheduler

    def save(self, output_dir):
        if self.state.global_step == step:
            make(Path(output_dir) / "optimizer.pt")
        return real(self, output_dir)

    ManagerTrainer._save_optimizer_and_scheduler = save


def test_a_full_disk_while_saving_is_an_error_naming_the_file_and_the_disk(full, tmp_path, monkeypatch):
    """optimizer.pt of checkpoint-4 is a symlink to /dev/full (every write fails with ENOSPC): the error names the
    folder, the file, the failed write and the space left; checkpoint-2 stays the newest complete one and the resumed
    run is exact, rewriting checkpoint-4."""
    from llava_manager.training.trainer import ManagerTrainer

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this machine")
    monkeypatch.setattr(ManagerTrainer, "_save_optimizer_and_scheduler", ManagerTrainer._save_optimizer_and_scheduler)
    _at_checkpoint(4, lambda path: path.symlink_to("/dev/full"))
    out = tmp_path / "run"
    with pytest.raises(CheckpointWriteError) as error:
        run("stage2", [*ARGS, "--output_dir", str(out)])
    message = str(error.value)
    assert "checkpoint-4 failed" in message, message
    assert f"the file being written: {out / 'checkpoint-4' / 'optimizer.pt'}" in message, message
    assert re.search(r"GiB free on the disk holding .*checkpoint-4", message), message
    assert "the newest complete checkpoint: checkpoint-2" in message, message
    assert problems(out / "checkpoint-4")[0].startswith(f"no {MARKER}")
    assert not (out / "model.safetensors").exists()
    monkeypatch.undo()
    run("stage2", [*ARGS, "--output_dir", str(out), "--resume_from_checkpoint", "last"])
    assert logged_losses(out) == logged_losses(full) and problems(out / "checkpoint-4") == []


def test_the_disk_full_diagnosis_reads_the_errno():
    error = RuntimeError("write failed")
    error.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert commits._is_disk_full(error) and not commits._is_disk_full(RuntimeError("basic_ios::clear"))


KILLED_WHILE_SAVING = textwrap.dedent("""
    import os, sys
    sys.path[:0] = [sys.argv[1], str(__import__("pathlib").Path(sys.argv[1]).parent)]  # this folder, tests/
    from test_commits import _at_checkpoint
    from llava_manager.training.train import run

    _at_checkpoint(4, lambda path: os.mkfifo(path))  # opening it for writing blocks until the test kills us
    run("stage2", sys.argv[2:])
""")


@pytest.mark.slow
def test_a_process_killed_while_saving_resumes_from_the_last_complete_checkpoint(full, tmp_path):
    """A fresh process blocks while writing checkpoint-4 (a FIFO at optimizer.pt) and is killed with SIGKILL, as the
    OOM killer or a time limit would: `last` skips the torn checkpoint-4, naming it, and resumes exactly."""
    out = tmp_path / "run"
    script = tmp_path / "killed.py"
    script.write_text(KILLED_WHILE_SAVING)
    env = subprocess_env(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    process = subprocess.Popen(
        [sys.executable, str(script), str(Path(__file__).parent), *ARGS, "--output_dir", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    fifo = out / "checkpoint-4" / "optimizer.pt"
    deadline = time.monotonic() + 300
    while not fifo.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fifo.exists() and process.poll() is None, "the run did not reach the save of checkpoint-4"
    process.kill()
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert problems(out / "checkpoint-2") == [] and problems(out / "checkpoint-4")[0].startswith(f"no {MARKER}")
    result = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "stage2.py"), *ARGS, "--output_dir", str(out)]
        + ["--resume_from_checkpoint", "last"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipping the incomplete checkpoint-4" in result.stderr
    assert logged_losses(out) == logged_losses(full) and problems(out / "checkpoint-4") == []
