"""Data order at scale (`training/sampling.py`): `--group_by_modality_length` (image and text-only samples in separate
length-sorted groups, as LLaVA-NeXT) and `--token_budget` batches: seeded, every sample once an epoch, modalities
apart, the budget kept, accelerate's dealing to processes, and an interrupted run resumed in a fresh `run()` that
sees the same samples in the same steps and ends with the same weights."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard, SkipBatchSampler
from support.helpers import ROOT
from torch.utils.data import BatchSampler

from llava_manager.core.persistence import from_pretrained
from llava_manager.synthetic.data import tiny_processor, write_shapes_dataset
from llava_manager.training import train_args
from llava_manager.training.data import Collator, SupervisedDataset, load_records
from llava_manager.training.lengths import dataset_lengths
from llava_manager.training.sampling import (
    ModalityLengthGroupedSampler,
    SamplerEpochCallback,
    SamplingOptions,
    TokenBudgetBatchSampler,
    batch_cost,
    modality_grouped_indices,
)
from llava_manager.training.train import run
from llava_manager.training.train_args import _CHECKPOINTING
from llava_manager.training.trainer import ManagerTrainer


def signed_lengths(n_image=203, n_text=57, seed=0) -> list[int]:
    """Image samples (positive) and text-only samples (negative) of random lengths, interleaved at random."""
    rng = np.random.default_rng(seed)
    lengths = [int(x) for x in rng.integers(200, 3000, n_image)] + [-int(x) for x in rng.integers(20, 900, n_text)]
    return [lengths[i] for i in rng.permutation(len(lengths))]


def batches_of(order, size):
    return [order[i : i + size] for i in range(0, len(order), size)]


def modalities(batch, lengths):
    return {lengths[i] > 0 for i in batch}


# ---------------------------------------------------------------------------------------------------------------------
# The modality-grouped order


def test_same_seed_same_order_another_seed_or_epoch_another():
    lengths = signed_lengths()
    a, b = (ModalityLengthGroupedSampler(lengths, 4, world_size=2, seed=3) for _ in range(2))
    assert list(a) == list(b)
    other_seed = ModalityLengthGroupedSampler(lengths, 4, world_size=2, seed=4)
    assert list(other_seed) != list(a)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(a) == list(a)  # iterating does not move the epoch on: only set_epoch does


@pytest.mark.parametrize("n_image,n_text,batch,world", [(203, 57, 4, 1), (64, 3, 4, 1), (40, 0, 3, 1), (0, 11, 2, 1)])
def test_one_process_every_index_once_and_modalities_meet_only_in_the_remainder(n_image, n_text, batch, world):
    lengths = signed_lengths(n_image, n_text)
    for epoch in range(3):
        order = modality_grouped_indices(lengths, batch, world, seed=0, epoch=epoch)
        assert (
            sorted(order) == list(range(len(lengths))) == list(range(len(ModalityLengthGroupedSampler(lengths, batch))))
        )
        whole = len(order) - n_image % batch - n_text % batch
        assert all(len(modalities(b, lengths)) == 1 for b in batches_of(order[:whole], batch))
        tail = order[whole:]  # image leftovers, then text-only ones: at most one batch mixes them
        assert [lengths[i] > 0 for i in tail] == sorted((lengths[i] > 0 for i in tail), reverse=True)
        assert sum(len(modalities(b, lengths)) > 1 for b in batches_of(order, batch)) <= 1


@pytest.mark.parametrize(
    "n_image,n_text,batch,world", [(203, 57, 4, 2), (203, 57, 1, 8), (40, 0, 3, 2), (0, 11, 2, 2), (5, 7, 8, 4)]
)
def test_several_processes_every_step_one_modality_on_every_rank(n_image, n_text, batch, world):
    """No step gives image samples to some ranks and none to others (ZeRO-2 / DDP would fail): each modality is
    filled up to whole units (world x batch: one step of all ranks) with repeats of its own samples."""
    lengths = signed_lengths(n_image, n_text)
    unit = batch * world
    for epoch in range(2):
        order = modality_grouped_indices(lengths, batch, world, seed=0, epoch=epoch)
        assert set(order) == set(range(len(lengths))) and len(order) % unit == 0
        assert len(order) == len(ModalityLengthGroupedSampler(lengths, batch, world))  # the Trainer's epoch length
        assert len(order) - len(lengths) == (-n_image % unit) + (-n_text % unit)  # the repeats: under a unit each
        assert all(len(modalities(u, lengths)) == 1 for u in batches_of(order, unit))


def test_groups_are_length_sorted_longest_first_and_balanced_over_ranks():
    lengths = signed_lengths(800, 200)
    order = modality_grouped_indices(lengths, 4, world_size=2, seed=0)
    sizes = np.abs(lengths)
    padding = lambda o: sum(len(b) * sizes[b].max() - sizes[b].sum() for b in batches_of(o, 4))  # noqa: E731
    shuffled = np.random.default_rng(0).permutation(len(lengths)).tolist()
    assert padding(order) < padding(shuffled) / 5
    assert sizes[order[0]] == sizes.max()  # an out-of-memory shows in the first step
    for unit in batches_of(order[: 800 // 8 * 8], 8):  # the two ranks' batches of a step: alike in length
        rank0, rank1 = sizes[unit[:4]].sum(), sizes[unit[4:]].sum()
        assert abs(rank0 - rank1) <= sizes[unit].max() - sizes[unit].min()


def test_accelerate_deals_one_modality_to_every_rank_of_a_step():
    """As under the Trainer: per-device batches of the sampler's order, dealt by accelerate's BatchSamplerShard."""
    lengths = signed_lengths(151, 70)
    sampler = ModalityLengthGroupedSampler(lengths, 3, world_size=2, seed=1)
    ranks = [list(BatchSamplerShard(BatchSampler(sampler, 3, False), 2, r)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(sampler) // 6  # whole rounds: accelerate fills nothing
    assert {i for rank in ranks for b in rank for i in b} == set(range(len(lengths)))
    assert all(len(modalities(a + b, lengths)) == 1 for a, b in zip(*ranks))
    assert all(len(b) == 3 for rank in ranks for b in rank)


def test_the_epoch_follows_the_trainer_state_where_set_epoch_cannot_reach():
    """Resumed mid-epoch on several processes, the loader's batch sampler is Skip(Shard(Batch(sampler))):
    accelerate's and the Trainer's set_epoch miss the sampler; the callback sets it from the trainer state."""
    sampler = ModalityLengthGroupedSampler(signed_lengths(), 4, world_size=2)
    wrapped = SkipBatchSampler(BatchSamplerShard(BatchSampler(sampler, 4, False), 2, 0), 3)
    assert not hasattr(wrapped, "sampler") and not hasattr(wrapped.batch_sampler, "sampler")
    callback = SamplerEpochCallback(sampler)
    callback.on_train_begin(None, SimpleNamespace(epoch=2.375), None)  # a checkpoint in the third epoch
    callback.on_epoch_begin(None, None, None)
    assert sampler.epoch == 2
    callback.on_epoch_end(None, None, None)
    callback.on_epoch_begin(None, None, None)
    assert sampler.epoch == 3
    callback.on_train_begin(None, SimpleNamespace(epoch=0), None)
    callback.on_epoch_begin(None, None, None)
    assert sampler.epoch == 0


# ---------------------------------------------------------------------------------------------------------------------
# Token budget


@pytest.mark.parametrize("mode", ["padded", "packed"])
@pytest.mark.parametrize("by_modality", [False, True])
def test_token_budget_batches_keep_the_budget_and_every_index_once(mode, by_modality):
    lengths = signed_lengths() + [5000, -4500]  # two samples alone over the budget
    budget = 4096
    sampler = TokenBudgetBatchSampler(lengths, budget, mode, group_by_modality=by_modality, seed=0)
    sizes = np.abs(lengths)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)  # fixed: the Trainer's steps per epoch
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        for b in batches:
            assert batch_cost(sizes[b].tolist(), mode) <= budget or len(b) == 1
        if by_modality:
            assert all(len(modalities(b, lengths)) == 1 for b in batches)
        epochs.append(batches)
    assert sorted(map(sorted, epochs[0])) == sorted(map(sorted, epochs[1])) and epochs[0] != epochs[1]
    sizes_per_batch = {len(b) for b in epochs[0]}
    assert len(sizes_per_batch) > 2  # varying batch sizes
    twin = TokenBudgetBatchSampler(lengths, budget, mode, group_by_modality=by_modality, seed=0)
    twin.set_epoch(1)
    assert list(twin) == epochs[1]
    assert list(TokenBudgetBatchSampler(lengths, budget, mode, by_modality, seed=1)) != epochs[0]


@pytest.mark.parametrize("by_modality", [False, True])
def test_accelerate_deals_token_budget_batches_whole_with_images_on_every_rank_or_none(by_modality):
    lengths = signed_lengths()
    sampler = TokenBudgetBatchSampler(lengths, 3000, group_by_modality=by_modality, seed=0, world_size=3)
    full = list(sampler)
    assert len(full) == len(sampler) and len(full) % 3 == 0
    assert {i for b in full for i in b} == set(range(len(lengths)))
    ranks = [list(BatchSamplerShard(sampler, 3, r)) for r in range(3)]
    assert ranks == [full[0::3], full[1::3], full[2::3]]
    for step in zip(*ranks):
        assert len({(np.asarray(lengths)[b] > 0).any() for b in step}) == 1
    one = TokenBudgetBatchSampler(lengths, 3000, group_by_modality=by_modality, seed=0)
    assert sorted(map(sorted, set(map(tuple, full)))) == sorted(map(sorted, one.batches))  # the same batches


def test_orders_are_the_same_in_a_fresh_process():
    code = (
        "import json; from llava_manager.training.sampling import *; import sys\n"
        "L = json.loads(sys.argv[1])\n"
        "s = ModalityLengthGroupedSampler(L, 4, 2, seed=5); s.set_epoch(2)\n"
        "t = TokenBudgetBatchSampler(L, 3000, 'packed', True, seed=5); t.set_epoch(2)\n"
        "print(json.dumps([list(s), list(t)]))"
    )
    lengths = signed_lengths()
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(lengths)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONHASHSEED": "123", "PATH": "", "PYTHONPATH": str(ROOT)},
        check=True,
    )
    here = ModalityLengthGroupedSampler(lengths, 4, 2, seed=5)
    budget = TokenBudgetBatchSampler(lengths, 3000, "packed", True, seed=5)
    here.set_epoch(2), budget.set_epoch(2)
    assert json.loads(out.stdout) == [list(here), list(budget)]


# ---------------------------------------------------------------------------------------------------------------------
# Lengths and flags


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    paths = write_shapes_dataset(tmp_path_factory.mktemp("shapes"), 64, seed=42)
    return SupervisedDataset(load_records(paths["instruct"]), tiny_processor(), paths["image_folder"])


def test_estimated_lengths_sign_the_modality_and_bound_the_real_tokens(shapes):
    lengths = dataset_lengths(shapes)
    for i, record in enumerate(shapes.records):
        real = len(shapes[i]["input_ids"])
        if "image" in record:
            # images are not opened: the tokens of the largest square image are counted, an upper bound
            assert lengths[i] >= real
        else:
            assert lengths[i] < 0 and abs(-lengths[i] - real) <= 0.1 * real
    assert dataset_lengths(shapes, image_tokens=0) != lengths
    shapes.modality_lengths = [1] * len(shapes)  # a data set's own lengths come first
    try:
        assert dataset_lengths(shapes) == [1] * len(shapes)
    finally:
        del shapes.modality_lengths


def test_flags():
    _, _, data, training = train_args.parse("stage2", ["--group_by_modality_length", "true", "--token_budget", "512"])
    assert SamplingOptions.from_args(data, training) == SamplingOptions(True, 512, "padded", None)
    _, _, data, training = train_args.parse("stage2", [])
    assert not SamplingOptions.from_args(data, training).active
    data.padding_free = True  # the packing collator's flag: the budget counts the sum of the lengths
    data.token_budget = 100
    assert SamplingOptions.from_args(data, training).token_budget_mode == "packed"
    with pytest.raises(ValueError, match="--token_budget 0"):
        SamplingOptions(token_budget=0)
    data.streaming = True  # an endless IterableDataset has no order to choose
    with pytest.raises(ValueError, match="--streaming"):
        SamplingOptions.from_args(data, training)
    with pytest.raises(SystemExit):
        train_args.parse("stage2", ["--token_budget_mode", "sum"])


def test_another_sampling_strategy_is_an_error(shapes, tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path),
        train_sampling_strategy="group_by_length",
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,
    )
    trainer = ManagerTrainer(
        model=torch.nn.Linear(1, 1),
        args=args,
        train_dataset=shapes,
        data_collator=Collator(shapes.processor.tokenizer.pad_token_id),
    )
    trainer.sampling = SamplingOptions(group_by_modality_length=True)
    with pytest.raises(ValueError, match="both choose the data order"):
        trainer.get_train_dataloader()


# ---------------------------------------------------------------------------------------------------------------------
# Exact resumption of the recipe


@pytest.fixture
def recorded(monkeypatch):
    """{output_dir: {step: [sample indices of its micro-batches, in order]}} of the `run()`s in the test."""
    steps: dict = {}
    get_item, collate, compute_loss = SupervisedDataset.__getitem__, Collator.__call__, ManagerTrainer.compute_loss

    def item(self, index):
        return {**get_item(self, index), "sample_index": index}

    def call(self, samples):
        return {**collate(self, samples), "sample_index": [s["sample_index"] for s in samples]}

    def loss(self, model, inputs, *args, **kwargs):
        step = steps.setdefault(self.args.output_dir, {}).setdefault(self.state.global_step + 1, [])
        step.append(inputs.pop("sample_index"))
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(SupervisedDataset, "__getitem__", item)
    monkeypatch.setattr(Collator, "__call__", call)
    monkeypatch.setattr(ManagerTrainer, "compute_loss", loss)
    return steps


# 32 samples (2 text-only) in batches of 2, 2 micro-batches a step: 8 steps an epoch; resumed in the second epoch.
RECIPE = (
    "--max_steps",
    "11",
    "--save_steps",
    "10",
    "--logging_steps",
    "1",
    "--synthetic_samples",
    "32",
    "--per_device_train_batch_size",
    "2",
    "--gradient_accumulation_steps",
    "2",
    "--dataloader_num_workers",
    "0",
    "--data_seed",
    "42",
    "--report_to",
    "none",
    "--group_by_modality_length",
    "true",
    f"--{_CHECKPOINTING}",
    "false",
)


@pytest.mark.parametrize("extra", [(), ("--token_budget", "700")], ids=["modality-groups", "token-budget"])
def test_an_interrupted_run_resumes_with_the_same_samples_and_weights(recorded, tmp_path, extra):
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    reference = run("stage2", [*RECIPE, *extra, "--output_dir", full])
    steps = recorded[full]
    assert sorted(steps) == list(range(1, 12))
    lengths = dataset_lengths(reference.train_dataset)
    batches = [b for s in sorted(steps) for b in steps[s]]
    order = [i for b in batches for i in b]
    assert sorted(order[:32]) == list(range(32))  # every sample once in the first epoch
    assert order[32:] != order[: len(order) - 32]  # the second epoch is reshuffled
    assert all(len(modalities(b, lengths)) == 1 for b in batches)  # (2 text-only samples: no remainder to mix)
    if extra:
        assert len({len(b) for b in batches}) > 1  # batches of varying size
        assert all(batch_cost([abs(lengths[i]) for i in b]) <= 700 for b in batches)

    shutil.copytree(tmp_path / "full" / "checkpoint-10", tmp_path / "resumed" / "checkpoint-10")
    # Interrupted after step 10 (in the second epoch), resumed in a fresh run() with another model seed.
    again = run(
        "stage2",
        [
            *RECIPE,
            *extra,
            "--output_dir",
            resumed,
            "--seed",
            "7",
            "--resume_from_checkpoint",
            f"{resumed}/checkpoint-10",
        ],
    )
    assert recorded[resumed] == {11: steps[11]}
    final, resumed_final = reference.model.state_dict(), again.model.state_dict()
    assert final.keys() == resumed_final.keys()
    assert all(torch.equal(resumed_final[k], v) for k, v in final.items())
    at_10 = from_pretrained(tmp_path / "full" / "checkpoint-10").state_dict()  # step 11 did change the weights
    assert not all(torch.equal(at_10[k], v) for k, v in final.items() if k in at_10)
