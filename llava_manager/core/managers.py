"""The MLLM's managers: LLaVA-OV-Manager's static aggregation unimodal manager (`Manager`, the paper's SAUM for
MLLMs) and the stack of them (`ManagerStack`), in plain torch. Not the two-tower model's managers
(`llava_manager.tower.managers`: `SAUM`, `AAUM`, `SAM`, Eq. 4-7), which aggregate over both towers.

Paper Eq. 12-14: the manager before decoder layer l adds

    M_l = sum_i W_l[i] (.) V'_i,    scaled elementwise by eps ~ U(1 - j, 1 + j) in training,

to the hidden states at the image positions. `V'_i` is vision layer i brought into the LLM's space and laid out like
the image tokens (each family's adapter in `llava_manager/families/`). W is zero-initialised, so a fresh manager adds
exactly 0.
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

    Calling the stack runs manager `index`. The hooks always call the stack through its parent's attribute, so a
    peft `ModulesToSaveWrapper` put around it (`modules_to_save=["managers"]`) routes the call to its trainable copy.
    It is a plain `nn.Module`, not an `nn.ModuleList`, because peft refuses to wrap module lists.
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

    def forward(self, grouped_features: Sequence[Sequence[torch.Tensor]], index: int) -> torch.Tensor:
        return self._modules[str(index)](grouped_features)
