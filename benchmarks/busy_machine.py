"""The main job on a quiet and on a busy machine, side by side: training steps per second of `recipes/stage2.py` (the
embedded default, shortened to `--steps`) alone and beside one other CPU-bound process (a torch matmul loop on two
threads), for each thread setting. Runs alternate between the settings, `--repeats` times; the table gives the medians
and each setting's busy / alone ratio. With two cores and the other process on two threads, a fair share is half the
CPU, so a run that only loses its share is about x0.5 (one thread: about x0.67).

    python benchmarks/busy_machine.py [--steps 60] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOG = "import torch\ntorch.set_num_threads(2)\na = torch.randn(384, 384)\nwhile True:\n    a @ a\n"
SETTINGS = {  # name: (--cpu_threads, extra environment)
    "auto (1 thread)": ("auto", {}),
    "2 threads": ("2", {}),
    "2 threads, OMP_WAIT_POLICY=PASSIVE": ("2", {"OMP_WAIT_POLICY": "PASSIVE"}),
}


def steps_per_second(cpu_threads: str, env: dict, steps: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable,
            str(ROOT / "recipes" / "stage2.py"),
            "--output_dir",
            out,
            "--max_steps",
            str(steps),
            "--save_strategy",
            "no",
            "--cpu_threads",
            cpu_threads,
        ]
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, **env}, timeout=3600)
        history = json.loads((Path(out) / "trainer_state.json").read_text())["log_history"]
        runtime = next(entry["train_runtime"] for entry in history if "train_runtime" in entry)
    return steps / runtime


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    results = {(name, load): [] for name in SETTINGS for load in ("alone", "busy")}
    for repeat in range(args.repeats):
        for load in ("alone", "busy"):
            hog = subprocess.Popen([sys.executable, "-c", HOG]) if load == "busy" else None
            try:
                time.sleep(2 if hog else 0)
                names = list(SETTINGS) if repeat % 2 == 0 else list(reversed(SETTINGS))
                for name in names:
                    cpu_threads, env = SETTINGS[name]
                    results[name, load].append(steps_per_second(cpu_threads, env, args.steps))
                    print(f"repeat {repeat + 1}, {load}, {name}: {results[name, load][-1]:.2f} steps/s", flush=True)
            finally:
                if hog:
                    hog.kill()
                    hog.wait()
    print(f"\nmain job, {args.steps} training steps, {os.cpu_count()} CPUs, median of {args.repeats} runs")
    print(f"{'setting':<38}{'alone steps/s':>14}{'busy steps/s':>14}{'busy/alone':>12}")
    for name in SETTINGS:
        alone, busy = statistics.median(results[name, "alone"]), statistics.median(results[name, "busy"])
        print(f"{name:<38}{alone:>14.2f}{busy:>14.2f}{busy / alone:>12.2f}")


if __name__ == "__main__":
    main()
