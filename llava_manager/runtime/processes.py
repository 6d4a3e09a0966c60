"""The end of a multi-process run: every process waits for the others, then the process group is closed.

A process that exits with its process group still open can abort in the group's destructor ("terminate called
without an active exception", SIGABRT) while the others are still writing the export, and the launcher then reports
the whole run failed. The recipes' `main` calls `close` after `run`, which returns with the export written.
"""

from __future__ import annotations

from transformers import Trainer


def close(trainer: Trainer) -> None:
    """Wait for every process, then destroy the process group (nothing happens in a single process)."""
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
