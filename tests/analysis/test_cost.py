"""The cost plan: GPU-hours and wall time against hand computations, throughput files, the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llava_manager import cost
from llava_manager.cost import Measurement


def test_rows_match_hand_computation():
    rows = cost.plan(
        {
            "stage1": Measurement(10.0, "given"),
            "stage1_5": Measurement(5.0, "given"),
            "stage2": Measurement(4.0, "given"),
        },
        gpus=16,
    )
    by_stage = {r.stage: r for r in rows}
    assert [r.samples for r in rows] == [558_128, 4_000_000, 3_200_000] and all(r.epochs == 1 for r in rows)
    # 558,128 samples / 10 samples/s/GPU = 55,812.8 GPU-seconds = 15.5036 GPU-hours; / 16 GPUs = 0.96897 h
    assert by_stage["stage1"].gpu_hours == pytest.approx(15.50356, rel=1e-6)
    assert by_stage["stage1"].wall_hours == pytest.approx(0.968972, rel=1e-5)
    assert by_stage["stage1_5"].gpu_hours == pytest.approx(4e6 / 5 / 3600)  # 222.2 GPU-hours
    assert by_stage["stage2"].wall_hours == pytest.approx(3.2e6 / 4 / 16 / 3600)  # 13.9 h

    twice = cost.plan({"stage2": Measurement(4.0, "given")}, gpus=8, samples={"stage2": 100_000}, epochs={"stage2": 2})
    assert twice[2].gpu_hours == pytest.approx(100_000 * 2 / 4 / 3600)
    assert twice[0].gpu_hours is None and twice[2].source == "given"


def test_table_totals_and_assumptions():
    rows = cost.plan({s: Measurement(r, "given") for s, r in zip(cost.STAGES, (10.0, 5.0, 4.0))}, gpus=16)
    text = cost.format_table(rows, gpus_per_node=8, nodes=2)
    # total: 15.50 + 222.22 + 222.22 = 459.95 GPU-hours; / 16 = 28.75 h = 28 h 45 min
    total = next(line for line in text.splitlines() if line.startswith("total"))
    assert "7,758,128" in total and "459.9" in total and "28 h 45 min" in total
    assert "16 GPUs (2 nodes x 8)" in text and "scales linearly" in text and "no evaluation" in text
    assert cost.duration(0.5) == "0 h 30 min" and cost.duration(50) == "2 d 02 h" and cost.duration(None) == "-"

    partial = cost.format_table(cost.plan({"stage2": Measurement(4.0, "given")}, gpus=8), 8, 1)
    assert "total*" in partial and "without Stage-1, Stage-1.5" in partial


def throughput_file(path, **fields):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "samples_per_second": 80.0,
                "samples_per_second_per_device": 10.0,
                "world_size": 8,
                "device": "NVIDIA H100 80GB HBM3",
                **fields,
            }
        )
    )
    return path


def test_throughput_files_name_their_stage(tmp_path):
    recorded = throughput_file(tmp_path / "anywhere" / "throughput.json", stage="stage1_5")
    assert cost.read_throughput(str(recorded)) == (
        "stage1_5",
        Measurement(10.0, f"{recorded} (8 x NVIDIA H100 80GB HBM3)"),
    )
    by_folder = throughput_file(tmp_path / "runs" / "stage2" / "throughput.json")
    assert cost.read_throughput(str(by_folder))[0] == "stage2"
    old = throughput_file(tmp_path / "probe" / "throughput.json", samples_per_second_per_device=None)
    assert cost.read_throughput(f"stage1={old}")[0] == "stage1"
    assert cost.read_throughput(f"stage1={old}")[1].per_gpu == 10.0  # 80 samples/s over 8 processes
    with pytest.raises(ValueError, match="which stage"):
        cost.read_throughput(str(old))


def test_command_line(tmp_path):
    file = throughput_file(tmp_path / "stage2" / "throughput.json")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "llava_manager.cost",
            "--samples-per-second",
            "10",
            "5",
            "4",
            "--throughput",
            str(file),
            "--gpus",
            "8",
            "--nodes",
            "2",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    stage2 = next(line for line in out.splitlines() if line.startswith("Stage-2"))
    # the file's 10 samples/s/GPU replaces the given 4: 3.2M / 10 / 3600 = 88.9 GPU-hours, / 16 = 5 h 33 min
    assert "10.00" in stage2 and "88.9" in stage2 and "5 h 33 min" in stage2
    with pytest.raises(SystemExit):
        cost.main(["--samples-per-second", "10", "5"])
    with pytest.raises(SystemExit):
        cost.main(["--gpus", "8"])
