"""Figures (PNG) and tables (CSV) of the analyses."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from ..core.patch import get_managers


def pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            "The analyses draw their figures with matplotlib, which is not installed: "
            "pip install 'llava-manager[analysis]' (or pip install matplotlib)."
        ) from error

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def aggregation_weights(model, out: Path) -> dict[str, Path]:
    """Fig. 7: a heat map of the L2 norm of each weight row W_l[i] (managers x vision layers), a bar per manager
    of the mean of its row norms, and a CSV with the L2 norm and the mean of every row."""
    plt = pyplot()
    managers = get_managers(model)
    vision_layers = list(managers[0].vision_layers)
    norms = torch.stack([m.weight.detach().float().norm(dim=1) for m in managers]).cpu()
    means = torch.stack([m.weight.detach().float().mean(dim=1) for m in managers]).cpu()
    rows = [
        [m.layer_idx, v, f"{norms[i, k]:.6g}", f"{means[i, k]:.6g}"]
        for i, m in enumerate(managers)
        for k, v in enumerate(vision_layers)
    ]
    paths = {
        "csv": write_csv(
            out / "aggregation_weights.csv", ["decoder_layer", "vision_layer", "row_l2_norm", "row_mean"], rows
        )
    }

    fig, (heat, bars) = plt.subplots(1, 2, figsize=(12, 0.5 * len(managers) + 3), width_ratios=[2, 1])
    image = heat.imshow(norms.numpy(), aspect="auto", cmap="viridis")
    heat.set_xticks(range(len(vision_layers)), vision_layers)
    heat.set_yticks(range(len(managers)), [f"before layer {m.layer_idx}" for m in managers])
    heat.set_xlabel("SigLIP hidden_states index")
    heat.set_title("||W_l[i]||_2 per manager and vision layer")
    fig.colorbar(image, ax=heat)
    bars.barh(range(len(managers)), norms.mean(dim=1).numpy())
    bars.set_yticks(range(len(managers)), [f"layer {m.layer_idx}" for m in managers])
    bars.invert_yaxis()
    bars.set_title("mean row norm per manager")
    fig.tight_layout()
    paths["png"] = out / "aggregation_weights.png"
    fig.savefig(paths["png"], dpi=120)
    plt.close(fig)
    return paths


def per_layer(
    curves: dict[str, torch.Tensor],
    title: str,
    ylabel: str,
    out: Path,
    name: str,
    marks: list[int] = (),
    first_layer: int = 0,
) -> dict[str, Path]:
    """One line per curve over decoder layers; injected layers marked with dashed lines."""
    plt = pyplot()
    labels = list(curves)
    length = len(next(iter(curves.values())))
    layers = list(range(first_layer, first_layer + length))
    paths = {
        "csv": write_csv(
            out / f"{name}.csv",
            ["layer", *labels],
            [[layer, *(f"{float(curves[k][i]):.6g}" for k in labels)] for i, layer in enumerate(layers)],
        )
    }
    fig, ax = plt.subplots(figsize=(8, 4))
    for label in labels:
        ax.plot(layers, curves[label].numpy(), marker="o", markersize=3, label=label)
    for i, layer in enumerate(marks):
        ax.axvline(layer, color="grey", linestyle="--", linewidth=0.8, label="manager" if i == 0 else None)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths["png"] = out / f"{name}.png"
    fig.savefig(paths["png"], dpi=120)
    plt.close(fig)
    return paths


def attention_distance(distances: dict[str, torch.Tensor], out: Path) -> dict[str, Path]:
    """Fig. 27: each head's mean attention distance (pixels) by SigLIP layer."""
    plt = pyplot()
    rows = [
        [label, layer + 1, head, f"{float(d[layer, head]):.6g}"]
        for label, d in distances.items()
        for layer in range(d.shape[0])
        for head in range(d.shape[1])
    ]
    paths = {"csv": write_csv(out / "siglip_attention_distance.csv", ["model", "layer", "head", "distance_px"], rows)}
    fig, ax = plt.subplots(figsize=(8, 4))
    for offset, (label, d) in enumerate(distances.items()):
        layers = torch.arange(1, d.shape[0] + 1).repeat_interleave(d.shape[1]).float() + 0.15 * offset
        ax.scatter(layers.numpy(), d.flatten().numpy(), s=10, alpha=0.7, label=label)
    ax.set_xlabel("SigLIP layer")
    ax.set_ylabel("mean attention distance (px)")
    ax.set_title("SigLIP mean attention distance per head")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths["png"] = out / "siglip_attention_distance.png"
    fig.savefig(paths["png"], dpi=120)
    plt.close(fig)
    return paths
