"""`ManagerTowerConfig`: a `BridgeTowerConfig` with the manager knobs (defaults: the published ManagerTower)."""

from __future__ import annotations

import dataclasses

from huggingface_hub.dataclasses import strict
from transformers import BridgeTowerConfig

MANAGER_TYPES = ("bridge", "sam", "saum", "aaum")
WEIGHT_SHAPES = ("vector", "scalar")
AAUM_QUERIES = ("fused_concat", "fused_replace", "own")


@strict
class ManagerTowerConfig(BridgeTowerConfig):
    r"""
    manager_type (`str`, defaults to `"aaum"`):
        `"bridge"`: BridgeTower's layer-by-layer bridges (the parameters and outputs of transformers'
        `BridgeTowerModel`); `"sam"`: static aggregation of the top unimodal layers and all previous cross-modal
        outputs (paper Eq. 4); `"saum"`: static aggregation of the top unimodal layers plus the previous cross-modal
        output (Eq. 5) in every cross-modal layer; `"aaum"`: SAUM in the first cross-modal layer and adaptive,
        token-wise aggregation (Eq. 6-7) in the others, as the published ManagerTower.
    num_managed_layers (`int`, defaults to 6):
        N, the top unimodal layers of each tower that every manager aggregates (independent of the number of
        cross-modal layers). `"bridge"` ignores it: it links the top `num_hidden_layers` unimodal layers one to one.
    manager_weight (`str`, defaults to `"vector"`):
        `"vector"`: one weight per layer and channel (N x D); `"scalar"`: one per layer (N x 1).
    manager_temperature (`float`, defaults to 1.0):
        Initial value of the learnable softmax temperature.
    manager_noise_std (`float`, *optional*):
        Std of the Gaussian noise added to the pre-softmax weights in training; `None` means 1/N, as the published
        code. 0 turns the noise off.
    saum_noise (`bool`, defaults to `True`):
        Noise in SAUM too (the published code); the paper puts it in AAUM only (Eq. 7).
    aaum_query (`str`, defaults to `"fused_concat"`):
        The AAUM query: `"fused_concat"`, the cross-attended other modality concatenated with the own previous
        output (the published code, Linear(2D, N)); `"fused_replace"`, the cross-attended output alone, replacing
        the own query (the paper's wording, Linear(D, N)); `"own"`, the own previous output alone (Table I).
    mask_fused_query (`bool`, defaults to `False`):
        Mask padded text tokens in the fused query's cross-attention; the published code does not.
    layer_embeddings (`bool`, defaults to `True`):
        Add a learned layer-index embedding to each managed unimodal layer (the published code).
    num_token_types (`int`, defaults to 2):
        Rows of `token_type_embeddings`: 2 (text, image); 3 for NLVR2's second image.
    head_hidden_scale (`int`, defaults to 1):
        The task heads' hidden width is `2 * hidden_size * head_hidden_scale` (the published VQAv2 and SNLI-VE runs
        after pre-training used 2).
    contrastive_hidden_size (`int`, defaults to 256):
        Width of the image-text contrastive projections (retrieval).
    cross_layer_norm_eps (`float`, *optional*):
        LayerNorm eps of the cross-modal layers; `None` takes `text_config.layer_norm_eps`, as transformers'
        BridgeTower (1e-5). The official ManagerTower code used 1e-12: set it to run converted official weights
        exactly as they were trained.
    """

    model_type = "managertower"

    manager_type: str = "aaum"
    num_managed_layers: int = 6
    manager_weight: str = "vector"
    manager_temperature: float = 1.0
    manager_noise_std: float | None = None
    saum_noise: bool = True
    aaum_query: str = "fused_concat"
    mask_fused_query: bool = False
    layer_embeddings: bool = True
    num_token_types: int = 2
    head_hidden_scale: int = 1
    contrastive_hidden_size: int = 256
    cross_layer_norm_eps: float | None = None

    def validate_managers(self):
        if self.manager_type not in MANAGER_TYPES:
            raise ValueError(
                f"ManagerTowerConfig.manager_type must be one of {MANAGER_TYPES}, got {self.manager_type!r}."
            )
        if self.manager_weight not in WEIGHT_SHAPES:
            raise ValueError(
                f"ManagerTowerConfig.manager_weight must be one of {WEIGHT_SHAPES}, got {self.manager_weight!r}."
            )
        if self.aaum_query not in AAUM_QUERIES:
            raise ValueError(f"ManagerTowerConfig.aaum_query must be one of {AAUM_QUERIES}, got {self.aaum_query!r}.")
        if self.manager_temperature <= 0:
            raise ValueError(f"ManagerTowerConfig.manager_temperature must be > 0, got {self.manager_temperature}.")
        if self.manager_noise_std is not None and self.manager_noise_std < 0:
            raise ValueError(
                f"ManagerTowerConfig.manager_noise_std must be >= 0 or None (1/N), got {self.manager_noise_std}."
            )
        if self.head_hidden_scale < 1:
            raise ValueError(f"ManagerTowerConfig.head_hidden_scale must be >= 1, got {self.head_hidden_scale}.")
        if self.num_token_types < 2:
            raise ValueError(
                f"ManagerTowerConfig.num_token_types must be >= 2 (text, image), got {self.num_token_types}."
            )
        depth = min(
            self.text_config.num_hidden_layers,
            self.vision_config.num_hidden_layers - int(self.vision_config.remove_last_layer),
        )
        if self.manager_type != "bridge" and not 1 <= self.num_managed_layers <= depth:
            raise ValueError(
                f"ManagerTowerConfig.num_managed_layers must be in 1..{depth} (the unimodal layers of "
                f"the shallower tower), got {self.num_managed_layers}."
            )
        if self.num_hidden_layers > depth:
            raise ValueError(
                f"ManagerTowerConfig.num_hidden_layers (cross-modal layers) must be <= {depth}, the "
                f"unimodal layers of the shallower tower; got {self.num_hidden_layers}."
            )

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """As transformers', but the keyword overrides of our fields go into the constructor, so they are validated
        with the rest (transformers sets them after building the config, unchecked)."""
        ours = {f.name for f in dataclasses.fields(cls)}
        config_dict = dict(config_dict, **{k: kwargs.pop(k) for k in list(kwargs) if k in ours})
        return super().from_dict(config_dict, **kwargs)

    @property
    def noise_std(self) -> float:
        return 1.0 / self.num_managed_layers if self.manager_noise_std is None else self.manager_noise_std


__all__ = ["ManagerTowerConfig"]
