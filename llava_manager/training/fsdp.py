"""FSDP2 (`torch.distributed.fsdp.fully_shard`, through accelerate) as the alternative to DeepSpeed ZeRO.

The recipes run under FSDP2 in either of two ways, for every stage (`recipes/fsdp2.yaml`, `recipes/fsdp2.json`):

    accelerate launch --config_file recipes/fsdp2.yaml recipes/stage2.py ...
    torchrun --nproc_per_node 8 recipes/stage2.py --fsdp --fsdp_config recipes/fsdp2.json ...

What this module adds to the Trainer's own FSDP support (`setup`, called when the Trainer has made its accelerator):

- The wrap classes of the model at hand. The configs ask for a transformer-based auto wrap without naming classes: a
  class list holds for one family only (accelerate refuses a name that is not in the model), and accelerate's default,
  the model's `_no_split_modules`, names classes that a LLaVA model does not build (`CLIPTextEmbeddings`,
  `SiglipTextEmbeddings`), so it fails for every family. Here each decoder layer of the LLM and each encoder layer of
  the vision tower becomes an FSDP unit (`wrap_classes`: Qwen2DecoderLayer + SiglipEncoderLayer for LLaVA-OneVision,
  LlamaDecoderLayer or MistralDecoderLayer + CLIPEncoderLayer for the others). accelerate puts the input embeddings
  and the LM head in units of their own; everything else (vision embeddings, projector, image newline, and the
  managers) stays in the root unit: the managers are a few thousand numbers each, called from the decoder layers'
  pre-hooks during the forward; in the root unit they are gathered once per step, not once per managed layer.
- FSDP2 on a machine without a GPU (the gloo backend). torch runs `fully_shard` on CPU with gloo (it has
  all_gather_into_tensor and reduce_scatter_tensor), but accelerate only turns FSDP on for accelerator devices: on
  CPU it sets up plain multi-process data parallelism (`DistributedType.MULTI_CPU`) and drops the FSDP plugin, so
  the Trainer would silently train with DDP. `prepare` (before the `TrainingArguments`) gives the run a CPU process
  group and `setup` switches accelerate's state to FSDP with the plugin, as accelerate does itself for GPUs. Training,
  FULL and SHARDED checkpoints, the export and exact resume then work at world size 2
  (tests/training/test_fsdp.py). Nothing changes on a GPU machine.
- FSDP's own activation checkpointing (`fsdp_activation_checkpointing: true`) is refused: it wraps each decoder layer
  in torch's `CheckpointWrapper`, which runs the layer's forward pre-hooks inside the checkpoint; the managers add
  their term in such a hook and only during the forward (the token positions are gone by the backward), so the
  recomputation differs from the forward and torch raises "A different number of tensors was saved during the
  original forward and recomputation". The Trainer's `--activation_checkpointing` (the stages' default) checkpoints
  the layers' `forward` only, with the hooks outside, and works with FSDP2.
- `complete_optimizer_state`, before each checkpoint: torch's FSDP2 optimizer checkpoint
  (`get_optimizer_state_dict`) leaves out the state of trainable parameters that never had a gradient, and its
  loader then refuses the checkpoint ("Missing optimizer state for parameter 'model.vision_tower.post_layernorm.
  weight' in checkpoint"; pytorch/pytorch#192202). A LLaVA model has such parameters: the vision tower's last
  layers after the feature layer and its post layernorm, which the LLaVA forward never reaches. They get the state a
  fresh optimizer would give them, so resuming stays exact.
- `full_state_dict`: the export at the end of a run is a full `save_pretrained` directory (managers included) with
  either state-dict type; with `SHARDED_STATE_DICT` the Trainer would save no model at all at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch
from torch import nn

from ..runtime.cpu_distributed import free_port

logger = logging.getLogger(__name__)

_AC_REFUSED = (
    "FSDP's own activation checkpointing (fsdp_config activation_checkpointing / fsdp_activation_checkpointing: "
    "true) runs each decoder layer's forward pre-hooks inside the checkpoint; the managers add their term in such a "
    "hook, during the forward only, so the recomputation differs and torch stops with 'A different number of tensors "
    "was saved during the original forward and recomputation'. Turn it off and use the Trainer's "
    "--activation_checkpointing true (the stages' default), which checkpoints the layers' forward with the hooks "
    "outside and works with FSDP2."
)


def wants_fsdp(argv: list[str]) -> bool:
    """`--fsdp` on the command line, or a run started by `accelerate launch` with an FSDP config."""
    flag = any(arg == "--fsdp" or arg.startswith("--fsdp=") for arg in argv)
    return flag or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def prepare(argv: list[str]) -> dict:
    """Call before the `TrainingArguments` are built; returns defaults for them.

    With FSDP requested: a plain `python recipe.py --fsdp ...` (no launcher) gets a world of one, which the Trainer
    needs for FSDP; on a machine without a GPU the run uses the CPU and its gloo process group (`use_cpu`), and
    `setup` turns FSDP on there."""
    if not wants_fsdp(argv):
        return {}
    if "LOCAL_RANK" not in os.environ:  # no launcher: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    return {} if torch.cuda.is_available() else {"use_cpu": True}


def wrap_classes(model: nn.Module) -> list[str]:
    """Names of the classes that become FSDP units: the LLM's decoder layers and the vision tower's encoder layers,
    found through the model's family (any of the four, patched or not)."""
    from ..families import family_of

    adapter, inner = family_of(model)
    layers = list(adapter.decoder_layers(inner)) + list(adapter.vision_layers(inner))
    # upstream: see llava_manager/upstream.py
    return sorted({type(getattr(layer, "_checkpoint_wrapped_module", layer)).__name__ for layer in layers})


def _plugin_from_args(trainer):
    from accelerate.utils import FullyShardedDataParallelPlugin

    if trainer.args.fsdp_plugin_args is not None:  # --fsdp / --fsdp_config
        return FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    return FullyShardedDataParallelPlugin()  # accelerate launch: the FSDP_* environment of the config


def _enable_on_cpu(trainer) -> bool:
    """Switch accelerate from CPU data parallelism to FSDP (see the module doc); True when it did."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = trainer.accelerator.state
    requested = trainer.args.fsdp_plugin_args is not None or wants_fsdp([])
    if not requested or state.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = _plugin_from_args(trainer)
    if plugin.fsdp_version != 2:
        raise ValueError(
            "FSDP on a machine without a GPU runs FSDP2 only (fsdp_version: 2, the recipes' configs); "
            "FSDP1 is deprecated in transformers."
        )
    if trainer.accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(trainer.accelerator.mixed_precision)
    # What `AcceleratorState.__init__` does for GPUs; PartialState too, since a later `AcceleratorState()` copies
    # its distributed type from there.
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    # upstream: see llava_manager/upstream.py
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True
    if trainer.args.save_only_model and "SHARDED_STATE_DICT" in str(plugin.state_dict_type):
        raise ValueError("save_only_model option is not compatible with FSDP state dict type 'SHARDED_STATE_DICT'")
    logger.info(
        "FSDP2 on CPU with the %s backend (%d processes)",
        torch.distributed.get_backend(),
        trainer.accelerator.num_processes,
    )
    return True


def setup(trainer) -> None:
    """After the Trainer made its accelerator: FSDP2 on CPU, the wrap classes of this model, the refusals. A no-op
    without FSDP."""
    _enable_on_cpu(trainer)
    if not trainer.is_fsdp_enabled:
        return
    plugin = trainer.accelerator.state.fsdp_plugin
    if plugin.activation_checkpointing:
        raise ValueError(_AC_REFUSED)
    policy = plugin.auto_wrap_policy
    policy = getattr(policy, "func", policy)
    transformer_based = policy is not None and getattr(policy, "__name__", "") == "transformer_auto_wrap_policy"
    if transformer_based and plugin.transformer_cls_names_to_wrap is None:
        plugin.transformer_cls_names_to_wrap = wrap_classes(trainer.model)
    logger.info(
        "FSDP%d: units %s, state dict %s, reshard after forward %s",
        plugin.fsdp_version,
        plugin.transformer_cls_names_to_wrap if transformer_based else policy,
        str(plugin.state_dict_type).rsplit(".", 1)[-1],
        plugin.reshard_after_forward,
    )


@contextlib.contextmanager
def full_state_dict(trainer) -> Iterator[None]:
    """`trainer.save_model()` inside writes the full model (gathered on rank 0) under either FSDP state-dict type; a
    no-op without FSDP or with FULL_STATE_DICT. Collective: enter it on every rank."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None) if trainer.is_fsdp_enabled else None
    if plugin is None or "FULL_STATE_DICT" in str(plugin.state_dict_type):
        yield
        return
    from torch.distributed.fsdp import StateDictType

    previous = plugin.state_dict_type
    plugin.state_dict_type = StateDictType.FULL_STATE_DICT  # all that save_model reads; the gather ignores it
    try:
        yield
    finally:
        plugin.state_dict_type = previous


def complete_optimizer_state(optimizer) -> list[torch.Tensor]:
    """Give every trainable parameter of `optimizer` that has no state yet the state the optimizer would create at its
    first gradient (a step with a zero gradient and a zero learning rate, then the step count back to 0); returns
    those parameters. The parameters do not change, nor does the state of the others. Nothing to do before the first
    step (no state at all: torch initialises it the same way on save)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one
    params = [p for group in inner.param_groups for p in group["params"]]
    missing = [p for p in params if p.requires_grad and not inner.state.get(p)]
    if not missing or not any(inner.state.get(p) for p in params):
        return []
    kept = {p: p.grad for p in params if p.grad is not None}
    lrs = [group["lr"] for group in inner.param_groups]
    try:
        for p in kept:
            p.grad = None
        for p in missing:
            p.grad = torch.zeros_like(p)
        for group in inner.param_groups:
            group["lr"] = torch.zeros_like(group["lr"]) if isinstance(group["lr"], torch.Tensor) else 0.0
        inner.step()
    finally:
        for group, lr in zip(inner.param_groups, lrs):
            group["lr"] = lr
        for p in missing:
            p.grad = None
        for p, grad in kept.items():
            p.grad = grad
    for p in missing:
        state = inner.state[p]
        if "step" in state:
            state["step"] = torch.zeros_like(state["step"]) if isinstance(state["step"], torch.Tensor) else 0
    return missing


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole value of a parameter that FSDP2 shards (a DTensor; collective), else the tensor itself."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
