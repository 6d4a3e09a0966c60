"""Throughput logs: token, padding and sample counts of hand-built batches, the counts of a tiny run summed over
gradient accumulation and over processes, the log keys, the model FLOPs against torch's flop counter, and MFU on a
fake GPU table (absent on CPU)."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from transformers import LlavaOnevisionForConditionalGeneration, TrainerControl, TrainerState

from llava_manager import apply_manager
from llava_manager.analysis.timing import count_flops
from llava_manager.synthetic.data import tiny_model_config, tiny_processor
from llava_manager.training import data as training_data
from llava_manager.training.data import BATCH_INFO
from llava_manager.training.packing import PackingCollator
from llava_manager.training.throughput import (
    COUNTS,
    ModelFlops,
    ThroughputCallback,
    count_batch,
    model_parameters,
    peak_tflops_for,
)
from llava_manager.training.train import run
from llava_manager.training.train_args import _CHECKPOINTING

KEYS = ("tokens_per_second", "samples_per_second", "padding_fraction")


def counts(batch, image_token_id=None) -> dict:
    return dict(zip(COUNTS, count_batch(batch, image_token_id).tolist()))


def test_counts_of_a_padded_batch():
    ids = torch.tensor([[1, 9, 9, 4, 5, 6], [1, 9, 3, 4, 0, 0], [1, 2, 0, 0, 0, 0]])
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    assert counts({"input_ids": ids, "attention_mask": mask}, image_token_id=9) == dict(
        samples=3, tokens=12, padding=6, sum_squared_lengths=36 + 16 + 4, vision_tokens=3
    )
    assert counts({"input_ids": ids})["padding"] == 0  # no mask: every token is real


def test_counts_of_padding_free_batches():
    ids = torch.arange(9)[None]
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert counts({"input_ids": ids, "position_ids": position_ids}) == dict(
        samples=3, tokens=9, padding=0, sum_squared_lengths=9 + 4 + 16, vision_tokens=0
    )
    two_rows = torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]])
    assert counts({"input_ids": two_rows, "position_ids": two_rows})["sum_squared_lengths"] == 9 + 4 + 16 + 1
    cu = torch.tensor([0, 3, 5, 8], dtype=torch.int32)  # 8 real tokens, one of padding after them
    assert counts({"input_ids": ids, "cu_seq_lens_q": cu, "position_ids": position_ids}) == dict(
        samples=3, tokens=8, padding=1, sum_squared_lengths=9 + 4 + 9, vision_tokens=0
    )

    # packing.py: samples of 5, 3 and 4 tokens in rows of 8: [5 + 3], [4 + a padding segment of 4]
    collate = PackingCollator(pad_token_id=0, max_packed_tokens=8)
    samples = [{"input_ids": torch.arange(1, n + 1), "labels": torch.arange(1, n + 1)} for n in (5, 3, 4)]
    batch = collate(samples)
    assert batch["input_ids"].shape == (2, 8)
    assert counts(batch) == dict(samples=3, tokens=12, padding=4, sum_squared_lengths=25 + 9 + 16, vision_tokens=0)


def test_peak_table():
    assert peak_tflops_for("NVIDIA H100 80GB HBM3") == 989
    assert peak_tflops_for("NVIDIA H100 PCIe") == 756
    assert peak_tflops_for("NVIDIA A100-SXM4-80GB") == peak_tflops_for("NVIDIA A100 80GB PCIe") == 312
    assert peak_tflops_for("NVIDIA H200") == 989
    assert peak_tflops_for("NVIDIA L4") == 121 and peak_tflops_for("NVIDIA L40S") == 362
    assert peak_tflops_for("Radeon Something") is None


def tiny_model(attention="eager"):
    processor = tiny_processor()
    config = tiny_model_config(processor)
    for c in (config, config.text_config, config.vision_config):
        c._attn_implementation = attention  # the flop counter sees eager attention's matmuls
    torch.manual_seed(0)
    return processor, apply_manager(LlavaOnevisionForConditionalGeneration(config)).train()


def train_only(model, modules):
    for name, params in model_parameters(model).items():
        for p in params:
            p.requires_grad_(name in modules or name == "managers")


@pytest.mark.parametrize("modules", [{"projector"}, {"vision_tower", "projector", "llm"}])
def test_model_flops_match_torch_flop_counter(modules):
    """Stage-1 (frozen vision tower and LLM: 2 N and 4 N) and Stage-2 (6 N everywhere) against the FLOPs torch
    counts in a forward and backward. The counter counts the masked half of causal attention too (added here), not
    norms and biases (0.7% of this tiny model's parameters, but counted by the formula): 3% apart at most."""
    processor, model = tiny_model()
    train_only(model, modules)
    inputs = processor(
        images=[Image.new("RGB", (28, 28), (200, 10, 10))], text=["<image> what colour ?"], return_tensors="pt"
    )
    assert inputs["pixel_values"].shape[1] == 2  # two crops of 16 patches go through the vision tower

    def step():
        model(**inputs, labels=inputs["input_ids"]).loss.backward()

    counted = count_flops(step)
    flops = ModelFlops.of(model)
    c = dict(counts(dict(inputs)), vision_tokens=2 * 16)  # the patches, not the proxy (image tokens with newlines)
    expected = flops(c) + flops.llm_attention * c["sum_squared_lengths"]
    assert expected == pytest.approx(counted, rel=0.03)
    if modules == {"projector"}:  # the 2 / 4 / 6 coefficients matter: 6 N for the frozen LLM is far off
        assert flops.llm == 4 * model_numel(model)
        wrong = dataclasses.replace(flops, llm=6 * model_numel(model))
        assert wrong(c) + flops.llm_attention * c["sum_squared_lengths"] > 1.2 * counted
    else:
        assert flops.llm == 6 * model_numel(model)


def model_numel(model) -> int:
    """Parameters of the LLM that take part in matmuls (the embedding lookup does not, the untied head does)."""
    language = model.model.language_model
    return (
        sum(p.numel() for p in language.parameters())
        - language.embed_tokens.weight.numel()
        + model.lm_head.weight.numel()
    )


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def fake_args(world_size=1, device="cpu", output_dir=""):
    return SimpleNamespace(
        world_size=world_size,
        device=torch.device(device),
        output_dir=output_dir,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
    )


def test_mfu_on_a_fake_gpu_table_and_eval_time_left_out(tmp_path):
    _, model = tiny_model()
    clock = FakeClock()
    callback = ThroughputCallback(device_name="Fake GPU 9000", table=[("GPU 9000", 100.0)], clock=clock)
    args = fake_args(world_size=2, device="cuda", output_dir=str(tmp_path))  # a device name given: no CUDA call
    state, control = TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control, model=model)
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids > 0).long()}
    callback.count(batch)
    clock.now = 1.0
    state.global_step = 1
    callback.on_step_end(args, state, control)
    clock.now = 5.0  # 4 s of evaluation and saving: not training time
    callback.on_evaluate(args, state, control)
    callback.on_save(args, state, control)
    callback.count(batch)
    clock.now = 6.0
    state.global_step = 2
    callback.on_step_end(args, state, control)
    logs = {"loss": 1.0}
    state.log_history.append({**logs, "step": 2})
    callback.on_log(args, state, control, logs=logs)

    # by hand: 2 steps in 2 s of training, each 2 samples, 6 real tokens, 2 padding, 4^2 + 2^2 squared lengths
    language, vision = model.config.text_config, model.config.vision_config
    llm = 6 * model_numel(model) * 12
    attention = (
        6
        * language.num_hidden_layers
        * language.num_attention_heads
        * (language.hidden_size // language.num_attention_heads)
        * 40
    )
    assert logs["tokens_per_second"] == 6 and logs["samples_per_second"] == 2 and logs["padding_fraction"] == 0.25
    assert logs["mfu"] == pytest.approx((llm + attention) / 2 / (100e12 * 2), rel=1e-5)
    assert state.log_history[-1]["mfu"] == logs["mfu"]  # trainer_state.json and later loggers see it
    assert vision.num_hidden_layers > 0  # no image tokens: no vision FLOPs in this batch

    callback.on_train_begin(fake_args(), state, control, model=model)  # on CPU: no mfu
    callback.count(batch)
    logs = {"loss": 1.0}
    callback.on_log(args, state, control, logs=logs)
    assert "mfu" not in logs and set(KEYS) <= set(logs)


def record_batches(monkeypatch, cls) -> list[dict]:
    batches = []
    collate = cls.__call__

    def recorded(self, samples):
        batch = collate(self, samples)
        batches.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        return batch

    monkeypatch.setattr(cls, "__call__", recorded)
    return batches


@pytest.mark.parametrize("padding_free", [False, True])
def test_tiny_run_logs_counts_summed_over_gradient_accumulation(tmp_path, monkeypatch, padding_free):
    batches = record_batches(monkeypatch, PackingCollator if padding_free else training_data.Collator)
    packing = ["--padding_free", "true", "--max_packed_tokens", "200"] if padding_free else []
    trainer = run(
        "stage2",
        [
            "--output_dir",
            str(tmp_path),
            "--max_steps",
            "2",
            "--logging_steps",
            "1",
            "--synthetic_samples",
            "32",
            "--save_strategy",
            "no",
            "--per_device_train_batch_size",
            "2",
            "--gradient_accumulation_steps",
            "2",
            "--dataloader_num_workers",
            "0",
            f"--{_CHECKPOINTING}",
            "false",
            *packing,
        ],
    )
    if padding_free:  # the packed batches' own accounting (rows filled to the longest) is what the logs count
        info = [b[BATCH_INFO] for b in batches]
        assert all(i["num_tokens"] + i["num_padding"] == b["input_ids"].numel() for i, b in zip(info, batches))
    image_token_id = trainer.model.config.image_token_id
    # the loader may collate a batch ahead; the first four are the micro-batches of steps 1 and 2, in order
    expected = [
        {k: sum(counts(b, image_token_id)[k] for b in batches[2 * s : 2 * s + 2]) for k in COUNTS} for s in range(2)
    ]
    intervals = trainer.throughput.intervals
    assert [i["step"] for i in intervals] == [1, 2]
    assert [{k: i[k] for k in COUNTS} for i in intervals] == expected
    assert all(e["samples"] == 4 for e in expected)
    assert padding_free or all(e["padding"] > 0 for e in expected)

    state = json.loads((tmp_path / "trainer_state.json").read_text())
    logged = [e for e in state["log_history"] if "loss" in e]
    for entry, interval, e in zip(logged, intervals, expected):
        assert set(KEYS) <= set(entry) and "mfu" not in entry  # CPU: no MFU
        assert entry["padding_fraction"] == pytest.approx(e["padding"] / (e["tokens"] + e["padding"]), abs=1e-6)
        assert entry["tokens_per_second"] == pytest.approx(e["tokens"] / interval["seconds"], rel=1e-4)
        assert entry["samples_per_second"] == pytest.approx(4 / interval["seconds"], rel=1e-4)
    final = state["log_history"][-1]
    assert "train_runtime" in final and "train_tokens_per_second" in final and "train_mfu" not in final

    summary = json.loads((tmp_path / "throughput.json").read_text())
    assert summary["stage"] == "stage2" and summary["world_size"] == 1 and summary["device"] == "cpu"
    assert summary["mfu"] is None and summary["first_step_left_out"] and summary["steps"] == 1
    assert summary["samples"] == 4 and summary["tokens"] == expected[1]["tokens"]  # step 2 only
    # (its time also holds the log call after step 1, which the first interval does not)
    assert summary["samples_per_second_per_device"] == pytest.approx(4 / intervals[1]["seconds"], rel=0.05)


def _rank(rank, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        callback = ThroughputCallback(clock=FakeClock())
        args, state, control = fake_args(world_size=2), TrainerState(), TrainerControl()
        callback.on_train_begin(args, state, control)
        length = 3 + rank  # rank 0: one sample of 3 tokens in a row of 5; rank 1: 4 of 5
        ids = torch.ones(2, 5, dtype=torch.long)
        mask = torch.zeros(2, 5, dtype=torch.long)
        mask[0, :length] = 1
        mask[1, :5] = 1
        callback.clock.now = 2.0
        logs = {"loss": 1.0}
        callback.count({"input_ids": ids, "attention_mask": mask})
        callback.on_log(args, state, control, logs=logs)
        out[rank] = (callback.intervals[0]["tokens"], callback.intervals[0]["samples"], logs["padding_fraction"])
    finally:
        dist.destroy_process_group()


def test_counts_are_summed_over_processes():
    from llava_manager.runtime.cpu_distributed import free_port

    out = mp.Manager().dict()
    mp.spawn(_rank, args=(free_port(), out), nprocs=2)
    tokens = (3 + 5) + (4 + 5)
    assert out[0] == out[1] == (tokens, 4, round((20 - tokens) / 20, 6))
