"""`benchmarks/gpu.sh --dry-run` (the GPU check's CPU rehearsal, tiny settings) runs end to end here: every step is in
its report with its status, the GPU tests are collected and reported as skipped, the benchmarks run; and a failing
step is recorded and fails the run without stopping the steps after it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.helpers import subprocess_env

ROOT = Path(__file__).resolve().parents[2]
STEPS = [
    "environment",
    "numerics",
    "packing-flash",
    "engines",
    "device-map",
    "lmms-eval-batch",
    "overhead",
    "packing",
    "evaluation",
]
TEST_STEPS = {"numerics", "packing-flash", "engines", "device-map", "lmms-eval-batch"}


def gpu_sh(out: Path, python: str = sys.executable, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run", "--out", str(out), "--python", python],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(),
    )


@pytest.mark.slow  # runs every step of the script: about three minutes on 2 CPU cores
def test_the_dry_run_reports_every_step_with_its_status(tmp_path):
    result = gpu_sh(tmp_path / "report")
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    markdown = (tmp_path / "report" / "report.md").read_text()
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == STEPS, result.stdout[-3000:] + result.stderr[-3000:]
    statuses = {name: s["status"] for name, s in steps.items()}
    assert all(s in ("passed", "skipped") for s in statuses.values()), (statuses, markdown[-6000:])
    assert result.returncode == 0 and report["ok"], result.stdout[-3000:] + result.stderr[-3000:]

    # the summary on top lists every step with its status; then a section per step with its command and output
    head = markdown.split("\n## ")[0]
    assert head.startswith("# GPU check (dry run")
    for name, status in statuses.items():
        assert f"| {name} | {status} |" in head
        assert f"## {steps[name]['index']}. {name}: {status}" in markdown
        assert steps[name]["command"] and float(steps[name]["seconds"]) >= 0
    # the GPU tests are collected and skipped for want of a GPU, each listed
    for name in TEST_STEPS:
        tests = steps[name]["tests"]
        assert tests and all(t["outcome"] == "skipped" and "CUDA" in t["message"] for t in tests), tests
        assert statuses[name] == "skipped"
        assert all(f"`{t['id']}`" in markdown for t in tests)
    assert statuses["overhead"] == statuses["packing"] == "passed"
    if (ROOT / "benchmarks" / "evaluation.py").is_file():
        assert statuses["evaluation"] == "passed"
    else:
        assert statuses["evaluation"] == "skipped" and "not in this checkout" in steps["evaluation"]["note"]


def test_a_failing_step_is_recorded_and_the_run_goes_on_and_fails(tmp_path):
    """With a Python that fails whatever it runs, every step fails, is still run and recorded, and the report comes
    from the script's plain fallback (the report helper cannot run either); the script exits non-zero."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'no python here' >&2\nexit 3\n")
    fake.chmod(0o755)
    out = tmp_path / "report"
    result = gpu_sh(out, python=str(fake), timeout=300)
    assert result.returncode != 0
    rows = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()]
    assert [r[1] for r in rows] == STEPS
    assert {r[2] for r in rows if r[1] != "evaluation"} == {"failed"}
    report = (out / "report.md").read_text()
    assert all(name in report for name in STEPS)
