"""`ManagerConfig`: the knobs of LLaVA-Manager, with the paper's defaults."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VISION_LAYER_PRESETS = ("top_half", "bottom_half", "all")
MANAGE_CHOICES = ("both", "base", "grids")


@dataclass
class ManagerConfig:
    """Where managers sit, what they aggregate and how they are trained.

    The defaults are the paper's LLaVA-OV-Manager (Sec. V-B2, Eq. 12-14), for every family: a manager
    before every 4th decoder layer starting at layer 0, each a learned weighted sum of the top half of the vision
    layers up to the one that feeds the LLM, applied to the base image, the grid crops and video frames, with
    multiplicative jitter U(0.98, 1.02) in training.
    """

    interval: int = field(default=4, metadata={"help": "A manager before every `interval`-th decoder layer."})
    start: int = field(default=0, metadata={"help": "First decoder layer (0-based) that gets a manager."})
    inject_layers: list[int] | None = field(
        default=None,
        metadata={"help": "Explicit 0-based decoder layers; overrides `interval` and `start` when given."},
    )
    vision_layers: str | list[int] = field(
        default="top_half",
        metadata={
            "help": "Vision `hidden_states` indices to aggregate: 'top_half' (the last ceil(f/2) ending at the "
            "feature layer f), 'bottom_half' (1 .. f - ceil(f/2)), 'all' (1 .. f) or an explicit list."
        },
    )
    manage: str = field(
        default="both", metadata={"help": "Which crops get manager terms: 'both', 'base' (base image) or 'grids'."}
    )
    manage_videos: bool = field(
        default=True,
        metadata={
            "help": "Video frames get manager terms too, brought through the model's own frame pooling "
            "(families that take videos: LLaVA-NeXT-Video, LLaVA-OneVision, the Qwen-VL families)."
        },
    )
    jitter: float = field(
        default=0.02, metadata={"help": "Training noise: the term is multiplied by U(1 - jitter, 1 + jitter)."}
    )
    deepstack: bool = field(
        default=True,
        metadata={
            "help": "Keep the model's own DeepStack (Qwen3-VL adds three vision layers after decoder layers 1-3); "
            "False turns it off, to compare managers instead of DeepStack with managers on top of it."
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f"ManagerConfig.interval must be an integer >= 1, got {self.interval!r}.")
        if isinstance(self.start, bool) or not isinstance(self.start, int) or self.start < 0:
            raise ValueError(f"ManagerConfig.start must be an integer >= 0, got {self.start!r}.")
        if self.inject_layers is not None:
            self.inject_layers = _int_list("inject_layers", self.inject_layers, minimum=0)
        if isinstance(self.vision_layers, str):
            if self.vision_layers not in VISION_LAYER_PRESETS:
                raise ValueError(
                    f"ManagerConfig.vision_layers must be one of {VISION_LAYER_PRESETS} or a list of "
                    f"hidden_states indices, got {self.vision_layers!r}."
                )
        else:
            self.vision_layers = _int_list("vision_layers", self.vision_layers, minimum=1)
        if self.manage not in MANAGE_CHOICES:
            raise ValueError(f"ManagerConfig.manage must be one of {MANAGE_CHOICES}, got {self.manage!r}.")
        for name in ("manage_videos", "deepstack"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ManagerConfig.{name} must be True or False, got {getattr(self, name)!r}.")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, (int, float)) or not 0 <= self.jitter < 1:
            raise ValueError(f"ManagerConfig.jitter must be a number in [0, 1), got {self.jitter!r}.")
        self.jitter = float(self.jitter)

    def resolve_inject_layers(self, num_decoder_layers: int) -> tuple[int, ...]:
        """0-based decoder layers that get a manager, for an LLM with `num_decoder_layers` layers."""
        if self.inject_layers is not None:
            bad = [i for i in self.inject_layers if i >= num_decoder_layers]
            if bad:
                raise ValueError(
                    f"ManagerConfig.inject_layers {bad} out of range: the LLM has {num_decoder_layers} decoder "
                    f"layers, allowed indices are 0 .. {num_decoder_layers - 1}."
                )
            return tuple(sorted(self.inject_layers))
        if self.interval > num_decoder_layers:
            raise ValueError(
                f"ManagerConfig.interval={self.interval} is larger than the LLM's {num_decoder_layers} decoder "
                f"layers; allowed: 1 .. {num_decoder_layers}."
            )
        if self.start >= num_decoder_layers:
            raise ValueError(f"ManagerConfig.start={self.start} out of range: allowed 0 .. {num_decoder_layers - 1}.")
        return tuple(range(self.start, num_decoder_layers, self.interval))

    def resolve_vision_layers(self, feature_layer: int) -> tuple[int, ...]:
        """`hidden_states` indices to aggregate, given the resolved index `f` of the layer that feeds the LLM."""
        top = math.ceil(feature_layer / 2)
        if self.vision_layers == "top_half":
            return tuple(range(feature_layer - top + 1, feature_layer + 1))
        if self.vision_layers == "bottom_half":
            layers = tuple(range(1, feature_layer - top + 1))
            if not layers:
                raise ValueError(f"vision_layers='bottom_half' is empty for feature layer {feature_layer}.")
            return layers
        if self.vision_layers == "all":
            return tuple(range(1, feature_layer + 1))
        bad = [i for i in self.vision_layers if i > feature_layer]
        if bad:
            raise ValueError(
                f"ManagerConfig.vision_layers {bad} out of range: the LLM is fed by hidden_states[{feature_layer}], "
                f"allowed indices are 1 .. {feature_layer}."
            )
        return tuple(sorted(self.vision_layers))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ManagerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"ManagerConfig ignores unknown keys {unknown}.", stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json_file(cls, path: str | Path) -> ManagerConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _int_list(name: str, values: Sequence[int], minimum: int) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"ManagerConfig.{name} must be a list of integers, got {values!r}.")
    values = list(values)
    if not values:
        raise ValueError(f"ManagerConfig.{name} must not be empty.")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ValueError(f"ManagerConfig.{name} must hold integers only, got {values!r}.")
    if any(v < minimum for v in values):
        raise ValueError(f"ManagerConfig.{name} must hold indices >= {minimum}, got {values!r}.")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"ManagerConfig.{name} repeats {repeated}; each index may appear once.")
    return values
