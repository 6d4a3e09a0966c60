"""The cost of the paper's curriculum on your GPUs: measured samples/s -> wall time and GPU-hours per stage.

    python -m llava_manager.cost --samples-per-second 52 9.5 8.1 --gpus 8 --nodes 2
    python -m llava_manager.cost --throughput runs/*/throughput.json --gpus 8
    python -m llava_manager.cost --throughput stage2=runs/s2_probe/throughput.json --samples-per-second 52 9.5 8.1

Measure each stage with a short run on one node of the hardware you will use, with the stage's real settings (model,
batch size, max length, data mix, DeepSpeed config), e.g. `python recipes/stage2.py ... --max_steps 50`. The
throughput callback (`training/throughput.py`) writes `{output_dir}/throughput.json` at the end of the run: its
`samples_per_second_per_device`, which leaves out the first step and time spent evaluating or saving, is what this
plan takes. A file's stage is the `stage` it records, else `STAGE=FILE`, else its folder's name (`runs/stage1_5`,
the recipes' default output directories).

`--samples-per-second` takes one figure per stage (Stage-1, Stage-1.5, Stage-2), **per GPU**: a run on 8 GPUs that
logs `samples_per_second` 400 (the logs sum over processes) is 50 per GPU. A stage with a file takes the file's.

    wall time = samples x epochs / (samples/s per GPU x GPUs)
    GPU-hours = samples x epochs / (samples/s per GPU) / 3600      (the same on any number of GPUs)

Assumptions (printed with the table): throughput scales linearly with the number of GPUs (no loss to inter-node
communication; check with a two-node probe); no evaluation, checkpoint saving, start-up or data preparation time;
the measured run's samples have the length mix of the full stage.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

STAGES = ("stage1", "stage1_5", "stage2")
TITLES = {"stage1": "Stage-1", "stage1_5": "Stage-1.5", "stage2": "Stage-2"}
# Samples per stage of LLaVA-OneVision's curriculum as the paper trains it (App. C-E), with sources.
SAMPLES = {
    "stage1": (558_128, "LCS-558K, 558,128 caption pairs (LLaVA's blip_laion_cc_sbu_558k.json): paper App. C-E"),
    "stage1_5": (4_000_000, "about 4M re-captioned, document and OCR samples: paper App. C-E (LLaVA-OneVision's)"),
    "stage2": (3_200_000, "about 3.2M single-image instruction samples: paper App. C-E (LLaVA-OneVision-SI's)"),
}
# 1 epoch each: LLaVA-NeXT's OneVision scripts (`--num_train_epochs 1`), the recipes' default (train_args.COMMON).
EPOCHS = {"stage1": 1.0, "stage1_5": 1.0, "stage2": 1.0}
ASSUMPTIONS = (
    "throughput scales linearly with the number of GPUs (no loss to inter-node communication)",
    "no evaluation, checkpoint saving, start-up or data preparation time",
    "the measured samples have the stage's length mix; figures hold for the GPU, model and settings measured",
)


@dataclass
class Measurement:
    per_gpu: float  # samples/s per GPU
    source: str  # "given" or the file and what it measured on


@dataclass
class Row:
    stage: str
    samples: int
    source: str
    epochs: float
    measurement: Measurement | None
    gpus: int

    @property
    def gpu_hours(self) -> float | None:
        if self.measurement is None:
            return None
        return self.samples * self.epochs / self.measurement.per_gpu / 3600

    @property
    def wall_hours(self) -> float | None:
        return None if self.gpu_hours is None else self.gpu_hours / self.gpus


def read_throughput(item: str) -> tuple[str, Measurement]:
    """(stage, measurement) of `FILE` or `STAGE=FILE` (a `throughput.json` of the throughput callback)."""
    stage, _, path = item.rpartition("=") if "=" in item and item.split("=", 1)[0] in STAGES else ("", "", item)
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--throughput {item}: cannot read it ({error}).") from None
    stage = stage or data.get("stage") or (path.parent.name if path.parent.name in STAGES else "")
    if stage not in STAGES:
        raise ValueError(
            f"--throughput {item}: which stage is it? The file records none and its folder is not one "
            f"of {', '.join(STAGES)}; write STAGE=FILE, e.g. stage2={path}."
        )
    per_gpu = data.get("samples_per_second_per_device")
    if per_gpu is None and "samples_per_second" in data:
        per_gpu = data["samples_per_second"] / max(int(data.get("world_size", 1)), 1)
    if not per_gpu or per_gpu <= 0:
        raise ValueError(f"--throughput {item}: no positive samples/s in it.")
    where = f"{data.get('world_size', '?')} x {data.get('device', '?')}"
    return stage, Measurement(float(per_gpu), f"{path} ({where})")


def plan(
    measured: dict[str, Measurement],
    gpus: int,
    samples: dict[str, int] | None = None,
    epochs: dict[str, float] | None = None,
) -> list[Row]:
    """One row per stage; stages without a measurement have no times."""
    if gpus < 1:
        raise ValueError(f"the number of GPUs must be >= 1, got {gpus}.")
    samples = samples or {}
    epochs = epochs or {}
    return [
        Row(
            stage,
            samples.get(stage, SAMPLES[stage][0]),
            SAMPLES[stage][1] if stage not in samples else "given",
            epochs.get(stage, EPOCHS[stage]),
            measured.get(stage),
            gpus,
        )
        for stage in STAGES
    ]


def duration(hours: float | None) -> str:
    """`3 h 05 min`, or `2 d 07 h` from 48 hours on."""
    if hours is None:
        return "-"
    minutes = round(hours * 60)
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60:02d} min"
    hours = round(hours)
    return f"{hours // 24} d {hours % 24:02d} h"


def format_table(rows: list[Row], gpus_per_node: int, nodes: int) -> str:
    gpus = gpus_per_node * nodes
    lines = [f"Cost plan on {gpus} GPUs ({nodes} node{'s' * (nodes > 1)} x {gpus_per_node})", ""]
    header = f"{'stage':<10}{'samples':>12}{'epochs':>8}{'samples/s/GPU':>15}{'wall time':>20}{'GPU-hours':>12}"
    lines += [header, "-" * len(header)]
    for r in rows:
        rate = "-" if r.measurement is None else f"{r.measurement.per_gpu:.2f}"
        gpu_hours = "-" if r.gpu_hours is None else f"{r.gpu_hours:,.1f}"
        lines.append(
            f"{TITLES[r.stage]:<10}{r.samples:>12,}{r.epochs:>8g}{rate:>15}{duration(r.wall_hours):>20}{gpu_hours:>12}"
        )
    done = [r for r in rows if r.gpu_hours is not None]
    missing = [TITLES[r.stage] for r in rows if r.gpu_hours is None]
    total_gpu_hours = sum(r.gpu_hours for r in done)
    label = "total" if not missing else "total*"
    lines += [
        "-" * len(header),
        f"{label:<10}{sum(r.samples for r in done):>12,}{'':>8}{'':>15}"
        f"{duration(total_gpu_hours / gpus if done else None):>20}"
        f"{(f'{total_gpu_hours:,.1f}' if done else '-'):>12}",
    ]
    if missing:
        lines.append(f"* without {', '.join(missing)}: no measurement (--samples-per-second or --throughput)")
    lines += ["", "samples:"] + [f"  {TITLES[r.stage]:<10} {r.source}" for r in rows]
    lines += ["samples/s per GPU:"] + [
        f"  {TITLES[r.stage]:<10} {r.measurement.source if r.measurement else '-'}" for r in rows
    ]
    lines += ["assumptions:"] + [f"  - {a}" for a in ASSUMPTIONS]
    lines.append("  - wall time = samples x epochs / (samples/s per GPU x GPUs); GPU-hours = wall time x GPUs")
    return "\n".join(lines)


def three(name: str, cast):
    def parse(values: list[str] | None):
        if values is None:
            return {}
        if len(values) != len(STAGES):
            raise ValueError(f"--{name} takes {len(STAGES)} values (Stage-1, Stage-1.5, Stage-2), got {len(values)}.")
        out = {stage: cast(v) for stage, v in zip(STAGES, values)}
        if any(v <= 0 for v in out.values()):
            raise ValueError(f"--{name} values must be > 0, got {values}.")
        return out

    return parse


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m llava_manager.cost", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--samples-per-second",
        nargs="+",
        metavar="S",
        help="measured samples/s PER GPU of Stage-1, Stage-1.5 and Stage-2",
    )
    parser.add_argument(
        "--throughput",
        nargs="+",
        metavar="[STAGE=]FILE",
        help="throughput.json files of short runs (their per-device samples/s)",
    )
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node (default 8)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    parser.add_argument("--samples", nargs="+", metavar="N", help="samples of each stage instead of the paper's")
    parser.add_argument("--epochs", nargs="+", metavar="E", help="epochs of each stage (default 1 1 1)")
    args = parser.parse_args(argv)
    try:
        measured = {
            stage: Measurement(v, "given")
            for stage, v in three("samples-per-second", float)(args.samples_per_second).items()
        }
        for item in args.throughput or ():
            stage, measurement = read_throughput(item)
            measured[stage] = measurement
        if not measured:
            raise ValueError("give --samples-per-second S1 S1.5 S2 (per GPU) or --throughput FILE ...")
        if args.gpus < 1 or args.nodes < 1:
            raise ValueError(f"--gpus and --nodes must be >= 1, got {args.gpus} and {args.nodes}.")
        rows = plan(
            measured, args.gpus * args.nodes, three("samples", int)(args.samples), three("epochs", float)(args.epochs)
        )
    except ValueError as error:
        parser.error(str(error))
    text = format_table(rows, args.gpus, args.nodes)
    print(text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
