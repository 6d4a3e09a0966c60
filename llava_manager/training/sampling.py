"""Training order at scale: image and text-only samples in separate length-sorted groups
(`--group_by_modality_length`, as LLaVA-NeXT) and batches under a token budget (`--token_budget`).

Both orders are a pure function of (estimated lengths, seed, epoch): no global RNG, no state carried between epochs.
A fresh process with the same data, seed and epoch yields the same indices, so the Trainer's resumption (rebuild the
loader, `set_epoch`, skip the first N batches with `accelerate.skip_first_batches`) lands on exactly the samples an
uninterrupted run would have seen next. (LLaVA-NeXT draws its modality groups from the global torch RNG
(`generator=None`), whose state differs after a restart, so its order is not resumable.)

Lengths: estimated from the records by `lengths.dataset_lengths` (one signed int a sample: + for samples with
images, - for text-only, as LLaVA-NeXT's), without opening an image or tokenising the whole set.

How the Trainer uses them (`ManagerTrainer._get_train_sampler`, `.get_train_dataloader`):

- `ModalityLengthGroupedSampler` is an ordinary index sampler. The Trainer batches it with
  `per_device_train_batch_size` and accelerate deals the batches to the processes in turn (batch k to rank
  k % world_size, `BatchSamplerShard`). A "unit" is world_size x batch_size consecutive indices, one batch a rank:
  every unit holds one modality, its samples of similar length (sorted within mega-groups of up to 50 units, as
  transformers' `LengthGroupedSampler`) and spread over the ranks so their lengths balance. Units of both modalities
  are shuffled together, the unit with the longest sample first (an out-of-memory shows at once).
  One process: every index once an epoch; each modality's leftover (fewer than a unit) goes last, image samples then
  text-only, so at most one batch of an epoch mixes the two (LLaVA-NeXT's "additional batch").
  Several processes: no step may give image samples to some ranks and none to others. The HF LLaVA models run the
  vision tower only for a batch with images, so its gradients would exist on some ranks only: DeepSpeed ZeRO-2 then
  fails with a collective mismatch (seen on CPU, 2 ranks; the Trainer's random order hits it too, at small
  per-device batches). So each modality is filled up to whole units with repeats of its own first samples of the
  epoch (as torch's `DistributedSampler` pads; fewer than a unit a modality) and no batch mixes; the epoch is then
  whole rounds, so accelerate adds no filling of its own. (Plain DDP is stricter: with `find_unused_parameters`
  off, the Trainer's default under activation checkpointing, any step without images on a rank fails, even on all
  ranks at once; text-only data under DDP needs `--ddp_find_unused_parameters true`, whatever the order.)
  Gradient accumulation takes consecutive batches: each micro-batch (on every rank) is of one modality, the
  micro-batches of one optimizer step may differ.
- `TokenBudgetBatchSampler` yields batches of varying size: in each group (each modality with
  `--group_by_modality_length`, else all samples) the samples are sorted by length (ties in a seeded random order)
  and cut greedily so that a batch's cost stays within the budget: `padded` (the padding collator):
  batch size x longest length; `packed` (padding-free packing): the sum of the lengths. A sample alone over the
  budget gets a batch of its own (counted in a warning). The batches are made once; each epoch shuffles their order,
  so the number of batches per epoch, hence the Trainer's step count and schedule, is fixed;
  `per_device_train_batch_size` is unused. It is the loader's `batch_sampler` (own `get_train_dataloader`);
  accelerate deals whole batches to the processes in turn. Several processes: the batches go in rounds of one batch
  a rank, all with image samples or all without, each kind filled up to whole rounds with repeats of its own batches
  (same reason as above). With gradient accumulation a step takes `gradient_accumulation_steps` such batches a
  process; the loss is averaged over the label tokens of the whole step (the Trainer's `num_items_in_batch`), so
  batches of varying size weigh each token alike.

Epochs: besides the Trainer's `set_epoch` (which does not reach a sampler under `skip_first_batches` in a
multi-process run), `SamplerEpochCallback` sets the epoch from the trainer state at each epoch's start.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

MODES = ("padded", "packed")
_SALT = 0x11A7A  # keeps these streams apart from other users of (seed, epoch)


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    """A generator for (seed, epoch, stream) alone: no collision between (seed 1, epoch 0) and (seed 0, epoch 1)."""
    return np.random.default_rng([_SALT, stream, seed % 2**63, epoch])


# ---------------------------------------------------------------------------------------------------------------------
# Modality-grouped order


def _check_lengths(lengths) -> np.ndarray:
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1 or not len(lengths):
        raise ValueError("lengths: a non-empty list of signed ints (+ with images, - text-only).")
    if (lengths == 0).any():
        raise ValueError(
            f"lengths: sample {int(np.flatnonzero(lengths == 0)[0])} has length 0; a length's sign "
            f"tells its modality (+ with images, - text-only), so none may be 0."
        )
    return lengths


def modality_grouped_indices(
    lengths: Sequence[int],
    batch_size: int,
    world_size: int = 1,
    seed: int = 0,
    epoch: int = 0,
    mega_batch_mult: int | None = None,
) -> list[int]:
    """The epoch's order in units of `world_size * batch_size` consecutive indices, each of one modality (sign of
    `lengths`), of similar lengths, spread over the ranks; units shuffled, the one with the longest sample first.
    One process: every index once, each modality's leftover (fewer than a unit) last, image samples then text-only
    (the only batch where modalities may meet). Several: each modality filled up to whole units with repeats of its
    own first samples (see the module docstring). A pure function of its arguments. `mega_batch_mult`: units a
    length-sorted mega-group spans (default: as transformers, min(samples // (4 units), 50), at least 1)."""
    if batch_size < 1 or world_size < 1:
        raise ValueError(f"batch_size ({batch_size}) and world_size ({world_size}) must be at least 1.")
    lengths = _check_lengths(lengths)
    sizes = np.abs(lengths)
    rng = _rng(seed, epoch, stream=1)
    unit = batch_size * world_size
    units, leftovers = [], []
    for group in (np.flatnonzero(lengths > 0), np.flatnonzero(lengths < 0)):
        order = group[rng.permutation(len(group))]
        if world_size > 1 and len(order) % unit:
            order = np.concatenate([order, np.resize(order, unit - len(order) % unit)])
        whole = len(order) // unit * unit
        mega = unit * (mega_batch_mult or max(1, min(len(order) // (unit * 4), 50)))
        for start in range(0, whole, mega):
            chunk = order[start : min(start + mega, whole)]
            chunk = chunk[np.argsort(-sizes[chunk], kind="stable")]
            for u in range(0, len(chunk), unit):
                block = chunk[u : u + unit]  # longest first: rank r's batch takes every world_size-th
                units.append(np.concatenate([block[r::world_size] for r in range(world_size)]))
        rest = order[whole:]
        leftovers.append(rest[np.argsort(-sizes[rest], kind="stable")])
    units = [units[i] for i in rng.permutation(len(units))]
    if units:
        longest = int(np.argmax([sizes[u].max() for u in units]))
        units[0], units[longest] = units[longest], units[0]
    return np.concatenate(units + leftovers).tolist()


class ModalityLengthGroupedSampler(Sampler[int]):
    """`modality_grouped_indices` for the epoch set by `set_epoch` (the Trainer calls it; see the module docstring
    for the batching by the Trainer and accelerate)."""

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        world_size: int = 1,
        seed: int = 0,
        mega_batch_mult: int | None = None,
    ):
        self.lengths = _check_lengths(lengths)
        self.batch_size, self.world_size, self.seed = batch_size, world_size, seed
        self.mega_batch_mult = mega_batch_mult
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Indices an epoch: the samples, with several processes filled up to whole units a modality."""
        if self.world_size == 1:
            return len(self.lengths)
        unit = self.batch_size * self.world_size
        return sum(-(-int(n) // unit) * unit for n in ((self.lengths > 0).sum(), (self.lengths < 0).sum()))

    def __iter__(self) -> Iterator[int]:
        return iter(
            modality_grouped_indices(
                self.lengths, self.batch_size, self.world_size, self.seed, self.epoch, self.mega_batch_mult
            )
        )


# ---------------------------------------------------------------------------------------------------------------------
# Token budget


def batch_cost(sizes: Sequence[int], mode: str = "padded") -> int:
    """Tokens a batch of samples of `sizes` tokens takes: `padded`, batch size x longest; `packed`, the sum."""
    if mode not in MODES:
        raise ValueError(f"token budget mode {mode!r}: use one of {MODES}.")
    return len(sizes) * max(sizes) if mode == "padded" else int(sum(sizes))


def token_budget_batches(
    lengths: Sequence[int],
    budget: int,
    mode: str = "padded",
    group_by_modality: bool = False,
    seed: int = 0,
    max_batch_size: int | None = None,
) -> list[list[int]]:
    """Batches of indices whose `batch_cost` stays within `budget`, every index once: within each group (each
    modality with `group_by_modality`, else all) the samples sorted longest first (equal lengths in a seeded order)
    and cut greedily; a sample alone over the budget is a batch of its own. At most `max_batch_size` samples a batch
    when given."""
    if budget < 1:
        raise ValueError(f"token budget {budget}: must be a positive number of tokens.")
    batch_cost([1], mode)  # check the mode
    lengths = _check_lengths(lengths)
    sizes = np.abs(lengths)
    ties = _rng(seed, 0, stream=2).permutation(len(lengths))
    groups = (
        (np.flatnonzero(lengths > 0), np.flatnonzero(lengths < 0)) if group_by_modality else (np.arange(len(lengths)),)
    )
    batches = []
    for group in groups:
        order = group[np.lexsort((ties[group], -sizes[group]))]
        batch, longest, total = [], 0, 0
        for i, size in zip(order.tolist(), sizes[order].tolist()):
            cost = (len(batch) + 1) * max(longest, size) if mode == "padded" else total + size
            if batch and (cost > budget or (max_batch_size and len(batch) >= max_batch_size)):
                batches.append(batch)
                batch, longest, total = [], 0, 0
            batch.append(i)
            longest, total = max(longest, size), total + size
        if batch:
            batches.append(batch)
    return batches


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """`token_budget_batches`, made once, in an order shuffled per epoch (`set_epoch`). With `world_size` > 1 the
    batches go in rounds of `world_size` (one a rank, dealt by accelerate) whose batches all have image samples or
    all have none, each kind filled up to whole rounds with repeats of its own first batches (see the module
    docstring). `batch_size` is None: accelerate then deals these batches of varying size whole."""

    batch_size = None  # read by accelerate's BatchSamplerShard: batches of varying size

    def __init__(
        self,
        lengths: Sequence[int],
        budget: int,
        mode: str = "padded",
        group_by_modality: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        max_batch_size: int | None = None,
        world_size: int = 1,
    ):
        if world_size < 1:
            raise ValueError(f"world_size ({world_size}) must be at least 1.")
        self.lengths = _check_lengths(lengths)
        self.budget, self.mode, self.seed, self.drop_last = budget, mode, seed, drop_last
        self.group_by_modality, self.world_size = group_by_modality, world_size
        self.batches = token_budget_batches(self.lengths, budget, mode, group_by_modality, seed, max_batch_size)
        over = [b for b in self.batches if len(b) == 1 and abs(int(self.lengths[b[0]])) > budget]  # only alone
        if over:
            logger.warning(
                "%d samples are alone over the token budget %d (estimated, %s); each gets a batch of its own",
                len(over),
                budget,
                mode,
            )
        signed = self.lengths.tolist()
        has_images = [any(signed[i] > 0 for i in b) for b in self.batches]
        self.rounds = []  # lists of indices into self.batches: one a rank
        for images in (True, False):
            kind = [k for k, flag in enumerate(has_images) if flag == images]
            if world_size > 1 and len(kind) % world_size:
                kind += (kind * world_size)[: world_size - len(kind) % world_size]
            self.rounds += [kind[r : r + world_size] for r in range(0, len(kind), world_size)]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return sum(len(r) for r in self.rounds)

    def __iter__(self) -> Iterator[list[int]]:
        for r in _rng(self.seed, self.epoch, stream=3).permutation(len(self.rounds)).tolist():
            for k in self.rounds[r]:
                yield list(self.batches[k])


# ---------------------------------------------------------------------------------------------------------------------
# Trainer glue


@dataclass
class SamplingOptions:
    """The sampling flags (`train_args.DataArguments`): `group_by_modality_length`, `token_budget` (tokens a
    per-device batch may take, estimated; None: fixed-size batches), `token_budget_mode` (`padded` or `packed`) and
    `image_token_estimate` (tokens counted an image; None: from the processor)."""

    group_by_modality_length: bool = False
    token_budget: int | None = None
    token_budget_mode: str = "padded"
    image_token_estimate: int | None = None

    def __post_init__(self) -> None:
        if self.token_budget is not None and self.token_budget < 1:
            raise ValueError(f"--token_budget {self.token_budget}: a positive number of tokens.")
        if self.token_budget_mode not in MODES:
            raise ValueError(f"--token_budget_mode {self.token_budget_mode!r}: use one of {MODES}.")
        if self.image_token_estimate is not None and self.image_token_estimate < 0:
            raise ValueError(f"--image_token_estimate {self.image_token_estimate}: a number of tokens, at least 0.")

    @property
    def active(self) -> bool:
        return self.group_by_modality_length or self.token_budget is not None

    @classmethod
    def from_args(cls, data_args, training_args=None) -> SamplingOptions:
        """From the parsed arguments; `--token_budget_mode` defaults to `packed` with `--padding_free`, else
        `padded`."""
        mode = getattr(data_args, "token_budget_mode", None)
        if mode is None:
            packing = any(getattr(a, "padding_free", False) for a in (data_args, training_args) if a is not None)
            mode = "packed" if packing else "padded"
        options = cls(
            bool(getattr(data_args, "group_by_modality_length", False)),
            getattr(data_args, "token_budget", None),
            mode,
            getattr(data_args, "image_token_estimate", None),
        )
        if options.active and getattr(data_args, "streaming", False):
            raise ValueError(
                "--group_by_modality_length and --token_budget order a data set of known length; "
                "--streaming reads an endless stream in its own order: drop one or the other."
            )
        return options


def sampling_seed(args) -> int:
    """The seed of the data order: `--data_seed`, else `--seed` (as the Trainer's own sampler)."""
    return args.data_seed if args.data_seed is not None else args.seed


class SamplerEpochCallback(TrainerCallback):
    """Sets `sampler`'s epoch at each epoch's start: the epoch of the trainer state when training begins (resumed:
    the checkpoint's), one more after each epoch. (The Trainer's own `set_epoch` does not reach a sampler under
    `skip_first_batches` in a multi-process run; when it does, it sets the same epoch.)"""

    def __init__(self, sampler=None):
        self.sampler = sampler
        self.epoch = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.epoch = math.floor(state.epoch + 1e-6) if state.epoch else 0

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epoch += 1
