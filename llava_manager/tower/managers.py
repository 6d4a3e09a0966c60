"""The three managers of ManagerTower (paper Sec. III), pure torch.

Each manager turns the top N unimodal layers of one tower, already projected into the cross-modal space
(`unimodal`: B x N x L x D), into the input of one cross-modal layer. Parameter names follow the official code
(`layer_scores`, `layer_scores_cross`, `LayerNorm.{k}`, `softmax_temperature`, `linear_controller`,
`fusion_attention`, `extra_query_LayerNorm`), so its checkpoints map by prefix.

- `SAM` (Eq. 4): softmax-weighted sum of the N unimodal layers and of all previous cross-modal outputs, the two parts
  with their own weights (initialised uniform, 1/N and 1/(l-1)) and temperatures.
- `SAUM` (Eq. 5): softmax-weighted sum of the N unimodal layers, plus `w_C * LN(C_{l-1})` (w_C outside the softmax,
  initialised to 1) from the second cross-modal layer on.
- `AAUM` (Eq. 6-7): as SAUM, but the softmax weights are generated per token from a query: the own previous output,
  or the cross-modal fused query (a one-head cross-attention of the own previous output over the other modality's).

Every manager returns `(output, weights)`: `weights` are the softmax weights on the N unimodal layers,
broadcastable to B x N x L x D (`B = L = 1` where they do not depend on the sample).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _Aggregator(nn.Module):
    """What all managers share: a LayerNorm per aggregated representation, a learnable softmax temperature, and
    the noisy softmax over the unimodal layers."""

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        num_previous: int,
        *,
        weight: str,
        temperature: float,
        noise_std: float,
        eps: float,
    ):
        super().__init__()
        self.hidden_size, self.num_layers, self.num_previous = hidden_size, num_layers, num_previous
        self.weight_width = hidden_size if weight == "vector" else 1
        self.noise_std = noise_std
        self.initial_temperature = temperature
        self.LayerNorm = nn.ModuleList([nn.LayerNorm(hidden_size, eps=eps) for _ in range(num_layers + num_previous)])
        self.softmax_temperature = nn.Parameter(torch.full((1,), float(temperature)))

    def normed(self, unimodal: torch.Tensor) -> torch.Tensor:
        """LN_i of each unimodal layer: B x N x L x D."""
        return torch.stack([self.LayerNorm[i](unimodal[:, i]) for i in range(self.num_layers)], dim=1)

    def unimodal_weights(self, logits: torch.Tensor, shape: torch.Size, temperature: torch.Tensor) -> torch.Tensor:
        """softmax over the layer axis of (logits + noise) / temperature; in training the noise is drawn per sample,
        token and channel (B x N x L x D), as the official code does."""
        if self.training and self.noise_std > 0:
            logits = (
                logits.expand(shape) + torch.randn(shape, dtype=logits.dtype, device=logits.device) * self.noise_std
            )
        return torch.softmax(logits / temperature, dim=1)

    def reset_parameters(self) -> None:
        for ln in self.LayerNorm:
            ln.reset_parameters()
        with torch.no_grad():
            self.softmax_temperature.fill_(self.initial_temperature)


class SAUM(_Aggregator):
    """Static Aggregation Unimodal Manager (Eq. 5): sum_i softmax(W / tau)_i (.) LN_i(U_i) [+ w_C (.) LN(C_{l-1})].

    `layer_scores` holds the N pre-softmax weights, initialised to 1/N (a uniform softmax), and, from the second
    cross-modal layer on (`num_previous=1`), w_C in its last row, initialised to 1 and never softmaxed.
    """

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        num_previous: int = 0,
        *,
        weight: str = "vector",
        temperature: float = 1.0,
        noise_std: float = 0.0,
        eps: float = 1e-5,
    ):
        if num_previous not in (0, 1):
            raise ValueError(
                f"SAUM takes the previous cross-modal output or nothing: num_previous must be 0 or 1, "
                f"got {num_previous}."
            )
        super().__init__(
            hidden_size, num_layers, num_previous, weight=weight, temperature=temperature, noise_std=noise_std, eps=eps
        )
        self.layer_scores = nn.Parameter(torch.empty(1, num_layers + num_previous, 1, self.weight_width))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.layer_scores[:, : self.num_layers].fill_(1.0 / self.num_layers)
            self.layer_scores[:, self.num_layers :].fill_(1.0)

    def forward(
        self, unimodal: torch.Tensor, previous: torch.Tensor | None = None, **_
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if (previous is None) != (self.num_previous == 0):
            raise ValueError(f"this SAUM was built for {self.num_previous} previous cross-modal output(s)")
        normed = self.normed(unimodal)
        weights = self.unimodal_weights(self.layer_scores[:, : self.num_layers], normed.shape, self.softmax_temperature)
        out = (weights * normed).sum(dim=1)
        if previous is not None:
            out = out + self.layer_scores[:, self.num_layers] * self.LayerNorm[self.num_layers](previous)
        return out, weights


class FusionAttention(nn.Module):
    """The fused query's cross-attention (paper footnote 20; official `LayerAttention`): one head, query and key
    projections, no value or output projection: softmax(q(own) k(other)^T / sqrt(D)) @ other."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, query: torch.Tensor, other: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        scores = self.q_proj(query) @ self.k_proj(other).transpose(-1, -2) / math.sqrt(query.shape[-1])
        if mask is not None:  # B x L_other, 1 = keep
            scores = scores.masked_fill(~mask.bool()[:, None, :], torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1) @ other


class AAUM(_Aggregator):
    """Adaptive Aggregation Unimodal Manager (Eq. 6-7): per-token weights softmax((q W_M + noise) / tau) over the N
    layers, plus w_C (.) LN(C_{l-1}).

    `query`: "fused_concat" (published code: q = [CA(LN(C_own), LN(C_other)) ; LN(C_own)], W_M: 2D -> N),
    "fused_replace" (the paper's wording: q = CA(...), W_M: D -> N) or "own" (q = LN(C_own), W_M: D -> N).
    `mask_fused_query` masks the other modality's padding in CA (the published code does not).
    """

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        *,
        weight: str = "vector",
        temperature: float = 1.0,
        noise_std: float = 0.0,
        eps: float = 1e-5,
        query: str = "fused_concat",
        mask_fused_query: bool = False,
    ):
        super().__init__(
            hidden_size, num_layers, 1, weight=weight, temperature=temperature, noise_std=noise_std, eps=eps
        )
        self.query, self.mask_fused_query = query, mask_fused_query
        self.layer_scores_cross = nn.Parameter(torch.empty(1, 1, 1, self.weight_width))
        self.linear_controller = nn.Linear(hidden_size * (2 if query == "fused_concat" else 1), num_layers)
        if query != "own":
            self.fusion_attention = FusionAttention(hidden_size)
            self.extra_query_LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.layer_scores_cross.fill_(1.0)

    def controller_query(
        self, own: torch.Tensor, other: torch.Tensor | None, other_mask: torch.Tensor | None
    ) -> torch.Tensor:
        if self.query == "own":
            return own
        if other is None:
            raise ValueError(f"AAUM with query {self.query!r} needs the other modality's previous output")
        other = self.extra_query_LayerNorm(other)
        fused = self.fusion_attention(own, other, other_mask if self.mask_fused_query else None)
        return torch.cat([fused, own], dim=-1) if self.query == "fused_concat" else fused

    def forward(
        self,
        unimodal: torch.Tensor,
        previous: torch.Tensor,
        other: torch.Tensor | None = None,
        other_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        normed = self.normed(unimodal)
        own = self.LayerNorm[self.num_layers](previous)
        logits = self.linear_controller(self.controller_query(own, other, other_mask))  # B x L x N
        logits = logits.transpose(1, 2).unsqueeze(-1)  # B x N x L x 1, broadcast over the channels
        weights = self.unimodal_weights(logits, normed.shape, self.softmax_temperature)
        return (weights * normed).sum(dim=1) + self.layer_scores_cross[:, 0] * own, weights


class SAM(_Aggregator):
    """Static Aggregation Manager (Eq. 4; not in the published code): softmax-weighted sums of the N unimodal layers
    and of the `num_previous` previous cross-modal outputs, each part with its own weights (initialised uniform:
    1/N and 1/(l-1), Sec. III-A) and its own learnable temperature."""

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        num_previous: int = 0,
        *,
        weight: str = "vector",
        temperature: float = 1.0,
        noise_std: float = 0.0,
        eps: float = 1e-5,
    ):
        super().__init__(
            hidden_size, num_layers, num_previous, weight=weight, temperature=temperature, noise_std=noise_std, eps=eps
        )
        self.layer_scores = nn.Parameter(torch.empty(1, num_layers, 1, self.weight_width))
        if num_previous:
            self.layer_scores_cross = nn.Parameter(torch.empty(1, num_previous, 1, self.weight_width))
            self.softmax_temperature_cross = nn.Parameter(torch.full((1,), float(temperature)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.layer_scores.fill_(1.0 / self.num_layers)
            if self.num_previous:
                self.layer_scores_cross.fill_(1.0 / self.num_previous)
                self.softmax_temperature_cross.fill_(self.initial_temperature)

    def forward(
        self, unimodal: torch.Tensor, previous: torch.Tensor | None = None, **_
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`previous`: B x (l-1) x L x D, the outputs of all earlier cross-modal layers (None in the first)."""
        got = 0 if previous is None else previous.shape[1]
        if got != self.num_previous:
            raise ValueError(f"this SAM was built for {self.num_previous} previous cross-modal outputs, got {got}")
        normed = self.normed(unimodal)
        weights = self.unimodal_weights(self.layer_scores, normed.shape, self.softmax_temperature)
        out = (weights * normed).sum(dim=1)
        if self.num_previous:
            cross = torch.stack([self.LayerNorm[self.num_layers + j](previous[:, j]) for j in range(got)], dim=1)
            cross_weights = torch.softmax(self.layer_scores_cross / self.softmax_temperature_cross, dim=1)
            out = out + (cross_weights * cross).sum(dim=1)
        return out, weights
