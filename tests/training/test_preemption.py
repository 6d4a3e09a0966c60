"""Preemption (runtime/preemption.py): a SIGTERM at a given step saves a complete checkpoint at the end of that
step and stops without exporting; the recipe exits with the requeue status; every process stops at the same step when
only one was signalled; the run resumed from that checkpoint logs the same losses as the uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from support.helpers import ROOT, logged_losses, subprocess_env

from llava_manager.runtime import commits
from llava_manager.runtime.cpu_distributed import free_port
from llava_manager.runtime.preemption import REQUEUE_STATUS, PreemptionCallback
from llava_manager.training.train import run
from llava_manager.training.train_args import _CHECKPOINTING

ARGS = (
    "--max_steps", "6", "--save_steps", "100", "--logging_steps", "1", "--synthetic_samples", "32",
    "--per_device_train_batch_size", "4", "--dataloader_num_workers", "0", "--data_seed", "42",
    f"--{_CHECKPOINTING}", "false",
)  # fmt: skip


def _signal_during(monkeypatch, step: int, signum=signal.SIGTERM) -> None:
    """The process signals itself at the start of optimizer step `step`, as Slurm would mid-step."""

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == step:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(PreemptionCallback, "on_step_begin", on_step_begin, raising=False)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    run("stage2", [*ARGS, "--output_dir", str(out)])
    return logged_losses(out)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_saves_at_the_step_boundary_and_the_resume_is_exact(monkeypatch, tmp_path, uninterrupted, signum):
    _signal_during(monkeypatch, 4, signum)
    trainer = run("stage2", [*ARGS, "--output_dir", str(tmp_path)])
    assert trainer.preemption.stopped_at == 4
    assert [c.name for c in commits.checkpoints(tmp_path)] == ["checkpoint-4"]  # --save_steps 100: the signal's save
    assert commits.problems(tmp_path / "checkpoint-4") == []
    assert not (tmp_path / "model.safetensors").exists()  # not exported as final
    assert signal.getsignal(signum) is not trainer.preemption._handle  # the handlers are given back
    monkeypatch.undo()
    resumed = run("stage2", [*ARGS, "--output_dir", str(tmp_path), "--resume_from_checkpoint", "last"])
    assert resumed.preemption.stopped_at is None
    assert logged_losses(tmp_path) == uninterrupted
    assert (tmp_path / "model.safetensors").exists()


PROBE = textwrap.dedent("""
    import os, signal, sys
    from llava_manager.runtime.preemption import PreemptionCallback
    from llava_manager.training.train import main

    def on_step_begin(self, args, state, control, **kwargs):
        at, rank = int(os.environ["SIGNAL_AT"]), int(os.environ["SIGNAL_RANK"])
        if state.global_step + 1 == at and args.process_index == rank:
            os.kill(os.getpid(), signal.SIGTERM)

    PreemptionCallback.on_step_begin = on_step_begin
    main("stage2", sys.argv[1:])
""")


def _launch(tmp_path, *args, processes: int = 1, signal_at: int = 0, signal_rank: int = 0):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port"]
        launcher += [str(free_port())]
    env = subprocess_env(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", SIGNAL_AT=str(signal_at))
    env["SIGNAL_RANK"] = str(signal_rank)
    return subprocess.run(
        [*launcher, str(probe), *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )


@pytest.mark.slow
def test_the_recipe_exits_with_the_requeue_status(tmp_path):
    out = tmp_path / "out"
    result = _launch(tmp_path, *ARGS, "--output_dir", str(out), signal_at=2)
    assert result.returncode == REQUEUE_STATUS, result.stderr[-3000:]
    assert "preempted: stopped after step 2" in result.stderr
    assert commits.problems(out / "checkpoint-2") == [] and not (out / "model.safetensors").exists()


@pytest.mark.slow
def test_every_process_stops_at_the_same_step_when_one_is_signalled(tmp_path):
    """torchrun, 2 processes of FSDP2 on CPU: only rank 1 gets SIGTERM; both save their part of checkpoint-3 and
    stop after it (torchrun reports status 75 and exits 1); the resumed run finishes the 6 steps."""
    out = tmp_path / "out"
    fsdp = ("--fsdp", "--fsdp_config", str(ROOT / "recipes" / "fsdp2.json"))
    args = (*ARGS, *fsdp, "--output_dir", str(out), "--per_device_train_batch_size", "2")
    result = _launch(tmp_path, *args, processes=2, signal_at=3, signal_rank=1)
    log = result.stdout + result.stderr
    # torchrun reports the first process to exit (status 75) and stops the other, which may still be exiting
    assert result.returncode != 0 and f"exitcode  : {REQUEUE_STATUS}" in log, log[-3000:]
    assert log.count("preempted: stopped after step 3") == 2, log[-3000:]
    assert [c.name for c in commits.checkpoints(out)] == ["checkpoint-3"] and commits.problems(
        out / "checkpoint-3"
    ) == []
    resumed = _launch(tmp_path, *args, "--resume_from_checkpoint", "last", processes=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert sorted(logged_losses(out)) == [1, 2, 3, 4, 5, 6] and state["global_step"] == 6
