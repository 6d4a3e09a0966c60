"""The numbers the analyses plot, each from its definition (DESIGN.md "Analyses"; paper Sec. IV-D, V-F, App. C).

All functions take one sample's tensors; the collectors average them over samples.
"""

from __future__ import annotations

import torch

EPS = 1e-12


def restrict(attention: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """`(heads, q, k)` attention of the chosen queries over the chosen keys, renormalised to sum to 1 over those
    keys (e.g. text queries over visual keys). `queries` / `keys` are boolean masks over the sequence."""
    part = attention[:, queries][:, :, keys].float()
    return part / part.sum(-1, keepdim=True).clamp_min(EPS)


def entropy(distributions: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the distributions along the last dimension."""
    p = distributions.clamp_min(EPS)
    return -(distributions * p.log()).sum(-1).mean()


def head_divergence(distributions: torch.Tensor) -> torch.Tensor:
    """Mean KL divergence KL(h || h') over ordered pairs of different heads, averaged over queries.
    `distributions` is `(heads, q, k)`.

    Summed over pairs, KL(i || j) = sum_k p_i log p_i - p_i log p_j gives H * S - <P, L> per query, with
    S = sum_i <p_i, log p_i>, P = sum_i p_i and L = sum_i log p_i: memory of the attention, not of every pair.
    """
    heads = distributions.shape[0]
    if heads < 2:
        return distributions.new_zeros(())
    p = distributions.double()  # the two sums nearly cancel when heads agree: float64 keeps the difference
    log_p = p.clamp_min(EPS).log()
    s = (p * log_p).sum(-1).sum(0)  # (q,)
    cross = (p.sum(0) * log_p.sum(0)).sum(-1)  # (q,)
    return ((heads * s - cross) / (heads * (heads - 1))).mean().float()


def consecutive_cosine(hidden_states: list[torch.Tensor] | tuple, positions: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between consecutive layers' outputs at `positions` (boolean mask over the sequence),
    averaged over those positions: entry l compares `hidden_states[l]` with `hidden_states[l + 1]`."""
    values = []
    for before, after in zip(hidden_states[:-1], hidden_states[1:]):
        a, b = (
            before.reshape(-1, before.shape[-1])[positions].float(),
            after.reshape(-1, after.shape[-1])[positions].float(),
        )
        values.append(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean())
    return torch.stack(values)


def mean_attention_distance(attention: torch.Tensor, grid: int, patch_size: int) -> torch.Tensor:
    """Per head, the attention-weighted distance in pixels between each query patch and the patches it attends to,
    averaged over queries (ViT-style "mean attention distance"). `attention` is `(heads, n, n)` over a
    `grid x grid` patch layout (no class token)."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()], dim=-1).float().to(attention.device) * patch_size
    distance = torch.cdist(coords, coords)  # (n, n)
    return (attention.float() * distance).sum(-1).mean(-1)
