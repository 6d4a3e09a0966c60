"""ManagerTower's evaluation metrics: the VQA soft score, accuracy (SNLI-VE, NLVR2, MLM, ITM) and image / text
retrieval recall@k, computed as ManagerTower computes them (github.com/LooperXX/ManagerTower: `VQAScore` and
`Accuracy` in src/gadgets/my_metrics.py, `compute_irtr_recall` in src/modules/objectives.py, after ViLT's
vilt/gadgets/my_metrics.py and vilt/modules/objectives.py). Values are fractions in [0, 1] (`percent=True`: x100).
"""

from __future__ import annotations

import torch


def _predictions(logits_or_pred: torch.Tensor, num_targets_dims: int) -> torch.Tensor:
    """Predicted indices: the argmax over the last dimension of logits, or the given indices as they are."""
    logits_or_pred = torch.as_tensor(logits_or_pred)
    if logits_or_pred.dim() > num_targets_dims:
        return logits_or_pred.argmax(dim=-1)
    return logits_or_pred.long()


def vqa_score(logits_or_pred: torch.Tensor, target_scores: torch.Tensor, percent: bool = False) -> float:
    """Mean over questions of the target soft score of the predicted answer (`VQAScore`: argmax of the logits,
    one-hot times the targets, summed, divided by the number of questions). `logits_or_pred`: [n, n_answers]
    logits, or [n] predicted answer indices; `target_scores`: [n, n_answers] (`data.VQACollator` labels)."""
    target_scores = torch.as_tensor(target_scores, dtype=torch.float)
    pred = torch.as_tensor(logits_or_pred)
    pred = pred.argmax(dim=-1) if pred.dim() == 2 else pred.long()
    if len(pred) == 0:
        return float("nan")
    score = target_scores.gather(1, pred.view(-1, 1)).mean().item()
    return score * 100 if percent else score


def accuracy(
    logits_or_pred: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100, percent: bool = False
) -> float:
    """Fraction of predictions equal to `labels`, positions labelled `ignore_index` left out (`Accuracy`).
    `logits_or_pred`: logits with one more dimension than `labels`, or predicted indices."""
    labels = torch.as_tensor(labels).long()
    pred = _predictions(logits_or_pred, labels.dim())
    keep = labels != ignore_index
    if keep.sum() == 0:
        return float("nan")
    value = (pred[keep] == labels[keep]).float().mean().item()
    return value * 100 if percent else value


def retrieval_recall(
    sim: torch.Tensor, text_to_image: list[int] | torch.Tensor, ks: tuple[int, ...] = (1, 5, 10), percent: bool = False
) -> dict[str, float]:
    """Recall@k of both retrieval directions from `sim` [n_images, n_texts] (higher = more similar), text j being a
    caption of image `text_to_image[j]`, as `compute_irtr_recall`:

    - text retrieval TR@k (image -> text): per image, a hit if any of its captions is among the k texts it scores
      highest; averaged over images.
    - image retrieval IR@k (text -> image): per text, a hit if its image is among the k images scoring it highest;
      averaged over texts.

    Returns {"ir_r{k}", "tr_r{k}" for each k, "ir_mean", "tr_mean" (means over ks), "r_mean" (their mean)}; a k
    beyond the number of candidates counts all of them."""
    sim = torch.as_tensor(sim, dtype=torch.float)
    text_image = torch.as_tensor(text_to_image, dtype=torch.long)
    n_images, n_texts = sim.shape
    if len(text_image) != n_texts:
        raise ValueError(f"text_to_image has {len(text_image)} entries for {n_texts} texts")
    images = torch.arange(n_images)
    out: dict[str, float] = {}
    for k in ks:
        top_texts = sim.topk(min(k, n_texts), dim=1).indices  # [n_images, k]
        out[f"tr_r{k}"] = (text_image[top_texts] == images[:, None]).any(dim=1).float().mean().item()
        top_images = sim.topk(min(k, n_images), dim=0).indices  # [k, n_texts]
        out[f"ir_r{k}"] = (top_images == text_image[None, :]).any(dim=0).float().mean().item()
    out["ir_mean"] = sum(out[f"ir_r{k}"] for k in ks) / len(ks)
    out["tr_mean"] = sum(out[f"tr_r{k}"] for k in ks) / len(ks)
    out["r_mean"] = (out["ir_mean"] + out["tr_mean"]) / 2
    return {key: value * 100 for key, value in out.items()} if percent else out
