"""What every family adapter shares: the vision layers, the feature layer, and the managers' multi-layer features
(the `V'` of paper Eq. 12-14) laid out like the model's own image or video tokens.

A family adapter says where a model keeps its pieces and how it turns one vision layer into tokens: the first-token
drop, the projector or merger, the per-image packing (grid crops, unpadding, newlines, window order), the video
pooling. Everything else (the manager math, the hooks, persistence) is shared and knows no family.

Layout: `grouped[k][g]` is aggregated vision layer k for token group g (one image, tile, crop or video, in
placeholder order), a `(tokens_g, hidden)` tensor whose row r lines up with placeholder token r of that group.
transformers' `generate()` repeats (beam search) and slices (chunked prefill) this exact layout when it is stored as
`deepstack_features` of an encoder output, so the managers' features travel there, after the model's own DeepStack
features where it has them (Qwen3-VL). Rows of tokens the managers leave alone (newlines, unmanaged crops) are 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling

GroupedFeatures = list[list[torch.Tensor]]


@dataclass
class ManagedOutput(BaseModelOutputWithPooling):
    """The image or video encoder output of a patched model: the usual fields plus the managers' features."""

    deepstack_features: GroupedFeatures | None = None


class Family:
    """How one family of vision-language models lays out vision tokens. Subclasses set the class attributes and
    implement `image_features` (and `video_features` when the family takes videos); one instance serves every model."""

    name: ClassVar[str]  # the config's model_type
    title: ClassVar[str]  # for people: "LLaVA-1.5"
    model_class: ClassVar[type[nn.Module]]  # ...ForConditionalGeneration
    base_class: ClassVar[type[nn.Module]]  # the bare ...Model
    config_class: ClassVar[type[PretrainedConfig]]
    processor_class: ClassVar[type]  # the published checkpoints' processor
    image_processor_class: ClassVar[type]  # its image processor's PIL backend (no torchvision needed)
    video_processor_class: ClassVar[str | None] = None  # transformers' name for it (it needs torchvision)
    # How a prompt is written by default (evaluation, analyses): the checkpoint's chat template, or "qwen_1_5", the
    # conversation format LLaVA-OneVision was trained in (see `processing.prompts`).
    prompt_format: ClassVar[str] = "chat_template"
    has_grids: ClassVar[bool] = False  # anyres: a base crop followed by grid crops
    grids_optional: ClassVar[bool] = False  # the model also takes images as their base crop only
    has_video: ClassVar[bool] = False
    # Published checkpoints and their shapes, built in code: {"llava-1.5-7b": (hub id, config factory)}.
    published: ClassVar[dict[str, tuple[str, Callable[[], PretrainedConfig]]]] = {}
    # The token-type input the forward takes beside `input_ids` (Gemma 3's `token_type_ids`, the Qwen families'
    # `mm_token_type_ids`), which collators, packing and generation must carry along.
    token_type_key: ClassVar[str | None] = None
    # The text a chat template writes around an image's token, which the processor expands inside them: the Qwen-VL
    # families' `<|vision_start|>` ... `<|vision_end|>` (the others' processors write their own markers).
    image_markers: ClassVar[tuple[str, str]] = ("", "")

    # ---- where things are ------------------------------------------------------------------------------------
    def inner(self, model: nn.Module) -> nn.Module | None:
        """The bare `...Model` inside `model`, or None when `model` is not of this family."""
        if isinstance(model, self.model_class):
            return model.model
        if isinstance(model, self.base_class):
            return model
        return None

    def vision_tower(self, inner: nn.Module) -> nn.Module:
        tower = getattr(inner, "vision_tower", None)
        return tower if tower is not None else inner.visual

    def vision_layers(self, inner: nn.Module) -> nn.ModuleList:
        """The vision encoder layers; `hidden_states[k]` is the output of `layers[k - 1]`."""
        return vision_encoder_layers(self.vision_tower(inner))

    def language_model(self, inner: nn.Module) -> nn.Module:
        return inner.language_model

    def projector_modules(self, inner: nn.Module) -> list[nn.Module]:
        """What brings the feature layer into the LLM (trained as "the projector")."""
        return [inner.multi_modal_projector]

    def decoder_layers(self, inner: nn.Module) -> nn.ModuleList:
        return self.language_model(inner).layers

    def input_embeddings(self, inner: nn.Module) -> nn.Module:
        return self.language_model(inner).get_input_embeddings()

    def own_deepstack(self, config: PretrainedConfig) -> int:
        """How many DeepStack features the model's own encoder output carries (Qwen3-VL: one per entry of
        `deepstack_visual_indexes`); the managers' features follow them in `deepstack_features`."""
        return 0

    def text_hidden_size(self, config: PretrainedConfig) -> int:
        return config.text_config.hidden_size

    def feature_layer(self, config: PretrainedConfig, num_vision_layers: int) -> int:
        return resolve_feature_layer(config.vision_feature_layer, num_vision_layers)

    def check(self, config: PretrainedConfig, manage: str) -> None:
        """Refuse a layout the adapter cannot bring managers to, before anything is patched."""
        if manage == "grids" and not self.has_grids:
            raise ValueError(
                f"ManagerConfig.manage='grids': {self.title} has no grid crops (one crop per image); "
                "use 'both' or 'base'."
            )

    # ---- features ----------------------------------------------------------------------------------------------
    def image_features(
        self, inner: nn.Module, hidden: Sequence[torch.Tensor], call: dict[str, Any], manage: str
    ) -> GroupedFeatures:
        """`V'` for the images of one `get_image_features` call. `hidden[k]` is the recorded output of the k-th
        aggregated vision layer for every crop; `call` holds that call's arguments, config defaults filled in."""
        raise NotImplementedError

    def video_features(self, inner: nn.Module, hidden: Sequence[torch.Tensor], call: dict[str, Any]) -> GroupedFeatures:
        """`V'` for the videos of one `get_video_features` call, through the model's own frame pooling."""
        raise NotImplementedError(f"{self.title} takes no videos.")

    @staticmethod
    def split_masks(result: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`get_placeholder_mask`'s result as (image mask, video mask); families without video return one mask."""
        return result if isinstance(result, tuple) else (result, None)

    # ---- inputs for tests, demos and benchmarks ----------------------------------------------------------------
    def tiny_config(self, **overrides: Any) -> PretrainedConfig:
        raise NotImplementedError

    def placeholders(self, config: PretrainedConfig, modality: str, count: int, inputs: dict[str, Any]) -> list[int]:
        """The tokens a processor writes for one image or video of `count` feature rows (`inputs`: its pixels)."""
        return [getattr(config, f"{modality}_token_id")] * count

    def token_inputs(self, config: PretrainedConfig, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inputs the forward needs beside `input_ids` that follow from the placeholder tokens (token types)."""
        return {}

    def video_inputs(
        self, config: PretrainedConfig, frames: int, batch_size: int, dtype: torch.dtype, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Random pixels for `batch_size` samples of one video of `frames` frames, as the processor lays them out."""
        size = config.vision_config.image_size
        return {"pixel_values_videos": torch.randn(batch_size, frames, 3, size, size, dtype=dtype, device=device)}

    def pixel_inputs(
        self,
        config: PretrainedConfig,
        height: int,
        width: int,
        batch_size: int,
        grid: bool,
        dtype: torch.dtype,
        device: torch.device,
    ) -> dict[str, torch.Tensor]:
        """Random pixels for `batch_size` samples of one `height` x `width` image, in the layout the processor
        gives this family (`grid=False`: the base crop only, where the family has grids)."""
        size = config.vision_config.image_size
        return {"pixel_values": torch.randn(batch_size, 3, size, size, dtype=dtype, device=device)}


# ---- shared pieces --------------------------------------------------------------------------------------------
# Where vision towers keep their layers: CLIP, SigLIP (inside a SiglipVisionModel), InternViT, Pixtral, Qwen-VL.
VISION_LAYER_PATHS = ("encoder.layers", "vision_model.encoder.layers", "encoder.layer", "transformer.layers", "blocks")


def vision_encoder_layers(vision_tower: nn.Module) -> nn.ModuleList:
    """The vision encoder's layers, wherever the tower keeps them; `hidden_states[k]` is the output of
    `layers[k - 1]`."""
    for path in VISION_LAYER_PATHS:
        module = vision_tower
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, nn.ModuleList):
            return module
    raise TypeError(
        f"Cannot find the encoder layers of the vision tower {type(vision_tower).__name__} (looked for "
        f"{', '.join('`' + p + '`' for p in VISION_LAYER_PATHS)})."
    )


def resolve_feature_layer(vision_feature_layer: int | Sequence[int], num_vision_layers: int) -> int:
    """The `hidden_states` index (1 .. num_vision_layers) that `vision_feature_layer` selects: an int, or a list of
    one (transformers concatenates the listed layers, so one listed layer is that layer)."""
    if isinstance(vision_feature_layer, (list, tuple)) and len(vision_feature_layer) == 1:
        vision_feature_layer = vision_feature_layer[0]
    if isinstance(vision_feature_layer, bool) or not isinstance(vision_feature_layer, int):
        raise ValueError(
            f"LLaVA-Manager needs a single vision feature layer (an int or a list of one), got "
            f"vision_feature_layer={vision_feature_layer!r}; several concatenated layers are not supported (the "
            f"projector then takes their concatenation, which no single layer can be brought through)."
        )
    num_states = num_vision_layers + 1
    index = vision_feature_layer % num_states if -num_states <= vision_feature_layer < num_states else None
    if not index:
        raise ValueError(
            f"vision_feature_layer={vision_feature_layer} does not select a vision layer output "
            f"(allowed: 1 .. {num_vision_layers} or -{num_vision_layers} .. -1)."
        )
    return index


def drop_first_token(hidden: torch.Tensor, strategy: str) -> torch.Tensor:
    """The "default" feature-select strategy drops each crop's first token (CLIP's CLS); "full" keeps them all."""
    return hidden[:, 1:] if strategy == "default" else hidden


def managed_crops(num_crops: Sequence[int], manage: str) -> list[bool]:
    """Which crops get a manager term: crop 0 of each image is its base image, the others its grid crops."""
    return [manage == "both" or (manage == "base") == (crop == 0) for n in num_crops for crop in range(n)]


def project_crops(
    inner: nn.Module,
    hidden: Sequence[torch.Tensor],
    strategy: str,
    flags: Sequence[bool] | None = None,
    before_projector: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Each layer through the model's first-token drop (and `before_projector`, e.g. a resampler) and its projector,
    stacked as `(crops, tokens, layers, hidden)`. Crops whose flag is False are not projected and stay 0."""
    keep = None
    if flags is not None and not all(flags):
        keep = torch.tensor(list(flags), device=hidden[0].device).nonzero().squeeze(1)
    projected = []
    for layer in hidden:
        layer = drop_first_token(layer, strategy)
        if keep is not None:
            layer = layer.index_select(0, keep)
        if before_projector is not None:
            layer = before_projector(layer)
        projected.append(inner.multi_modal_projector(layer))
    stacked = torch.stack(projected, dim=2)
    if keep is not None:
        full = stacked.new_zeros((len(flags),) + stacked.shape[1:])
        stacked = full.index_copy(0, keep, stacked)
    return stacked


def fold_layers(stacked: torch.Tensor) -> torch.Tensor:
    """`(..., layers, hidden)` -> `(..., layers * hidden)`: the layers folded into channels, so that one call of a
    linear, channel-wise layout step (packing, unpadding, bilinear pooling) serves every layer at once."""
    return stacked.flatten(-2)


def pack_folded(
    folded: torch.Tensor,
    num_crops: Sequence[int],
    pack: Callable[[list[torch.Tensor], torch.Tensor], list[torch.Tensor]],
) -> list[torch.Tensor]:
    """The model's packing (`pack(per-image crops, newline)` -> per-image `(tokens, channels)`) of the folded layers
    `(crops, tokens, channels)`, newlines 0. Where the packing only moves and drops rows (NeXT's and OneVision's
    unpadding and newlines), it runs once on the row numbers and the layers are gathered through that order: one
    read of the layers instead of the packing's copies of them. Where it mixes rows (OneVision's anyres_max_9
    bilinear downsampling), which a probe of other values shows, the folded layers themselves are packed."""
    crops, tokens, channels = folded.shape
    # on the CPU in float64: exact row numbers, no device sync, and devices without float64 (MPS) alike
    rows = torch.arange(crops * tokens, dtype=torch.float64).view(crops, tokens, 1)
    order = pack(list(torch.split(rows, list(num_crops))), rows.new_full((1,), -1.0))
    # not an affine function of the row (bilinear mixing of a ramp stays on it), and no draw from the global RNG
    probe = torch.arange(1, crops * tokens + 2, dtype=torch.float64).sin()
    probe[-1] = -2.0  # the newline's row
    packed_probe = pack(list(torch.split(probe[:-1].view(crops, tokens, 1), list(num_crops))), probe[-1:])
    flat = torch.cat(order).squeeze(-1)
    index = flat.long().where(flat >= 0, crops * tokens)
    if torch.equal(flat, flat.round()) and torch.equal(torch.cat(packed_probe).squeeze(-1), probe[index]):
        rows_of = index.clamp(max=crops * tokens - 1).to(folded.device)
        gathered = folded.reshape(-1, channels).index_select(0, rows_of)
        gathered = gathered.index_fill(0, (flat < 0).nonzero().squeeze(1).to(folded.device), 0)
        return list(torch.split(gathered, [len(group) for group in order]))
    return pack(list(torch.split(folded, list(num_crops))), folded.new_zeros(channels))


def unfold_groups(groups: Sequence[torch.Tensor], num_layers: int) -> GroupedFeatures:
    """Per-group `(tokens, layers * hidden)` tensors -> `grouped[layer][group]`."""
    split = [group.view(group.shape[0], num_layers, -1) for group in groups]
    return [[group[:, k] for group in split] for k in range(num_layers)]


def count_grouped_rows(grouped: GroupedFeatures) -> int:
    return sum(group.shape[0] for group in grouped[0])


def grid_pixel_inputs(
    config: PretrainedConfig,
    height: int,
    width: int,
    batch_size: int,
    grid: bool,
    count_crops: Callable[..., int],
    dtype: torch.dtype,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Anyres pixels: `(batch, crops, 3, size, size)` and `image_sizes`, as the NeXT and OneVision processors give."""
    size = config.vision_config.image_size
    crops = count_crops([height, width], config.image_grid_pinpoints, size) if grid else 1
    return {
        "pixel_values": torch.randn(batch_size, crops, 3, size, size, dtype=dtype, device=device),
        "image_sizes": torch.tensor([[height, width]] * batch_size, device=device),
    }


def tiny_vision(model_type: str, num_layers: int = 6, **overrides: Any) -> dict[str, Any]:
    """A vision tower small enough for a unit test: 24 x `num_layers`, 28 px crops of 7 px patches (16 patches)."""
    return dict(
        model_type=model_type,
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        patch_size=7,
        image_size=28,
        **overrides,
    )


def tiny_text(model_type: str, num_layers: int = 8, vocab_size: int = 128, **overrides: Any) -> dict[str, Any]:
    """A language model small enough for a unit test: 32 x `num_layers`."""
    return dict(
        model_type=model_type,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        **overrides,
    )
