"""The CPU threads torch uses in a training run (`--cpu_threads`).

torch's intra-op threads wait for each other at the end of every parallel operation, spinning first. When another
process holds the cores, a waiting thread spins on a core the busy thread needs, and a run slows far more than its
share of the CPU. The embedded default's operations are too small to gain from several threads on a CPU, so with no
GPU it runs on one thread: as fast on a quiet machine, and it keeps its share on a busy one
(`benchmarks/busy_machine.py` measures both).
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch

logger = logging.getLogger(__name__)

CHOICES = "auto, or a number of threads >= 1"


def resolve(setting: str, *, embedded_default: bool, accelerator: bool) -> int | None:
    """The thread count `--cpu_threads setting` asks for: None keeps torch's (OMP_NUM_THREADS, else the cores)."""
    if setting == "auto":
        if embedded_default and not accelerator and "OMP_NUM_THREADS" not in os.environ:
            return 1
        return None
    try:
        threads = int(setting)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"--cpu_threads {setting!r}: use {CHOICES}.")
    return threads


@contextlib.contextmanager
def cpu_threads(setting: str, *, embedded_default: bool):
    """Applies `--cpu_threads` for the duration of a run, then gives the process its thread count back; yields the
    count torch uses."""
    before = torch.get_num_threads()
    threads = resolve(setting, embedded_default=embedded_default, accelerator=torch.cuda.is_available())
    if threads is not None:
        torch.set_num_threads(threads)
    if setting != "auto":
        reason = f"--cpu_threads {setting}"
    elif threads == 1:
        reason = "--cpu_threads auto: the embedded default without a GPU"
    else:
        reason = "--cpu_threads auto: torch's default"
    logger.info("CPU threads: %d (%s)", torch.get_num_threads(), reason)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
