"""On one GPU: a few stage-2 steps of the embedded default under DeepSpeed ZeRO-2, ZeRO-3 (the `deepspeed` launcher,
`recipes/zero2.json`, `recipes/zero3.json`) and FSDP2 (torchrun, `recipes/fsdp2.json`), as users launch them; each
saves at step 3, exports the trained managers, and a fresh process resumed from checkpoint-3 (with another --seed, so
that only the checkpoint can give the same model) logs the same losses at steps 4-6, bit for bit, and exports the
same managers. The CPU versions: `tests/training/test_deepspeed.py`, `test_fsdp.py`, `test_resume.py`.

The three engines run side by side (one GPU holds all three tiny runs), the full runs first, then the resumed ones.
Attention is eager (`--attn_implementation eager`) and cuBLAS gets a fixed workspace (CUBLAS_WORKSPACE_CONFIG), so
that a step's gradients do not depend on the order of atomic additions (SDPA's flash and memory-efficient backward
kernels add in any order): the same checkpoint then gives the same step, bit for bit."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support.helpers import ROOT, logged_losses, subprocess_env

import llava_manager
from llava_manager import get_managers
from llava_manager.runtime.cpu_distributed import free_port
from llava_manager.training.train_args import _CHECKPOINTING

pytestmark = pytest.mark.gpu

ENGINES = ["zero2", "zero3", "fsdp2"]
ARGS = (
    *("--max_steps", "6", "--save_steps", "3", "--logging_steps", "1"),
    *("--synthetic_samples", "48", "--per_device_train_batch_size", "4", "--dataloader_num_workers", "0"),
    *("--data_seed", "42", f"--{_CHECKPOINTING}", "true", "--attn_implementation", "eager", "--report_to", "none"),
)
TIMEOUT = 420


def deepspeed_missing() -> str | None:
    try:
        import deepspeed  # noqa: F401
    except Exception as error:
        return f"deepspeed is not importable ({type(error).__name__}: {error})"
    return None


def command(engine: str, output_dir: Path, *extra: str) -> list[str]:
    port = str(free_port())
    recipe = str(ROOT / "recipes" / "stage2.py")
    if engine == "fsdp2":
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", port]
        engine_args = ["--fsdp", "--fsdp_config", str(ROOT / "recipes" / "fsdp2.json")]
    else:
        launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port", port]
        engine_args = ["--deepspeed", str(ROOT / "recipes" / f"{engine}.json")]
    return [*launcher, recipe, "--output_dir", str(output_dir), *engine_args, *ARGS, *extra]


def launch_together(jobs: dict[str, list[str]], logs: Path) -> dict[str, str]:
    """Runs every command at once; returns each one's output, or fails the test with the tail of the first that
    failed."""
    env = subprocess_env(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", CUBLAS_WORKSPACE_CONFIG=":4096:8")
    logs.mkdir(parents=True, exist_ok=True)
    running = {}
    for name, cmd in jobs.items():
        log = (logs / f"{name}.log").open("w")
        running[name] = (subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env), log)
    outputs, failed = {}, []
    for name, (process, log) in running.items():
        try:
            code = process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            code = "timed out"
        log.close()
        outputs[name] = (logs / f"{name}.log").read_text()
        if code != 0:
            failed.append(f"{name}: exit {code}\n{outputs[name][-4000:]}")
    assert not failed, "\n\n".join(failed)
    return outputs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{engine: (full run's folder, resumed run's folder, device name from throughput.json)}."""
    engines = [e for e in ENGINES if e == "fsdp2" or not deepspeed_missing()]
    root = tmp_path_factory.mktemp("engines")
    launch_together({e: command(e, root / e / "full") for e in engines}, root / "logs-full")
    jobs = {}
    for e in engines:
        resumed = root / e / "resumed"
        resumed.mkdir()
        shutil.copytree(root / e / "full" / "checkpoint-3", resumed / "checkpoint-3")
        jobs[e] = command(e, resumed, "--resume_from_checkpoint", str(resumed / "checkpoint-3"), "--seed", "7")
    launch_together(jobs, root / "logs-resumed")
    return {e: (root / e / "full", root / e / "resumed") for e in engines}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_few_steps_save_export_and_resume_exactly(runs, engine, device):
    if engine not in runs:
        pytest.skip(deepspeed_missing())
    full, resumed = runs[engine]
    reference = logged_losses(full)
    assert sorted(reference) == [1, 2, 3, 4, 5, 6] and all(math.isfinite(v) for v in reference.values())
    throughput = json.loads((full / "throughput.json").read_text())
    print(f"{engine}: losses {reference}; device {throughput['device']}")
    if device.type == "cuda":
        assert throughput["device"] == torch.cuda.get_device_name(0)
    checkpoint = full / "checkpoint-3"
    if engine == "fsdp2":
        assert (checkpoint / "pytorch_model_fsdp.bin").is_file() and (checkpoint / "optimizer.bin").is_file()
    else:
        assert (checkpoint / "global_step3").is_dir()  # DeepSpeed's own checkpoint: partitions, optimizer state

    exported = get_managers(llava_manager.from_pretrained(full))
    assert exported and all(m.weight.abs().sum() > 0 for m in exported)  # trained, gathered on save

    after = logged_losses(resumed)
    assert {s: after[s] for s in (4, 5, 6)} == {s: reference[s] for s in (4, 5, 6)}, (after, reference)
    for a, b in zip(get_managers(llava_manager.from_pretrained(resumed)), exported, strict=True):
        assert torch.equal(a.weight, b.weight)
