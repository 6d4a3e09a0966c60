"""Liger kernels (https://github.com/linkedin/Liger-Kernel) for the LLM of a LLaVA model: used when installed and
on a GPU, never required. `--use_liger auto` (default) applies them when both hold and says why not otherwise;
`true` makes a missing package or GPU an error; `false` never applies them.

What is applied, and why only that:
- Liger's RMSNorm and SwiGLU MLP, on this model's LLM instance only: `liger_kernel.transformers.
  apply_liger_kernel_to_<llm type>(model=model.model.language_model, ...)` rebinds `forward` of that LLM's norm and
  MLP modules (Qwen2 for LLaVA-OneVision, Llama for LLaVA-1.5 / NeXT-Video, Mistral for LLaVA-NeXT).
- Those functions also replace names in transformers' modeling module (`modeling_qwen2.Qwen2RMSNorm`,
  `Qwen2MLP`, `apply_rotary_pos_emb`), which would change every model built afterwards in the process (an
  evaluation model, a reference model in a test): every global they touch is put back at once. Liger's RoPE exists
  only as such a global, so it is left off.
- No fused linear cross entropy: Liger gives it by replacing the whole `forward` of a `...ForCausalLM` (for the
  LLaVA wrapper only LLaVA-1.5's, and not the OneVision / NeXT ones), which is not the class these models run.
- transformers' own `--use_liger_kernel` is another thing: it patches by the top model type (only `llava` is known
  to Liger, with module-global RoPE and a replaced forward) and is best left off; use `--use_liger`.

`liger_kernel` is imported only inside `apply_liger`, when it is about to be used.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import sys

import torch
from torch import nn

logger = logging.getLogger(__name__)

MODES = ("auto", "true", "false")
# What Liger patches on the LLM instance; rope / cross entropy exist only module-wide (see the module doc).
KERNELS = dict(rms_norm=True, swiglu=True, rope=False, cross_entropy=False, fused_linear_cross_entropy=False)


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def _why_not(mode: str) -> str | None:
    if mode == "false":
        return "--use_liger false"
    if not torch.cuda.is_available():
        return "no CUDA GPU (Liger's kernels are Triton GPU kernels)"
    if not liger_available():
        return "liger_kernel is not installed (pip install liger-kernel)"
    return None


def apply_liger(model: nn.Module, mode: str = "auto") -> list[str]:
    """Apply Liger's RMSNorm and SwiGLU to `model`'s LLM in place when `mode` and the machine allow; returns the
    kernels applied (empty: nothing was done, and the log says why)."""
    mode = str(mode).lower()
    if mode not in MODES:
        raise ValueError(f"--use_liger {mode!r}: use one of {', '.join(MODES)}.")
    reason = _why_not(mode)
    if reason is not None:
        if mode == "true":
            raise RuntimeError(f"--use_liger true, but {reason}.")
        logger.info("Liger kernels not used: %s", reason)
        return []
    llm = model.model.language_model
    llm_type = llm.config.model_type
    from liger_kernel.transformers import monkey_patch

    apply_fn = monkey_patch.MODEL_TYPE_TO_APPLY_LIGER_FN.get(llm_type)
    if apply_fn is None:
        if mode == "true":
            raise RuntimeError(f"--use_liger true, but Liger has no kernels for a {llm_type} LLM.")
        logger.info("Liger kernels not used: Liger has none for a %s LLM", llm_type)
        return []
    accepted = inspect.signature(apply_fn).parameters
    kwargs = {k: v for k, v in KERNELS.items() if k in accepted}
    with _module_globals_restored(type(llm).__module__):
        apply_fn(model=llm, **kwargs)
    applied = [k for k, v in kwargs.items() if v]
    logger.info("Liger kernels applied to the %s LLM: %s", llm_type, ", ".join(applied))
    return applied


class _module_globals_restored:
    """Put back every global of the named modules (and the loss module's cross entropy) that the block rebinds."""

    def __init__(self, *module_names: str) -> None:
        names = [*module_names, "transformers.loss.loss_utils"]
        self.modules = [sys.modules.get(n) or importlib.import_module(n) for n in names]

    def __enter__(self):
        self.saved = [dict(vars(m)) for m in self.modules]
        self.saved_ce = torch.nn.functional.cross_entropy
        return self

    def __exit__(self, *exc) -> None:
        for module, saved in zip(self.modules, self.saved):
            namespace = vars(module)
            for key in [k for k in namespace if k not in saved]:
                del namespace[key]
            for key, value in saved.items():
                if namespace.get(key) is not value:
                    namespace[key] = value
        torch.nn.functional.cross_entropy = self.saved_ce
