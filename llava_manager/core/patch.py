"""`apply_manager` / `remove_manager`: instance-only, reversible patching of a vision-language model.

What a patch adds to one model instance, and nothing else:
- `model.model.managers`: a `ManagerStack` (the only new parameters);
- forward hooks on the aggregated vision layers, which record their outputs while the model encodes images or videos;
- instance wrappers of `get_image_features` and `get_video_features` (they also build the managers' multi-layer
  features through the family adapter and return them in `deepstack_features`, after the model's own DeepStack
  features if it has any: a field that `generate()` repeats for beams and slices for chunked prefill) and of
  `get_placeholder_mask` (records where the image and video tokens are). The wrappers are re-entrant: an encoder
  that calls the other (Qwen3-VL's video encoder calls its image encoder) is recorded once, as the outer call;
- forward pre-hooks on the managed decoder layers, which add the manager terms at those positions (every manager's
  term made at the first of them, in one pass over the aggregated layers: `ManagerStack`), and a pre/post
  hook pair on `model.model` that scopes the positions to one forward call; where the model has its own DeepStack,
  a pre-hook on its language model that hands it only its own features (or none, with `deepstack=False`);
- `config.manager_config`, so that `save_pretrained` records the patch.
Decode steps carry no image or video tokens: every hook returns at its first line.
Nothing here knows a family: `families` says where a model keeps its layers and how it lays out its tokens.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from ..families import Family, GroupedFeatures, ManagedOutput, count_grouped_rows, family_of
from .config import ManagerConfig
from .managers import Manager, ManagerStack

_RUNTIME_ATTR = "_llava_manager_runtime"
CONFIG_KEY = "manager_config"
_ENCODERS = {"image": "get_image_features", "video": "get_video_features"}
# Arguments of the encoders that default to the config's value of the same name when not given.
_CONFIG_DEFAULTS = ("vision_feature_layer", "vision_feature_select_strategy", "vision_aspect_ratio")


class ManagerPlan:
    """Where the managers of `config` go in a given model; computed (and every check run) before patching."""

    def __init__(self, model: nn.Module, config: ManagerConfig) -> None:
        adapter, inner = family_of(model)
        if getattr(inner, _RUNTIME_ATTR, None) is not None:
            raise RuntimeError("apply_manager: this model already has managers; call remove_manager(model) first.")
        self.adapter: Family = adapter
        self.inner = inner
        self.config = config
        self.vision_layer_modules = adapter.vision_layers(inner)
        self.decoder_layers = adapter.decoder_layers(inner)
        self.num_decoder_layers = len(self.decoder_layers)
        self.hidden_size = adapter.text_hidden_size(inner.config)
        self.feature_layer = adapter.feature_layer(inner.config, len(self.vision_layer_modules))
        self.own_deepstack = adapter.own_deepstack(inner.config)
        adapter.check(inner.config, config.manage)
        if not config.deepstack and not self.own_deepstack:
            raise ValueError(
                f"ManagerConfig.deepstack=False turns a model's own DeepStack off; {adapter.title} has none."
            )
        self.inject_layers = config.resolve_inject_layers(self.num_decoder_layers)
        self.vision_layers = config.resolve_vision_layers(self.feature_layer)
        self.modalities = ("image", "video") if adapter.has_video and config.manage_videos else ("image",)

    @property
    def num_parameters(self) -> int:
        return len(self.inject_layers) * len(self.vision_layers) * self.hidden_size

    def describe(self) -> dict[str, Any]:
        """What a saved manager must agree with to load into this model."""
        return {
            "family": self.adapter.name,
            "text_hidden_size": self.hidden_size,
            "num_decoder_layers": self.num_decoder_layers,
            "inject_layers": list(self.inject_layers),
            "vision_layers": list(self.vision_layers),
        }


def apply_manager(model: nn.Module, config: ManagerConfig | None = None, **overrides: Any) -> nn.Module:
    """Patch a vision-language model in place with zero-initialised managers and return it.

    `model`: any class of `families.supported_classes()` (the LLaVA family, Qwen2-VL / Qwen2.5-VL, Qwen3-VL /
    Qwen3.5, InternVL, Gemma 3, Mistral3; the `...ForConditionalGeneration` or the bare `...Model`). `config` is a
    `ManagerConfig`; keyword arguments override its fields (`apply_manager(model, interval=1)`). Every check runs
    before the model is touched, so a failure never leaves it half-patched.
    """
    if config is None:
        config = ManagerConfig(**overrides)
    elif overrides:
        config = ManagerConfig.from_dict({**config.to_dict(), **overrides})
    plan = ManagerPlan(model, config)
    _Runtime(plan).install()
    return model


def remove_manager(model: nn.Module) -> nn.Module:
    """Undo `apply_manager`: hooks, wrappers, parameters and the config entry go; the base model is left."""
    runtime = _runtime_of(model)
    # upstream: see llava_manager/upstream.py
    if not isinstance(runtime.inner._modules.get("managers"), ManagerStack):
        raise RuntimeError(
            "remove_manager: `model.model.managers` is wrapped (peft modules_to_save?); unload the peft model first."
        )
    runtime.uninstall()
    return model


def get_managers(model: nn.Module) -> list[Manager]:
    """The active managers in injection order (the trainable copies when peft wraps them)."""
    return list(_runtime_of(model).active_stack())


def has_manager(model: nn.Module) -> bool:
    return _find_runtime(model) is not None


def manager_plan(model: nn.Module) -> dict[str, Any]:
    """The resolved layout of the patched `model` (see `ManagerPlan.describe`)."""
    return _runtime_of(model).plan.describe()


def manager_config(model: nn.Module) -> ManagerConfig:
    return _runtime_of(model).plan.config


class _Runtime:
    """Hooks, wrappers and per-forward state of one patched model."""

    def __init__(self, plan: ManagerPlan) -> None:
        self.plan = plan
        self.inner = plan.inner
        self.wrapped = ("get_placeholder_mask",) + tuple(_ENCODERS[m] for m in plan.modalities)
        self.slot_of_layer = {layer: slot for slot, layer in enumerate(plan.inject_layers)}
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.originals: dict[str, Any] = {}  # instance-level methods that the wrappers replaced, if any
        self.recording: dict[int, torch.Tensor] | None = None  # vision layer -> output, while encoding
        self.in_forward = False
        self.pending: dict[str, GroupedFeatures] = {}  # modality -> manager features of the current forward
        self.positions: dict[str, torch.Tensor] = {}  # modality -> flat (batch * seq) indices of its tokens
        self.terms: dict[str, torch.Tensor] = {}  # modality -> every manager's term, (managers, tokens, hidden)

    # ---- install / uninstall -------------------------------------------------------------------------------
    def install(self) -> None:
        plan, inner = self.plan, self.inner
        embed = plan.adapter.input_embeddings(inner).weight
        managers = []
        for layer in plan.inject_layers:
            device = next(plan.decoder_layers[layer].parameters(), embed).device
            managers.append(
                Manager(
                    layer, plan.vision_layers, plan.hidden_size, plan.config.jitter, device=device, dtype=embed.dtype
                )
            )
        inner.managers = ManagerStack(managers).train(inner.training)

        for vision_layer in plan.vision_layers:
            module = plan.vision_layer_modules[vision_layer - 1]
            self.handles.append(module.register_forward_hook(functools.partial(self._record, vision_layer)))
        for layer in plan.inject_layers:
            hook = functools.partial(self._inject, self.slot_of_layer[layer])
            self.handles.append(plan.decoder_layers[layer].register_forward_pre_hook(hook, with_kwargs=True))
        if plan.own_deepstack:
            language_model = plan.adapter.language_model(inner)
            self.handles.append(language_model.register_forward_pre_hook(self._own_deepstack, with_kwargs=True))
        self.handles.append(inner.register_forward_pre_hook(self._begin_forward, with_kwargs=True))
        self.handles.append(inner.register_forward_hook(self._end_forward, always_call=True))
        for name in self.wrapped:
            self.originals[name] = inner.__dict__.get(name)
            setattr(inner, name, _InstanceMethod(self, name))
        inner.config.manager_config = plan.config.to_dict()
        object.__setattr__(inner, _RUNTIME_ATTR, self)

    def uninstall(self) -> None:
        inner = self.inner
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        del inner.managers
        for name in self.wrapped:
            if self.originals[name] is None:
                del inner.__dict__[name]
            else:
                inner.__dict__[name] = self.originals[name]
        if hasattr(inner.config, CONFIG_KEY):
            delattr(inner.config, CONFIG_KEY)
        object.__delattr__(inner, _RUNTIME_ATTR)
        self._reset()

    def active_stack(self) -> ManagerStack:
        stack = self.inner._modules["managers"]
        if isinstance(stack, ManagerStack):
            return stack
        # peft ModulesToSaveWrapper: the trainable copy of the active adapter, or the original when disabled.
        if stack.disable_adapters or not stack.active_adapters:
            return stack.original_module
        return stack.modules_to_save[stack.active_adapters[0]]

    # ---- hooks -----------------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.in_forward = False
        self.pending = {}
        self.positions = {}
        self.terms = {}
        self.recording = None

    def _begin_forward(self, module, args, kwargs):
        self._reset()
        self.in_forward = True
        expected = self.plan.own_deepstack + len(self.plan.vision_layers)
        for modality, encoded in (kwargs.get("mm_encoder_outputs") or {}).items():
            features = getattr(encoded, "deepstack_features", None)
            if modality in self.plan.modalities and features is not None and len(features) == expected:
                self.pending[modality] = features[self.plan.own_deepstack :]

    def _own_deepstack(self, module, args, kwargs):
        """The language model gets the model's own DeepStack features only (none with `deepstack=False`)."""
        embeds = kwargs.get("deepstack_visual_embeds")
        if embeds is None:
            return None
        keep = self.plan.own_deepstack if self.plan.config.deepstack else 0
        return args, {**kwargs, "deepstack_visual_embeds": list(embeds[:keep]) or None}

    def _end_forward(self, module, args, output):
        self._reset()

    def _record(self, vision_layer: int, module, args, output) -> None:
        if self.recording is not None:
            self.recording[vision_layer] = output[0] if isinstance(output, tuple) else output

    def _inject(self, slot: int, module, args, kwargs):
        if not self.positions:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        flat = hidden.reshape(-1, hidden.shape[-1])
        for modality, positions in self.positions.items():
            if modality not in self.terms:  # every manager's term of this forward, from one pass over the layers
                self.terms[modality] = self.inner.managers(self.pending[modality])
            term = self.terms[modality][slot]
            flat = flat.index_add(0, positions.to(hidden.device), term.to(hidden.device, hidden.dtype))
        hidden = flat.view_as(hidden)
        if args:
            return (hidden,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def _call_original(self, name: str, *args, **kwargs):
        original = self.originals[name]
        if original is not None:
            return original(*args, **kwargs)
        return getattr(type(self.inner), name)(self.inner, *args, **kwargs)

    def _encode(self, modality: str, *args, **kwargs):
        name = _ENCODERS[modality]
        if self.recording is not None:  # called from inside the other encoder: the outer call records and builds
            return self._call_original(name, *args, **kwargs)
        self.recording = {}
        try:
            output = self._call_original(name, *args, **kwargs)
            recorded = self.recording
        finally:
            self.recording = None
        if not isinstance(output, ModelOutput):
            return output  # return_dict=False: nothing to attach the features to
        call = dict(_signature(self.inner, name).bind(*args, **kwargs).arguments)
        for key in _CONFIG_DEFAULTS:
            if call.get(key) is None and hasattr(self.inner.config, key):
                call[key] = getattr(self.inner.config, key)
        hidden = [recorded[layer] for layer in self.plan.vision_layers]
        adapter = self.plan.adapter
        if modality == "image":
            grouped = adapter.image_features(self.inner, hidden, call, self.plan.config.manage)
        else:
            grouped = adapter.video_features(self.inner, hidden, call)
        own = list(getattr(output, "deepstack_features", None) or [])[: self.plan.own_deepstack]
        if "deepstack_features" in output.__dataclass_fields__:
            output.deepstack_features = own + grouped
        else:
            output = ManagedOutput(**dict(output.items()), deepstack_features=own + grouped)
        if self.in_forward:
            self.pending[modality] = grouped
        return output

    def get_image_features(self, *args, **kwargs):
        return self._encode("image", *args, **kwargs)

    def get_video_features(self, *args, **kwargs):
        return self._encode("video", *args, **kwargs)

    def get_placeholder_mask(self, *args, **kwargs):
        result = self._call_original("get_placeholder_mask", *args, **kwargs)
        if not self.in_forward:
            return result
        call = _signature(self.inner, "get_placeholder_mask").bind(*args, **kwargs).arguments
        masks = dict(zip(("image", "video"), self.plan.adapter.split_masks(result)))
        for modality in self.plan.modalities:
            if call.get(f"{modality}_features") is None:
                continue
            pending = self.pending.get(modality)
            if pending is None:
                raise RuntimeError(
                    f"LLaVA-Manager: {modality} features reached the LLM without the managers' multi-layer features. "
                    f"Pass the pixels, or `mm_encoder_outputs` made by this patched model's `{_ENCODERS[modality]}`."
                )
            mask = masks[modality]
            mask = mask[..., 0] if mask.dim() == 3 else mask
            positions = mask.reshape(-1).nonzero().squeeze(1)
            rows = count_grouped_rows(pending)
            if positions.numel() != rows:
                raise RuntimeError(
                    f"LLaVA-Manager: {positions.numel()} {modality} tokens but manager features for {rows}."
                )
            self.positions[modality] = positions
        return result


class _InstanceMethod:
    """Stands in for a method of the patched model and forwards to the runtime. A small object rather than a
    closure so that `copy.deepcopy(model)` gives the copy its own runtime, and `inspect.signature` (which
    `generate()` uses to pick the encoder's arguments) sees the original signature."""

    def __init__(self, runtime: _Runtime, name: str) -> None:
        self.runtime = runtime
        self.name = name

    @property
    def __signature__(self) -> inspect.Signature:
        return _signature(self.runtime.inner, self.name)

    def __call__(self, *args, **kwargs):
        return getattr(self.runtime, self.name)(*args, **kwargs)


_SIGNATURES: dict[tuple[type, str], inspect.Signature] = {}


def _signature(inner: nn.Module, name: str) -> inspect.Signature:
    """The signature of the class's method without `self`, computed once per class."""
    key = (type(inner), name)
    if key not in _SIGNATURES:
        signature = inspect.signature(getattr(type(inner), name))
        _SIGNATURES[key] = signature.replace(parameters=list(signature.parameters.values())[1:])
    return _SIGNATURES[key]


def _find_runtime(model: nn.Module) -> _Runtime | None:
    for module in model.modules():
        runtime = module.__dict__.get(_RUNTIME_ATTR)
        if runtime is not None:
            return runtime
    return None


def _runtime_of(model: nn.Module) -> _Runtime:
    runtime = _find_runtime(model)
    if runtime is None:
        raise ValueError(f"This {type(model).__name__} has no managers; call apply_manager(model) first.")
    return runtime
