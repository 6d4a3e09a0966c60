"""Each family's default layout at its published sizes: the vision layers the paper's rule aggregates, the
managers, the parameters they add. Computed from the real configs built in code, on the meta device (no weights
are allocated), through the same `ManagerPlan` that `apply_manager` uses.

    python -m llava_manager.analysis layouts --out analysis/     # prints the README's table, writes layouts.csv
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.config import ManagerConfig
from ..core.patch import ManagerPlan
from ..families import FAMILIES


@dataclass(frozen=True)
class Layout:
    family: str
    checkpoint: str
    hub_id: str
    feature_layer: int
    vision_layers: tuple[int, ...]
    num_vision_layers: int
    inject_layers: tuple[int, ...]
    num_decoder_layers: int
    hidden_size: int
    parameters: int
    base_parameters: int


def published_layouts(config: ManagerConfig | None = None) -> list[Layout]:
    """One row per published checkpoint of every family, in table order."""
    config = config or ManagerConfig()
    rows = []
    for adapter in FAMILIES.values():
        for name, (hub_id, make_config) in adapter.published.items():
            with torch.device("meta"):
                model = adapter.model_class(make_config())
            plan = ManagerPlan(model, config)
            rows.append(
                Layout(
                    adapter.title,
                    name,
                    hub_id,
                    plan.feature_layer,
                    plan.vision_layers,
                    len(plan.vision_layer_modules),
                    plan.inject_layers,
                    plan.num_decoder_layers,
                    plan.hidden_size,
                    plan.num_parameters,
                    sum(p.numel() for p in model.parameters()),
                )
            )
    return rows


def _span(indices: tuple[int, ...]) -> str:
    contiguous = list(indices) == list(range(indices[0], indices[-1] + 1))
    return f"{indices[0]}-{indices[-1]}" if contiguous and len(indices) > 2 else ", ".join(map(str, indices))


def write_layouts(rows: list[Layout], out) -> Path:
    """`layouts.csv` in `out`, one row per checkpoint."""
    from .figures import write_csv

    path = Path(out) / "layouts.csv"
    write_csv(
        path,
        [
            "family",
            "checkpoint",
            "hub_id",
            "feature_layer",
            "vision_layers",
            "inject_layers",
            "hidden_size",
            "parameters",
            "base_parameters",
        ],
        [
            [
                r.family,
                r.checkpoint,
                r.hub_id,
                r.feature_layer,
                " ".join(map(str, r.vision_layers)),
                " ".join(map(str, r.inject_layers)),
                r.hidden_size,
                r.parameters,
                r.base_parameters,
            ]
            for r in rows
        ],
    )
    return path


def markdown_table(rows: list[Layout]) -> str:
    lines = [
        "| family | checkpoint | vision layers (`hidden_states` indices) | managers (before decoder layers) | "
        "added parameters |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        vision = f"{_span(r.vision_layers)} of {r.num_vision_layers} (feature layer {r.feature_layer})"
        managers = f"{len(r.inject_layers)}: {', '.join(map(str, r.inject_layers))} of {r.num_decoder_layers}"
        added = (
            f"{len(r.inject_layers)} x {len(r.vision_layers)} x {r.hidden_size} = {r.parameters:,} "
            f"({100 * r.parameters / r.base_parameters:.4f}% of {r.base_parameters / 1e9:.2f} B)"
        )
        lines.append(f"| {r.family} | `{r.hub_id}` | {vision} | {managers} | {added} |")
    return "\n".join(lines)
