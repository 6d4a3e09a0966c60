"""The end of a multi-process run: every process waits for the others, then the process group is closed.

A process that exits with its process group still open can abort in the group's destructor ("terminate called
without an active exception", SIGABRT) while the others are still writing the export, and the launcher then reports
the whole run failed. The recipes' `main` calls `finish` after `run`: `close`, then the requeue status of a preempted
run. A preempted process of a multi-process run leaves without the interpreter's teardown (`os._exit`, logs and
streams flushed first): its checkpoint is saved and the group closed, yet a torch.distributed thread still alive at
teardown has aborted such a process now and then, and the launcher then reported SIGABRT instead of the requeue
status.
"""

from __future__ import annotations

import logging
import sys
from os import _exit  # os._exit: leave without the interpreter's teardown

from transformers import Trainer

from .preemption import REQUEUE_STATUS


def finish(trainer: Trainer) -> None:
    """A recipe's end: `close`, then exit with `preemption.REQUEUE_STATUS` if the run was preempted."""
    close(trainer)
    if trainer.preemption.stopped_at is None:
        return
    if trainer.args.world_size > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        _exit(REQUEUE_STATUS)
    sys.exit(REQUEUE_STATUS)


def close(trainer: Trainer) -> None:
    """Wait for every process, then destroy the process group (nothing happens in a single process)."""
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
