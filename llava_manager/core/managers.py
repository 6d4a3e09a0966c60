"""The MLLM's managers: LLaVA-OV-Manager's static aggregation unimodal manager (`Manager`, the paper's SAUM for
MLLMs) and the stack of them (`ManagerStack`), in plain torch. Not the two-tower model's managers
(`llava_manager.tower.managers`: `SAUM`, `AAUM`, `SAM`, Eq. 4-7), which aggregate over both towers.

Paper Eq. 12-14: the manager before decoder layer l adds

    M_l = sum_i W_l[i] (.) V'_i,    scaled elementwise by eps ~ U(1 - j, 1 + j) in training,

to the hidden states at the image positions. `V'_i` is vision layer i brought into the LLM's space and laid out like
the image tokens (each family's adapter in `llava_manager/families/`). W is zero-initialised, so a fresh manager adds
exactly 0.

All managers' terms of a forward come from one pass over the aggregated layers (`ManagerStack.forward` without an
index, `aggregate_all`): each projected vision layer is read once, not once per manager.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Manager(nn.Module):
    """One SAUM: a per-channel weight for each aggregated vision layer.

    Attributes:
        layer_idx: the 0-based decoder layer whose input this manager adds to.
        vision_layers: the vision `hidden_states` indices it aggregates; row k of `weight` weights `vision_layers[k]`.
        weight: `(len(vision_layers), hidden_size)`, zero at initialisation.
    """

    def __init__(
        self,
        layer_idx: int,
        vision_layers: Sequence[int],
        hidden_size: int,
        jitter: float = 0.02,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.layer_idx = int(layer_idx)
        self.vision_layers = tuple(int(i) for i in vision_layers)
        self.jitter = float(jitter)
        self.weight = nn.Parameter(torch.zeros(len(self.vision_layers), hidden_size, device=device, dtype=dtype))

    def aggregate(self, layer_features: Sequence[torch.Tensor]) -> torch.Tensor:
        """`sum_k weight[k] * layer_features[k]` for one group of tokens; each feature is `(tokens, hidden)`."""
        weight = self.weight
        # A chain of fused multiply-adds reads each feature once; einsum("vnd,vd->nd") is ~30x slower on CPU.
        out = layer_features[0].to(weight.device) * weight[0]
        for k in range(1, len(layer_features)):
            out.addcmul_(layer_features[k].to(weight.device), weight[k])
        return out

    def forward(self, grouped_features: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
        """The manager term for all image tokens, `(total_tokens, hidden)`.

        `grouped_features[k][g]` is vision layer `vision_layers[k]` for token group g (an image, in image-token
        order); groups may be views of one another (generation repeats them for beams).
        """
        num_groups = len(grouped_features[0])
        parts = [self.aggregate([layer[g] for layer in grouped_features]) for g in range(num_groups)]
        term = parts[0] if num_groups == 1 else torch.cat(parts, dim=0)
        if self.training and self.jitter > 0:
            noise = torch.rand(term.shape, device=term.device, dtype=term.dtype)
            term = term * (noise * (2 * self.jitter) + (1 - self.jitter))
        return term

    def extra_repr(self) -> str:
        return (
            f"layer_idx={self.layer_idx}, vision_layers={list(self.vision_layers)}, hidden_size={self.weight.shape[1]}"
        )


class ManagerStack(nn.Module):
    """The managers of one model, in injection order, registered as children "0", "1", ...

    Calling the stack with an `index` runs that manager; without one, it returns every manager's term, `(managers,
    total_tokens, hidden)`, from one pass over the features (`aggregate_all`), each term jittered in training as its
    manager would. Weights that DeepSpeed ZeRO-3 partitions are gathered only inside their own module's call, so
    there each manager runs on its own, one after the other.

    The hooks always call the stack through its parent's attribute, so a peft `ModulesToSaveWrapper` put around it
    (`modules_to_save=["managers"]`) routes the call to its trainable copy. It is a plain `nn.Module`, not an
    `nn.ModuleList`, because peft refuses to wrap module lists.
    """

    def __init__(self, managers: Sequence[Manager]) -> None:
        super().__init__()
        for index, manager in enumerate(managers):
            self.add_module(str(index), manager)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index: int) -> Manager:
        return list(self._modules.values())[index]

    def forward(self, grouped_features: Sequence[Sequence[torch.Tensor]], index: int | None = None) -> torch.Tensor:
        if index is not None:
            return self._modules[str(index)](grouped_features)
        managers = list(self)
        if any(hasattr(m.weight, "ds_id") for m in managers):  # ZeRO-3 partitioned: see the class doc
            return torch.stack([m(grouped_features) for m in managers])
        device = managers[0].weight.device
        weight = torch.stack([m.weight.to(device) for m in managers])
        terms = aggregate_all(grouped_features, weight)
        if not self.training:
            return terms
        jittered = []
        for m, term in zip(managers, terms):
            if m.jitter > 0:
                noise = torch.rand(term.shape, device=term.device, dtype=term.dtype)
                term = term * (noise * (2 * m.jitter) + (1 - m.jitter))
            jittered.append(term)
        return torch.stack(jittered)


def stacked_layers(layers: Sequence[torch.Tensor]) -> torch.Tensor:
    """One token group's aggregated layers as one `(tokens, layers, hidden)` tensor: a view of the folded tensor
    the layers were cut from, when they are (the families' `unfold_groups`), else a copy."""
    first = layers[0]
    base = first._base
    n, d, v = first.shape[0], first.shape[-1], len(layers)
    if (
        base is not None
        and base.dim() == 2
        and base.shape == (n, v * d)
        and base.is_contiguous()
        and all(
            t._base is base and t.stride() == (v * d, 1) and t.storage_offset() == base.storage_offset() + k * d
            for k, t in enumerate(layers)
        )
    ):
        return base.view(n, v, d)
    return torch.stack(list(layers), dim=1)


# Rows per block of the CPU kernel: a block of every layer (rows x layers x hidden) stays in the cache while every
# manager reads it.
_CACHE_BYTES = 4 << 20


class _AggregateAll(torch.autograd.Function):
    """`out[m] = sum_v weight[m, v] * x[:, v]` for `x` `(tokens, layers, hidden)` and `weight` `(managers, layers,
    hidden)`. On CPU, block by block of rows: each block of `x` is read from memory once and every manager's chain
    of fused multiply-adds runs over it in the cache (while compiling, the same chains over all rows, the same
    values); on other devices one einsum."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        if _einsum(x):
            return torch.einsum("nvd,mvd->mnd", x, weight)
        m, (n, v, _) = weight.shape[0], x.shape
        if torch.compiler.is_compiling():  # the same chains, unblocked: a graph of a fixed size, the same values
            return torch.stack([_chain(x, weight[k]) for k in range(m)])
        out = x.new_empty(m, n, x.shape[2])
        for start in range(0, n, _block_rows(x)):
            block = x[start : start + _block_rows(x)]
            for k in range(m):
                rows = out[k, start : start + block.shape[0]]
                torch.mul(block[:, 0], weight[k, 0], out=rows)
                for i in range(1, v):
                    rows.addcmul_(block[:, i], weight[k, i])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad
        if _einsum(x) or torch.compiler.is_compiling():
            grad_x = torch.einsum("mnd,mvd->nvd", grad, weight) if need_x else None
            grad_w = torch.einsum("mnd,nvd->mvd", grad, x) if need_w else None
            return grad_x, grad_w
        m, (n, v, _) = weight.shape[0], x.shape
        grad_x = torch.empty_like(x) if need_x else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        step = _block_rows(x)
        for start in range(0, n, step):
            block, g = x[start : start + step], grad[:, start : start + step]
            for i in range(v):
                if need_x:
                    rows = grad_x[start : start + step, i]
                    torch.mul(g[0], weight[0, i], out=rows)
                    for k in range(1, m):
                        rows.addcmul_(g[k], weight[k, i])
                if need_w:
                    for k in range(m):
                        grad_w[k, i] += (g[k] * block[:, i]).sum(0, dtype=torch.float32)
        return grad_x, None if grad_w is None else grad_w.to(weight.dtype)


def _einsum(x: torch.Tensor) -> bool:
    """Whether `x`'s device takes the einsum (one batched matmul on a GPU; on CPU it measured several times slower
    than the chains)."""
    return x.device.type != "cpu"


def _chain(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`sum_v weight[v] * x[:, v]` as one chain of fused multiply-adds, in layer order."""
    out = x[:, 0] * weight[0]
    for i in range(1, x.shape[1]):
        out = out.addcmul(x[:, i], weight[i])
    return out


def _block_rows(x: torch.Tensor) -> int:
    return max(1, _CACHE_BYTES // (x.shape[1] * x.shape[2] * x.element_size()))


def aggregate_all(grouped_features: Sequence[Sequence[torch.Tensor]], weight: torch.Tensor) -> torch.Tensor:
    """Every manager's term `(managers, total_tokens, hidden)` from `grouped_features[k][g]` (layer k, token group
    g) and `weight` `(managers, layers, hidden)`, in one pass over each group's layers; rows in group order."""
    groups = [stacked_layers([layer[g] for layer in grouped_features]) for g in range(len(grouped_features[0]))]
    parts = [_AggregateAll.apply(group.to(weight.device), weight) for group in groups]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
