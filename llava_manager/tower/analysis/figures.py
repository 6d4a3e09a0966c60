"""Paper Fig. 7: the aggregation weights of the textual and visual managers, per cross-modal layer, on each managed
unimodal layer, averaged over a data set.

    weights = aggregation_weights(model, batches)      # {"text": [C, N], "image": [C, N], ...} numpy arrays
    plot_aggregation_weights(weights, "fig7.png")     # 2 x C panels (textual row, visual row), as the paper's figure

The weights are the softmax weights of each manager on its N unimodal layers (`ManagerTowerModel.forward(...,
output_aggregation_weights=True)`; B x N x L x D after broadcasting): for each sample the mean over its tokens (text:
the non-padding tokens only, `attention_mask`) and channels, then the mean over samples, so every sample weighs the
same whatever its length. A static manager (SAUM, SAM, the first layer of AAUM) gives the same weights for every
sample and token; AAUM's vary. The weights are measured in eval mode (no noise), each row sums to 1. The weight of
the previous cross-modal output (w_C, outside the softmax) is not part of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

PLOT_LAYOUTS = ("paper", "overlay")


def pyplot():
    """matplotlib's pyplot on the Agg backend (as `llava_manager.analysis.figures.pyplot`)."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            "The tower figures are drawn with matplotlib, which is not installed: "
            "pip install 'llava-manager[analysis]' (or pip install matplotlib)."
        ) from error

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def backbone(model):
    """The `ManagerTowerModel` of `model` (itself, or a task model's `managertower`)."""
    return getattr(model, "managertower", model)


def managed_layers(model) -> tuple[list[int], list[int]]:
    """1-based indices of the N managed text and vision layers of `model` (the top N of each tower, as
    `ManagerTowerModel.managed_unimodal` takes them; the paper's x axis: 7..12 at BASE)."""
    net = backbone(model)
    n = net.config.num_managed_layers
    text_depth = len(net.text_model.encoder.layer)
    vision_depth = len(net.vision_model.visual.transformer.resblocks)
    return list(range(text_depth - n + 1, text_depth + 1)), list(range(vision_depth - n + 1, vision_depth + 1))


def _per_sample(weights: torch.Tensor, batch: int, mask: torch.Tensor | None) -> torch.Tensor:
    """B x N: the mean over tokens (where `mask` is 1) and channels of weights broadcastable to B x N x L x D."""
    w = weights.detach().double().mean(dim=-1)  # b x N x l (b in {1, B}, l in {1, L})
    if mask is None:
        return w.mean(dim=-1).expand(batch, -1)
    mask = mask.to(w.device, torch.float64)
    w = w.expand(batch, -1, mask.shape[1])
    return (w * mask[:, None]).sum(dim=-1) / mask.sum(dim=-1, keepdim=True).clamp(min=1)


def _forward_passes(batch: dict, config) -> list[dict]:
    """The model calls of one collated batch: one, or for NLVR2 (`pixel_values_2`) one per image, the second with
    token type 2 where the model has it (as the official NLVR2 head runs the pair)."""
    common = {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask")}
    passes = [{**common, "pixel_values": batch["pixel_values"], "pixel_mask": batch.get("pixel_mask")}]
    if "pixel_values_2" in batch:
        passes.append(
            {
                **common,
                "pixel_values": batch["pixel_values_2"],
                "pixel_mask": batch.get("pixel_mask_2"),
                "image_token_type_idx": 2 if config.num_token_types > 2 else 1,
            }
        )
    return passes


@torch.no_grad()
def aggregation_weights(
    model, batches: Iterable[dict], *, progress: bool = True, max_batches: int | None = None, device=None
) -> dict:
    """Fig. 7's numbers: run `model` (a `ManagerTowerModel` or a task model holding one in `managertower`) in eval
    mode on every batch (dicts with `input_ids`, `attention_mask`, `pixel_values`, as the tower collators make them;
    `pixel_values_2` is run as a second pass) and average the managers' softmax weights (module doc).

    Returns {"text": float64 array [C, N], "image": [C, N] (C cross-modal layers, N managed layers), "text_layers",
    "image_layers" (the 1-based unimodal layer index of each column), "cross_layers" (1..C), "samples" (forward
    passes x samples averaged), "manager_type", "aaum_query"}."""
    net = backbone(model)
    config = net.config
    if config.manager_type == "bridge":
        raise ValueError("aggregation_weights needs managers: a 'bridge' model (BridgeTower) has none")
    device = torch.device(device) if device is not None else next(net.parameters()).device
    was_training = net.training
    net.eval()
    sums = {"text": None, "image": None}
    samples = 0
    total = len(batches) if hasattr(batches, "__len__") else None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, total=total, desc="aggregation weights", unit="batch")
    else:
        iterator = batches
    try:
        for index, batch in enumerate(iterator):
            if max_batches is not None and index >= max_batches:
                break
            for inputs in _forward_passes(batch, config):
                inputs = {
                    k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items() if v is not None
                }
                output = net(**inputs, output_aggregation_weights=True, return_dict=True)
                size = inputs["input_ids"].shape[0]
                mask = inputs.get("attention_mask")
                for key, pick, token_mask in (("text", 0, mask), ("image", 1, None)):
                    layer_means = torch.stack(
                        [_per_sample(pair[pick], size, token_mask).sum(dim=0) for pair in output.aggregation_weights]
                    ).cpu()  # C x N
                    sums[key] = layer_means if sums[key] is None else sums[key] + layer_means
                samples += size
    finally:
        net.train(was_training)
    if samples == 0:
        raise ValueError("aggregation_weights got no batch")
    text_layers, image_layers = managed_layers(net)
    return {
        "text": (sums["text"] / samples).numpy(),
        "image": (sums["image"] / samples).numpy(),
        "text_layers": text_layers,
        "image_layers": image_layers,
        "cross_layers": list(range(1, config.num_hidden_layers + 1)),
        "samples": samples,
        "manager_type": config.manager_type,
        "aaum_query": config.aaum_query,
    }


def weights_to_json(weights: dict) -> dict:
    """`aggregation_weights`' result with lists instead of arrays."""
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in weights.items()}


def write_weights_json(weights: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(weights_to_json(weights), indent=1))
    return path


def plot_aggregation_weights(
    weights: dict, path: str | Path, *, layout: str = "paper", title: str | None = None
) -> Path:
    """Write Fig. 7 as a PNG at `path`. `layout="paper"`: as the paper, two rows of panels (textual managers on top,
    visual below), one panel per cross-modal layer, x = the managed unimodal layer's index, y = its average weight;
    `"overlay"`: two panels (textual, visual), one line per cross-modal layer. `weights`: `aggregation_weights`'
    result (or its JSON form)."""
    if layout not in PLOT_LAYOUTS:
        raise ValueError(f"layout must be one of {PLOT_LAYOUTS}, got {layout!r}")
    plt = pyplot()
    text, image = np.asarray(weights["text"]), np.asarray(weights["image"])
    cross = weights.get("cross_layers") or list(range(1, text.shape[0] + 1))
    rows = (
        ("text", text, weights.get("text_layers") or list(range(1, text.shape[1] + 1)), "Textual weights", "tab:blue"),
        (
            "image",
            image,
            weights.get("image_layers") or list(range(1, image.shape[1] + 1)),
            "Visual weights",
            "tab:purple",
        ),
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout == "paper":
        columns = len(cross)
        fig, axes = plt.subplots(2, columns, figsize=(2.6 * columns + 0.6, 4.6), squeeze=False, sharex="row")
        for r, (_, values, layers, ylabel, colour) in enumerate(rows):
            for c, layer in enumerate(cross):
                ax = axes[r, c]
                ax.plot(layers, values[c], marker="s", color=colour, label=str(layer))
                ax.set_xticks(layers)
                ax.grid(True, linestyle="--", alpha=0.6)
                ax.legend(loc="upper left", fontsize=8)
                if c == 0:
                    ax.set_ylabel(ylabel)
                if r == 1:
                    ax.set_xlabel("unimodal layer index")
    else:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
        for i, (_, values, layers, ylabel, _) in enumerate(rows):
            ax = axes[0, i]
            for c, layer in enumerate(cross):
                ax.plot(layers, values[c], marker="s", label=f"cross-modal layer {layer}")
            ax.set_xticks(layers)
            ax.set_xlabel("unimodal layer index")
            ax.set_ylabel(ylabel)
            ax.grid(True, linestyle="--", alpha=0.6)
            ax.legend(fontsize=8)
    what = weights.get("manager_type", "")
    what = f"{what} ({weights['aaum_query']} query)" if what == "aaum" and weights.get("aaum_query") else what
    fig.suptitle(
        title
        or f"Aggregation weights of the managers per cross-modal layer (legend), {what}, "
        f"mean over {weights.get('samples', '?')} samples"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = [
    "aggregation_weights",
    "backbone",
    "managed_layers",
    "plot_aggregation_weights",
    "weights_to_json",
    "write_weights_json",
]
