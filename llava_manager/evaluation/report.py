"""The paper's evaluation report (Tables X-XIII, Fig. 8) from lmms-eval result folders.

Each dataset is one lmms-eval task and metric, put on a 0-100 scale (OCRBench's 0-1000 score arrives from lmms-eval
as a fraction, so x100 is the paper's "/ 10"), and placed in a capability, image and resolution category as in the
paper's Table X. Averages are plain means over the datasets of a category; a category with a missing dataset is
reported as missing, never averaged over what is there.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Dataset:
    name: str
    task: str  # lmms-eval task name
    metric: str  # lmms-eval metric; results are keyed "<metric>,<filter>"
    scale: float  # to 0-100
    capability: str
    image: str  # Natural | Abstract | Hybrid
    resolution: str  # Low | High (threshold 768 px)
    judged: bool = False  # scored by an LLM judge: needs an API key, or --predict_only


DATASETS = [
    Dataset("VQAv2", "vqav2_val", "exact_match", 100, "General", "Natural", "Low"),
    Dataset("OKVQA", "ok_vqa_val2014", "exact_match", 100, "General", "Natural", "Low"),
    Dataset("GQA", "gqa", "exact_match", 100, "General", "Natural", "Low"),
    Dataset("MMVet", "mmvet", "gpt_eval_score", 1, "General", "Hybrid", "High", judged=True),
    Dataset("SEED-Bench", "seedbench", "seed_image", 100, "General", "Natural", "High"),
    Dataset("RealWorldQA", "realworldqa", "exact_match", 100, "General", "Natural", "High"),
    Dataset("TextVQA", "textvqa_val", "exact_match", 100, "Text-Rich", "Natural", "High"),
    Dataset("ChartQA", "chartqa", "relaxed_overall", 100, "Text-Rich", "Abstract", "Low"),
    Dataset("DocVQA", "docvqa_val", "anls", 100, "Text-Rich", "Abstract", "High"),
    Dataset("InfoVQA", "infovqa_val", "anls", 100, "Text-Rich", "Abstract", "High"),
    Dataset("OCRBench", "ocrbench", "ocrbench_accuracy", 100, "Text-Rich", "Hybrid", "Low"),
    Dataset("AI2D", "ai2d", "exact_match", 100, "Knowledge", "Abstract", "Low"),
    Dataset("ScienceQA", "scienceqa_img", "exact_match", 100, "Knowledge", "Hybrid", "Low"),
    Dataset("MMMU", "mmmu_val", "mmmu_acc", 100, "Knowledge", "Hybrid", "Low"),
    Dataset(
        "MathVista", "mathvista_testmini_format", "llm_as_judge_eval", 1, "Knowledge", "Hybrid", "Low", judged=True
    ),
    Dataset("ImageDC", "detailcaps", "detailcaps_CAPTURE", 100, "Real-World", "Hybrid", "Low"),
    Dataset("LiveBench-2407", "live_bench_2407", "gpt4_eval_score", 1, "Real-World", "Hybrid", "High", judged=True),
    Dataset("LiveBench-2409", "live_bench_2409", "gpt4_eval_score", 1, "Real-World", "Hybrid", "High", judged=True),
    Dataset("LLaVA-Wild", "llava_in_the_wild", "gpt_eval_llava_all", 1, "Real-World", "Hybrid", "High", judged=True),
    Dataset("LLaVA-Wilder", "llava_wilder_small", "gpt_eval_llava_all", 1, "Real-World", "Hybrid", "High", judged=True),
]
ABLATION = ["VQAv2", "GQA", "SEED-Bench", "RealWorldQA", "TextVQA", "DocVQA", "AI2D", "ScienceQA", "MMMU"]
GROUPS = {
    "Capability": ["General", "Text-Rich", "Knowledge", "Real-World"],
    "Image": ["Natural", "Abstract", "Hybrid"],
    "Resolution": ["Low", "High"],
}
ATTRIBUTE = {"Capability": "capability", "Image": "image", "Resolution": "resolution"}


def read_results(folder: str | Path) -> dict[str, dict]:
    """`results[task]` of every `*_results.json` under `folder` (lmms-eval writes
    `{output_path}/{model}/{date}_results.json`); for a task found twice the newest file wins."""
    files = sorted(Path(folder).rglob("*_results.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no lmms-eval *_results.json under {folder}")
    merged: dict[str, dict] = {}
    for path in files:
        merged.update(json.loads(path.read_text()).get("results", {}))
    return merged


def metric_value(task_results: dict, metric: str) -> float | None:
    """The metric under any filter, preferring the "none" filter."""
    keys = [k for k in task_results if k.split(",")[0] == metric and "stderr" not in k]
    keys.sort(key=lambda k: k != f"{metric},none")
    for key in keys:
        value = task_results[key]
        if isinstance(value, (int, float)):
            return float(value)
    return None


def dataset_scores(results: dict[str, dict], datasets=DATASETS) -> dict[str, float | None]:
    """Each dataset's score on 0-100, or None when its task or metric is not in the results."""
    scores = {}
    for d in datasets:
        value = metric_value(results[d.task], d.metric) if d.task in results else None
        scores[d.name] = None if value is None else value * d.scale
    return scores


def summarise(scores: dict[str, float | None], datasets=DATASETS) -> dict[str, float | None]:
    """Overall and category means; None where any dataset of the category is missing."""

    def mean(names):
        values = [scores.get(n) for n in names]
        return None if not values or any(v is None for v in values) else sum(values) / len(values)

    out = {"Overall": mean([d.name for d in datasets])}
    for group, categories in GROUPS.items():
        for category in categories:
            out[category] = mean([d.name for d in datasets if getattr(d, ATTRIBUTE[group]) == category])
    return out


def build_tables(runs: dict[str, dict[str, dict]], baseline: str | None = None, datasets=DATASETS):
    """(per-dataset rows, summary rows): {run: {column: value}} plus, with a baseline, "<run> - <baseline>" rows."""
    per_dataset = {name: dataset_scores(results, datasets) for name, results in runs.items()}
    summary = {name: summarise(scores, datasets) for name, scores in per_dataset.items()}
    if baseline is not None:
        if baseline not in runs:
            raise ValueError(f"baseline {baseline!r} is not one of the runs: {sorted(runs)}.")
        for table in (per_dataset, summary):
            for name in [n for n in table if n != baseline]:
                table[f"{name} - {baseline}"] = {
                    k: None if v is None or table[baseline][k] is None else v - table[baseline][k]
                    for k, v in table[name].items()
                }
    return per_dataset, summary


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "missing"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def to_markdown(table: dict[str, dict], title: str) -> str:
    columns = list(next(iter(table.values())))
    lines = [f"### {title}", "", "| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in table.items():
        signed = " - " in name
        lines.append(f"| {name} | " + " | ".join(_fmt(row[c], signed) for c in columns) + " |")
    return "\n".join(lines)


def to_csv(table: dict[str, dict], path: Path) -> None:
    columns = list(next(iter(table.values())))
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", *columns])
        for name, row in table.items():
            writer.writerow([name, *("" if row[c] is None else f"{row[c]:.4f}" for c in columns)])


def bar_chart(summary: dict[str, dict], path: Path, runs: list[str]) -> None:
    """Grouped bars like the paper's Fig. 8: Overall and each category, one bar per run; missing values are left
    out and marked "n/a"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(summary[runs[0]])
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(8, len(columns) * 1.1), 4.5))
    for i, run in enumerate(runs):
        xs = [c + (i - (len(runs) - 1) / 2) * width for c in range(len(columns))]
        values = [summary[run][c] for c in columns]
        ax.bar([x for x, v in zip(xs, values) if v is not None], [v for v in values if v is not None], width, label=run)
        for x, v in zip(xs, values):
            if v is None:
                ax.text(x, 1, "n/a", ha="center", va="bottom", rotation=90, fontsize=7)
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax.set_ylabel("score (0-100)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    runs: dict[str, str | Path], out_dir: str | Path, baseline: str | None = None, subset: str = "all"
) -> dict[str, Path]:
    """Read each run's lmms-eval folder, write `report.md`, `datasets.csv`, `summary.csv` and `summary.png`."""
    if subset not in ("all", "ablation"):
        raise ValueError(f"subset {subset!r}: use 'all' (the paper's 20 datasets) or 'ablation' (its 9).")
    datasets = DATASETS if subset == "all" else [d for d in DATASETS if d.name in ABLATION]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {name: read_results(folder) for name, folder in runs.items()}
    per_dataset, summary = build_tables(results, baseline, datasets)
    missing = {
        name: [d for d, v in scores.items() if v is None] for name, scores in per_dataset.items() if " - " not in name
    }
    notes = [f"- {name}: missing {', '.join(m)}" for name, m in missing.items() if m]
    paths = {
        "markdown": out_dir / "report.md",
        "datasets": out_dir / "datasets.csv",
        "summary": out_dir / "summary.csv",
        "figure": out_dir / "summary.png",
    }
    paths["markdown"].write_text(
        "\n\n".join(
            [
                "# Evaluation report",
                to_markdown(summary, "Overall and category averages (0-100)"),
                to_markdown(per_dataset, "Per dataset (0-100; OCRBench / 10)"),
                "Missing datasets (categories that need them are reported as missing):\n"
                + ("\n".join(notes) or "- none"),
            ]
        )
        + "\n"
    )
    to_csv(per_dataset, paths["datasets"])
    to_csv(summary, paths["summary"])
    bar_chart(summary, paths["figure"], list(runs))
    return paths
