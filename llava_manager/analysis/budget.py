"""Computational budget (paper Table IV): Baseline, +Manager, +Grid and +Grid+Manager measured side by side in one
run on one model object.

- Baseline / +Manager feed each image as its base crop only (one 384 x 384 crop and a newline token), the layout of
  a LLaVA-OneVision model trained without grids; +Grid rows use anyres (base crop + grid crops).
- +Manager rows patch the model with `apply_manager` and remove the patch afterwards; a model that comes patched
  is measured without its managers for the other rows and left as it came.
- Parameters: every parameter of the model. FLOPs: one forward of one sample with all logits, counted by torch's
  flop counter (a multiply-add is 2 FLOPs; the paper's Table IV counts multiply-adds, half of these numbers).
- Training ms/sample: forward + backward with the loss on the text tokens, no optimizer step. Inference ms/sample:
  `generate` with `new_tokens` greedy tokens. Times are medians over rounds; ratios are medians of per-round ratios.
"""

from __future__ import annotations

import statistics
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from ..core.config import ManagerConfig
from ..core.patch import apply_manager, has_manager, manager_config, remove_manager
from ..families import family_of, random_inputs
from .figures import pyplot, write_csv
from .timing import count_flops, ratio_to, rounds, timed

# name -> (managers, grid)
VARIANTS = {
    "Baseline": (False, False),
    "+Manager": (True, False),
    "+Grid": (False, True),
    "+Grid+Manager": (True, True),
}

# Families whose models take images one way only (LLaVA-1.5: one crop; NeXT: always grids): that layout, +Manager.
FAMILY_LAYOUT = {"Baseline": (False, True), "+Manager": (True, True)}

# The paper's Table IV ratios against Baseline (0.5B-SI, A100), drawn as a reference in the figure.
PAPER_RATIOS = {
    "flops": {"+Manager": 1.02, "+Grid": 1.78, "+Grid+Manager": 1.82},
    "train_ms": {"+Manager": 1.03, "+Grid": 4.39, "+Grid+Manager": 4.58},
    "infer_ms": {"+Manager": 1.04, "+Grid": 1.68, "+Grid+Manager": 1.75},
}
COLUMNS = {"flops": "FLOPs", "train_ms": "train ms/sample", "infer_ms": "infer ms/sample"}


@dataclass
class BudgetRow:
    variant: str
    parameters: int
    image_tokens: int
    flops: int
    flops_ratio: float = 1.0  # against Baseline
    train_ms: float | None = None
    infer_ms: float | None = None
    train_ratio: float | None = None  # median of per-round ratios against Baseline
    infer_ratio: float | None = None


@contextmanager
def _variant(model, managers: bool, config: ManagerConfig):
    if managers:
        apply_manager(model, config)
    try:
        yield
    finally:
        if managers:
            remove_manager(model)


def _train_step(model, inputs, labels) -> None:
    model(**inputs, labels=labels).loss.backward()


def _generate(model, inputs, new_tokens: int) -> None:
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)


def measure_budget(
    model,
    *,
    image_size: tuple[int, int] = (384, 384),
    text_tokens: int = 400,
    new_tokens: int = 8,
    batch_size: int = 1,
    repeats: int = 3,
    config: ManagerConfig | None = None,
    timings: bool = True,
    seed: int = 0,
) -> list[BudgetRow]:
    """The four rows of Table IV for `model` on random inputs of the given shape (costs depend on the shapes only).

    `config` is the manager layout of the +Manager rows (default: the model's own when it is patched, else the
    paper's). `timings=False` gives parameters and FLOPs only.
    """
    if min(new_tokens, batch_size, repeats) < 1:
        raise ValueError(
            f"new_tokens, batch_size and repeats must be >= 1, got {new_tokens}, {batch_size} and {repeats}."
        )
    patched = has_manager(model)
    config = config or (manager_config(model) if patched else ManagerConfig())
    saved = {k: v.detach().clone() for k, v in model.model.managers.state_dict().items()} if patched else None
    was_training = model.training
    if patched:
        remove_manager(model)
    try:
        return _measure(model, image_size, text_tokens, new_tokens, batch_size, repeats, config, timings, seed)
    finally:
        if patched:
            apply_manager(model, config)
            model.model.managers.load_state_dict(saved)
        model.train(was_training)


def _measure(model, image_size, text_tokens, new_tokens, batch_size, repeats, config, timings, seed) -> list[BudgetRow]:
    height, width = image_size
    torch.manual_seed(seed)
    model.eval()
    variants = VARIANTS if family_of(model)[0].grids_optional else FAMILY_LAYOUT
    layouts = sorted({grid for _, grid in variants.values()})
    one = {grid: random_inputs(model, height, width, text_tokens, grid=grid) for grid in layouts}
    rows = {}
    for name, (managers, grid) in variants.items():
        with _variant(model, managers, config), torch.no_grad():
            inputs = one[grid]
            flops = count_flops(lambda: model(**inputs), inference_of=model)
            rows[name] = BudgetRow(
                variant=name,
                parameters=sum(p.numel() for p in model.parameters()),
                image_tokens=int((inputs["input_ids"][0] == model.config.image_token_id).sum()),
                flops=flops,
            )
    for row in rows.values():
        row.flops_ratio = row.flops / rows["Baseline"].flops
    if not timings:
        return list(rows.values())

    batch = (
        one
        if batch_size == 1
        else {
            grid: random_inputs(model, height, width, text_tokens, grid=grid, batch_size=batch_size) for grid in layouts
        }
    )
    labels = {
        grid: inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.image_token_id, -100)
        for grid, inputs in batch.items()
    }
    device = model.device

    def run(kind: str, managers: bool, grid: bool) -> float:
        with _variant(model, managers, config):
            if kind == "train":
                model.train()
                seconds = timed(partial(_train_step, model, batch[grid], labels[grid]), device)
                model.zero_grad(set_to_none=True)
            else:
                model.eval()
                seconds = timed(partial(_generate, model, batch[grid], new_tokens), device)
        return seconds / batch_size

    for kind in ("train", "infer"):
        times = rounds(
            {name: partial(run, kind, *flags) for name, flags in variants.items()},
            repeats,
            desc="training (fwd+bwd)" if kind == "train" else "inference (generate)",
        )
        ratios = ratio_to(times, "Baseline")
        for name, row in rows.items():
            setattr(row, f"{kind}_ms", statistics.median(times[name]) * 1e3)
            setattr(row, f"{kind}_ratio", ratios[name])
    return list(rows.values())


def _number(value: float) -> str:
    return f"{value:,.1f}" if value >= 100 else f"{value:.2f}" if value >= 1 else f"{value:.3g}"


def _cell(value: float, ratio: float | None) -> str:
    return _number(value) if ratio is None else f"{_number(value)} (x{ratio:.2f})"


def format_table(rows: list[BudgetRow]) -> str:
    """The paper's columns, ratios against Baseline in brackets (FLOPs in G, as torch counts them)."""
    base = rows[0]
    header = ["variant", "parameters", "image tokens", "GFLOPs", "train ms/sample", "infer ms/sample"]
    lines = []
    for row in rows:
        first = row is base
        lines.append(
            [
                row.variant,
                f"{row.parameters:,}",
                str(row.image_tokens),
                _cell(row.flops / 1e9, None if first else row.flops_ratio),
                "-" if row.train_ms is None else _cell(row.train_ms, None if first else row.train_ratio),
                "-" if row.infer_ms is None else _cell(row.infer_ms, None if first else row.infer_ratio),
            ]
        )
    widths = [max(len(r[i]) for r in [header] + lines) for i in range(len(header))]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in lines])


def write_budget(rows: list[BudgetRow], out: Path, title: str) -> dict[str, Path]:
    """budget.csv (every number, ratios against Baseline) and budget.png (ratio bars per column, the paper's
    Table IV ratios as markers)."""
    records = [asdict(row) for row in rows]
    header = list(records[0])
    paths = {"csv": write_csv(out / "budget.csv", header, [[r[k] for k in header] for r in records])}

    plt = pyplot()
    columns = [c for c in COLUMNS if records[0][c] is not None]
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.8), squeeze=False)
    names = [r["variant"] for r in records]
    for ax, column in zip(axes[0], columns):
        values = [r[column.removesuffix("_ms") + "_ratio"] for r in records]
        bars = ax.bar(range(len(names)), values, color=["#999999", "#4c72b0", "#dd8452", "#c44e52"])
        ax.bar_label(bars, [f"x{v:.2f}" for v in values], fontsize=8)
        paper = [(i, PAPER_RATIOS[column][n]) for i, n in enumerate(names) if n in PAPER_RATIOS[column]]
        ax.scatter(
            [i for i, _ in paper],
            [v for _, v in paper],
            marker="_",
            s=400,
            color="black",
            label="paper, Table IV (0.5B, A100)",
            zorder=3,
        )
        ax.set_ylim(0, 1.25 * max(values + [v for _, v in paper]))
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.set_title(f"{COLUMNS[column]} vs Baseline")
        ax.axhline(1.0, color="black", linewidth=0.5)
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    paths["png"] = out / "budget.png"
    fig.savefig(paths["png"], dpi=120)
    plt.close(fig)
    return paths
