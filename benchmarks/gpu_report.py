"""The report of `benchmarks/gpu.sh`: reads the steps it recorded (`DIR/steps.tsv`, each step's log and, for the
tests, pytest's JUnit file) and writes `DIR/report.md` (a summary on top, then each step's command, exit status,
duration, its tests and the tail of its output) and `DIR/report.json`. Exits 1 when a step failed, timed out or was
not run.

    python benchmarks/gpu_report.py DIR [--mode TEXT] [--elapsed S] [--budget S]
    python benchmarks/gpu_report.py --environment      # the versions gpu.sh's first step prints
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

FIELDS = ("index", "name", "status", "exit", "seconds", "limit", "log", "junit", "note", "command")
BAD = ("failed", "timeout", "not-run")
TAIL_LINES = 40
PACKAGES = ("transformers", "accelerate", "deepspeed", "peft", "flash_attn", "lmms_eval", "llava_manager")


def environment() -> None:
    import torch

    print(f"python {platform.python_version()} | torch {torch.__version__} | CUDA {torch.version.cuda}")
    print("GPU:", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none visible")
    for name in PACKAGES:
        try:
            print(name, getattr(importlib.import_module(name), "__version__", "(no version)"))
        except Exception as error:  # missing, or built for another torch
            print(name, f"not importable: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")


def junit_tests(path: Path) -> list[dict]:
    """Each test case of a pytest JUnit file: id, outcome (passed, failed, error, skipped) and its message."""
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                outcome = {"failure": "failed"}.get(kind, kind)
                message = (element.get("message") or element.text or "").strip().splitlines()
                message = message[0] if message else ""
                break
        module = case.get("classname", "").replace(".", "/")
        tests.append({"id": f"{module}.py::{case.get('name')}", "outcome": outcome, "message": message[:300]})
    return tests


def tail(text: str) -> str:
    """The last TAIL_LINES lines as a terminal shows them: a progress bar's carriage returns keep its last state."""
    lines = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n")]
    return "\n".join(line if len(line) <= 400 else line[:400] + " ..." for line in lines[-TAIL_LINES:])


def read_steps(out: Path) -> list[dict]:
    steps = []
    for line in (out / "steps.tsv").read_text().splitlines():
        if not line.strip():
            continue
        step = dict(zip(FIELDS, line.split("\t", len(FIELDS) - 1)))
        log = out / step["log"]
        step["tail"] = tail(log.read_text(errors="replace")) if log.is_file() else ""
        step["tests"] = []
        if step["junit"] != "-":
            junit = out / step["junit"]
            if junit.is_file():
                step["tests"] = junit_tests(junit)
            elif step["status"] == "passed":
                step["status"], step["note"] = "failed", "pytest wrote no JUnit file"
        if step["tests"]:
            counts = {}
            for test in step["tests"]:
                counts[test["outcome"]] = counts.get(test["outcome"], 0) + 1
            summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
            step["note"] = "; ".join(x for x in (step["note"], summary) if x)
            if step["status"] == "passed" and set(counts) == {"skipped"}:
                step["status"] = "skipped"
                step["note"] += f" ({step['tests'][0]['message']})"
        steps.append(step)
    return steps


def markdown(steps: list[dict], mode: str, elapsed: str, budget: str) -> str:
    bad = [s for s in steps if s["status"] in BAD]
    verdict = f"FAILED: {', '.join(s['name'] for s in bad)}" if bad else "passed"
    lines = [
        f"# GPU check ({mode}): {verdict}",
        "",
        f"{datetime.now().isoformat(timespec='seconds')}; {elapsed} s of a {budget} s budget; "
        f"{len(steps)} steps: " + ", ".join(f"{sum(s['status'] == k for s in steps)} {k}" for k in _kinds(steps)),
        "",
        "| # | step | status | exit | seconds | limit | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        note = s["note"].replace("|", "\\|")
        lines.append(
            f"| {s['index']} | {s['name']} | {s['status']} | {s['exit']} | {s['seconds']} | {s['limit']} | {note} |"
        )
    for s in steps:
        lines += [
            "",
            f"## {s['index']}. {s['name']}: {s['status']}",
            "",
            f"exit status {s['exit']}, {s['seconds']} s (limit {s['limit']} s), whole log `{s['log']}`",
            "",
            "```",
            s["command"],
            "```",
        ]
        if s["tests"]:
            lines += ["", "| test | outcome | message |", "|---|---|---|"]
            for t in s["tests"]:
                message = t["message"].replace("|", "\\|")
                lines.append(f"| `{t['id']}` | {t['outcome']} | {message} |")
        lines += ["", f"Output, last {TAIL_LINES} lines:", "", "```", s["tail"], "```"]
    return "\n".join(lines) + "\n"


def _kinds(steps: list[dict]) -> list[str]:
    return list(dict.fromkeys(s["status"] for s in steps))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path)
    parser.add_argument("--mode", default="GPU")
    parser.add_argument("--elapsed", default="?")
    parser.add_argument("--budget", default="?")
    parser.add_argument("--environment", action="store_true", help="print the versions gpu.sh records, and exit")
    args = parser.parse_args()
    if args.environment:
        environment()
        return 0
    if args.out is None:
        parser.error("give the folder gpu.sh wrote")
    steps = read_steps(args.out)
    (args.out / "report.md").write_text(markdown(steps, args.mode, args.elapsed, args.budget))
    summary = [{k: v for k, v in s.items() if k != "tail"} for s in steps]
    ok = not any(s["status"] in BAD for s in steps)
    report = {"mode": args.mode, "elapsed": args.elapsed, "budget": args.budget, "ok": ok, "steps": summary}
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    print((args.out / "report.md").read_text().split("\n## ")[0])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
