"""Preemption: SIGTERM (or SIGUSR1) saves a complete checkpoint at the next step boundary and ends the run with
`REQUEUE_STATUS`, so that the job is requeued and resumes exactly.

Slurm and Kubernetes send SIGTERM before they stop a job (Slurm's `--signal=TERM@SECONDS` earlier, to leave time to
save). `PreemptionCallback` catches it in every process; at the end of each optimizer step the processes agree
whether any of them was signalled (one tiny all-reduce), and if so the Trainer saves `checkpoint-N` (committed, see
runtime/commits.py) and stops. `train.run` then neither exports the model as final nor scores it, and the recipe's
`main` exits with `REQUEUE_STATUS` (75, EX_TEMPFAIL: "try again later"). `--resume_from_checkpoint last` continues
from that checkpoint exactly.

How long the launchers wait between forwarding the signal and killing: torchrun (and `accelerate launch` with more
than one process, which runs torchrun) 30 s, the DeepSpeed launcher 30 s, `accelerate launch` with one process 5 s.
The current step and the save must fit in that time, or in the lead time Slurm's `--signal` gives.
"""

from __future__ import annotations

import logging
import signal

import torch
import torch.distributed as dist
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

REQUEUE_STATUS = 75  # sysexits.h EX_TEMPFAIL
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(RuntimeError):
    """The run was stopped by a signal and saved a checkpoint to resume from."""


class PreemptionCallback(TrainerCallback):
    """Catches `SIGNALS` during `train()`; at a step boundary where any process caught one, saves and stops.
    `stopped_at` is then the step of the saved checkpoint (None while the run was not preempted)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.stopped_at: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            logger.warning(
                "received %s: saving a checkpoint at the end of this step, then stopping", signal.Signals(signum).name
            )
        self.received = signum

    def on_train_begin(self, args, state, control, **kwargs):
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        except ValueError:  # not the main thread: signals stay as they are
            self._previous = {}

    def on_train_end(self, args, state, control, **kwargs):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        if self.stopped_at is not None:
            logger.warning(
                "preempted: stopped after step %d with %s/checkpoint-%d saved; nothing of the run is exported, "
                "scored or evaluated. Requeue the job with --resume_from_checkpoint last to continue exactly (exit "
                "status %d)",
                self.stopped_at,
                args.output_dir,
                self.stopped_at,
                REQUEUE_STATUS,
            )

    def _agreed(self, model) -> bool:
        flag = self.received is not None
        if dist.is_available() and dist.is_initialized():
            device = next(model.parameters()).device if model is not None else torch.device("cpu")
            tensor = torch.tensor([int(flag)], device=device)
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
            flag = bool(tensor.item())
        return flag

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self._agreed(model):
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control
