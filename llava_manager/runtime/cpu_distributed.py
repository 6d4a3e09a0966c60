"""DeepSpeed on a machine without a GPU: the one place that makes the recipes run there. Does nothing with a GPU.

On CPU DeepSpeed picks its CPU accelerator and the gloo backend by itself, but two things need help:
- a plain `python recipe.py --deepspeed ...` has no launcher to set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
  MASTER_PORT, and DeepSpeed then tries MPI discovery; we set a single-process world;
- accelerate (under the Trainer) only counts processes when it knows the backend; with DeepSpeed on CPU it does not,
  so every rank thinks it is alone and DeepSpeed's batch-size check fails. We set up accelerate's state ourselves
  with the gloo backend and tell the Trainer to use it (`accelerator_config.use_configured_state`).
"""

from __future__ import annotations

import os
import socket

import torch


def wants_deepspeed(argv: list[str]) -> bool:
    return any(arg == "--deepspeed" or arg.startswith("--deepspeed=") for arg in argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(argv: list[str]) -> dict:
    """Call before the `TrainingArguments` are built. Returns defaults for them (empty unless on CPU with DeepSpeed)."""
    if torch.cuda.is_available() or not wants_deepspeed(argv):
        return {}
    from accelerate import PartialState

    if "LOCAL_RANK" not in os.environ:  # no launcher: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # how accelerate learns that DeepSpeed owns the process group
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    return {"accelerator_config": {"use_configured_state": True}}
