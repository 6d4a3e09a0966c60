"""The HF Trainer, with per-module learning rates, manager weight norms in the logs and a count of skipped samples."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback

from ..core.patch import get_managers
from ..runtime.trainer import RunTrainer
from . import fsdp
from .data import BATCH_INFO
from .parts import parameter_groups
from .shards import CorruptDataError
from .throughput import ThroughputCallback

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def gathered(params):
    """Full values of parameters that ZeRO-3 partitions (a no-op otherwise)."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            yield
    else:
        yield


class ManagerNormCallback(TrainerCallback):
    """Adds each manager's weight norm, `manager_norm/layer_<l>`, to the training logs: the loggers that come after
    it (the trainer puts it first) and `trainer_state.json` see them."""

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if logs is None or model is None or "loss" not in logs:
            return
        managers = get_managers(model)
        with gathered([m.weight for m in managers]):
            # full_tensor: FSDP2 shards them (DTensors; the norm of a shard would be logged otherwise)
            norms = {
                f"manager_norm/layer_{m.layer_idx}": round(float(fsdp.full_tensor(m.weight.detach()).float().norm()), 6)
                for m in managers
            }
        logs.update(norms)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(norms)  # the trainer recorded the logs before calling back


class ZeroStaleGradientsCallback(TrainerCallback):
    """Zeroes DeepSpeed ZeRO-3's gradient partitions after every optimizer step.

    ZeRO-3 (deepspeed 0.19, `runtime/zero/stage3.py`) keeps each parameter's reduced gradient partition in one flat
    buffer, `grad_partitions_flat_buffer`, and a step writes only the partitions of the parameters that got a
    gradient. A parameter with no gradient in a step, such as the vision tower and the managers in a text-only step,
    would be updated with its gradient of an earlier step. A resumed run starts from a zeroed buffer, so it did not
    match the run it continued (seen with `--group_by_modality_length`, which gives whole text-only steps). Zeroed, a
    parameter without a gradient gets a zero one, as under ZeRO-2."""

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's DeepSpeedOptimizerWrapper
        # upstream: see llava_manager/upstream.py
        buffer = getattr(inner, "grad_partitions_flat_buffer", None)
        if isinstance(buffer, torch.Tensor):
            buffer.zero_()


class SkipReport:
    """Samples the data set skipped, with their reasons. On resume, `restore` puts the records of the run up to the
    checkpoint in front (on the main process only, so that gathering the processes' records counts them once)."""

    FILE = "data_skipped.json"  # in the output folder at the end, and in every checkpoint (with the records)

    def __init__(self) -> None:
        self.records: list[dict] = []

    def restore(self, checkpoint: str | Path, main_process: bool) -> None:
        """The records of the whole run up to `checkpoint` (its `FILE`), kept by the main process. A checkpoint
        without it is one written before the report was checkpointed: its earlier skips are unknown, and `summary`
        says so."""
        path = Path(checkpoint) / self.FILE
        if not path.is_file():
            self.unknown_before = Path(checkpoint).name
            logger.warning(
                "%s has no %s: the samples skipped before it are not known; the report counts those after it",
                checkpoint,
                self.FILE,
            )
            return
        if main_process:
            self.records = json.loads(path.read_text())["records"] + self.records

    def add(self, records: list[dict]) -> None:
        for r in records:
            logger.warning("skipped sample %s (id %s): %s", r["index"], r["id"], r["detail"])
        self.records += records

    unknown_before: str | None = None  # the checkpoint resumed from, when it held no report

    def summary(self, with_records: bool = False) -> dict:
        reasons = Counter(r["reason"] for r in self.records)
        summary = {
            "skipped": len(self.records),
            "by_reason": dict(reasons),
            "samples": sorted({(r["index"], r["id"], r["reason"]) for r in self.records}),
        }
        if self.unknown_before:
            summary["unknown_before"] = self.unknown_before
        if with_records:
            summary["records"] = self.records
        return summary


class ManagerTrainer(RunTrainer):
    """`RunTrainer` (runtime/trainer.py: committed checkpoints, non-finite steps, preemption, strict checkpoint
    loading) with learning rates per module (vision tower, managers), the manager norm callback first in line (so
    that every logger gets the norms), throughput next to them (tokens/s, samples/s, padding fraction, MFU on a GPU:
    `throughput.ThroughputCallback`, fed by `compute_loss`), and skipped samples counted in the logs and checkpoints.

    Resuming and `load_best_model_at_end` without DeepSpeed or FSDP read the checkpoint through the model's own key
    conversion (`checkpoint.load_checkpoint_weights`): the Trainer's raw `load_state_dict(strict=False)` would find
    no key of a LLaVA checkpoint and only warn. Any missing or unexpected key is an error here.
    """

    lr_flags = "the per-module learning rates (--vision_tower_lr, --manager_lr)"

    def __init__(
        self,
        *args,
        vision_tower_lr: float | None = None,
        manager_lr: float | None = None,
        peak_tflops: float | None = None,
        skip_nonfinite_steps: int = 0,
        sampling=None,
        stage: str | None = None,
        **kwargs,
    ):
        per_module = bool(vision_tower_lr or manager_lr)
        self.sampling = sampling  # --group_by_modality_length / --token_budget (SamplingOptions); None: the default
        super().__init__(*args, skip_nonfinite_steps=skip_nonfinite_steps, per_module_lrs=per_module, **kwargs)
        self.vision_tower_lr, self.manager_lr = vision_tower_lr, manager_lr
        self.skips = SkipReport()
        self.callback_handler.callbacks.insert(0, ManagerNormCallback())
        # tokens/s, samples/s, padding fraction, MFU (throughput.py); fed by compute_loss
        self.throughput = ThroughputCallback(peak_tflops=peak_tflops)
        self.throughput.stage = stage  # recorded in throughput.json, for `python -m llava_manager.cost`
        self.callback_handler.callbacks.insert(1, self.throughput)
        self.add_callback(ZeroStaleGradientsCallback())

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        fsdp.setup(self)  # FSDP2: the wrap classes of this model's family, and FSDP on CPU (gloo); else a no-op

    def _save_optimizer_and_scheduler(self, output_dir):
        if self.is_fsdp_enabled:  # FSDP2 checkpoints leave out parameters without optimizer state (fsdp.py)
            fsdp.complete_optimizer_state(self.optimizer)
        super()._save_optimizer_and_scheduler(output_dir)

    def optimizer_groups(self, model: nn.Module) -> list[dict]:
        decay = set(self.get_decay_parameter_names(model))
        return parameter_groups(
            model, self.args.learning_rate, self.args.weight_decay, decay, self.vision_tower_lr, self.manager_lr
        )

    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training:  # training micro-batches only (prediction_step comes here too, in eval mode)
            self.throughput.count(inputs)  # reads the packed batch's token accounting in BATCH_INFO (packing.py)
        self.skips.add(inputs.pop(BATCH_INFO, {}).get("skipped", []))  # what is not a model input (data.py)
        return super().compute_loss(model, inputs, *args, **kwargs)  # RunTrainer watches the loss

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        try:
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        except CorruptDataError as error:  # the data names the file; the step is known here
            step = self.state.global_step + 1  # the loader reads a batch ahead: this step's batch or the next one's
            raise CorruptDataError(f"step {step} (reading its batch or the next): {error}") from error

    def prediction_step(self, model, inputs, *args, **kwargs):
        inputs.pop(BATCH_INFO, None)
        return super().prediction_step(model, inputs, *args, **kwargs)

    def log(self, logs, *args, **kwargs):
        if "loss" in logs:  # every process logs at the same steps: the count is the whole run's
            count = torch.tensor(len(self.skips.records))
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                count = count.to(self.args.device)
                torch.distributed.all_reduce(count)
            logs["data_skipped"] = int(count)
            if self.nonfinite.skip_limit:
                logs["nonfinite_skipped"] = len(self.nonfinite.skipped)  # the same on every process
            # upstream: see llava_manager/upstream.py
            if math.isfinite(logs["loss"]):
                self._finite_loss_total = self._total_loss_scalar
            else:  # a skipped step's NaN: the Trainer's reset by subtraction would keep it in every later log
                self._tr_loss.zero_()
                self._total_loss_scalar = getattr(self, "_finite_loss_total", 0.0)
        super().log(logs, *args, **kwargs)

    def gather_skips(self, with_records: bool = False) -> dict:
        """The skip summary of all ranks, the run before the checkpoint it resumed from included (collective: call
        on every rank)."""
        records = [self.skips.records]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            records = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(records, self.skips.records)
        total = SkipReport()
        total.records = [r for rank in records for r in rank]
        total.unknown_before = self.skips.unknown_before
        return total.summary(with_records)

    def save_run_state(self, folder: Path) -> None:
        """The skip report so far, records included, goes into each checkpoint, beside the base's run state."""
        report = self.gather_skips(with_records=True)
        if self.args.should_save:
            (folder / SkipReport.FILE).write_text(json.dumps(report, indent=1))
        super().save_run_state(folder)

    def restore_run_state(self, checkpoint) -> None:
        self.skips.restore(checkpoint, self.is_world_process_zero())
        super().restore_run_state(checkpoint)

    # -- Data order (sampling.py): --group_by_modality_length, --token_budget ------------------------------------

    sampling = None  # a `sampling.SamplingOptions` (the constructor's); None: the Trainer's own sampler

    def _sampling_lengths(self, dataset) -> list[int]:
        """The signed estimated lengths of `dataset` (`lengths.dataset_lengths`), computed once."""
        from . import lengths

        cached = getattr(self, "_sampling_cache", None)
        if cached is None or cached[0] is not dataset:
            if not hasattr(dataset, "__len__") or isinstance(dataset, torch.utils.data.IterableDataset):
                raise ValueError(
                    "--group_by_modality_length and --token_budget order a data set with a length; "
                    f"{type(dataset).__name__} is streamed (an IterableDataset): drop those flags."
                )
            if self.args.train_sampling_strategy != "random":
                raise ValueError(
                    f"--train_sampling_strategy {self.args.train_sampling_strategy} and "
                    "--group_by_modality_length / --token_budget both choose the data order: keep one."
                )
            cached = self._sampling_cache = (
                dataset,
                lengths.dataset_lengths(dataset, self.sampling.image_token_estimate),
            )
        return cached[1]

    def _follow_epochs(self, sampler) -> None:
        """Have `sampling.SamplerEpochCallback` set `sampler`'s epoch at each epoch's start."""
        from . import sampling

        callback = next(
            (c for c in self.callback_handler.callbacks if isinstance(c, sampling.SamplerEpochCallback)), None
        )
        if callback is None:
            callback = sampling.SamplerEpochCallback()
            self.add_callback(callback)
        callback.sampler = sampler

    # upstream: see llava_manager/upstream.py
    def _get_train_sampler(self, train_dataset=None):
        """`--group_by_modality_length` (without a token budget): `sampling.ModalityLengthGroupedSampler`, in units
        of world size x per-device batch that accelerate deals to the processes batch by batch."""
        from . import sampling

        options = self.sampling
        if options is None or not options.group_by_modality_length or options.token_budget is not None:
            return super()._get_train_sampler(train_dataset)
        dataset = self.train_dataset if train_dataset is None else train_dataset
        sampler = sampling.ModalityLengthGroupedSampler(
            self._sampling_lengths(dataset),
            self._train_batch_size,
            self.accelerator.num_processes,
            sampling.sampling_seed(self.args),
        )
        self._follow_epochs(sampler)
        return sampler

    def get_train_dataloader(self):
        """`--token_budget`: batches of varying size from `sampling.TokenBudgetBatchSampler` (per modality with
        `--group_by_modality_length`), as the loader's `batch_sampler`; otherwise the Trainer's loader."""
        options = self.sampling
        if options is None or options.token_budget is None:
            return super().get_train_dataloader()
        from functools import partial

        from torch.utils.data import DataLoader
        from transformers.trainer_utils import seed_worker

        from . import sampling

        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        dataset = self.train_dataset
        batches = sampling.TokenBudgetBatchSampler(
            self._sampling_lengths(dataset),
            options.token_budget,
            options.token_budget_mode,
            options.group_by_modality_length,
            sampling.sampling_seed(self.args),
            self.args.dataloader_drop_last,
            world_size=self.accelerator.num_processes,
        )
        self._follow_epochs(batches)
        args = self.args
        loader = DataLoader(
            dataset,
            batch_sampler=batches,
            collate_fn=self._get_collator_with_removed_columns(self.data_collator, description="training"),
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers,
            multiprocessing_context=args.dataloader_multiprocessing_context,
            prefetch_factor=args.dataloader_prefetch_factor,
            in_order=args.dataloader_in_order,
            worker_init_fn=partial(seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index),
        )
        logger.info(
            "token budget: %d batches an epoch for %d samples (%s, at most %d estimated tokens a batch)",
            len(batches),
            len(dataset),
            options.token_budget_mode,
            options.token_budget,
        )
        return self.accelerator.prepare(loader)
