"""Padding-free training (`llava_manager/training/packing.py`, `--padding_free true`): on the same samples, a packed
step gives the padded step's per-token losses and gradients (managers included) for every family, under SDPA, eager
and a flash-attention-style varlen attention, with one row per batch, tight rows and rows of the batch's longest
sample; the packing itself (first-fit, row length, positions, labels, images in packed order, accounting); the
default row length, chosen by the attention kernel, and the user's value winning over it; and the stage-2 recipe's
loss with and without packing."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch
from support.family_models import FAMILIES
from support.helpers import logged_losses
from support.packing_cases import patched_model, per_token_losses, sample_slices, shapes_samples
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

from llava_manager.synthetic.data import tiny_model_config, tiny_processor
from llava_manager.training.data import BATCH_INFO, IGNORE_INDEX, Collator, SupervisedDataset, model_inputs
from llava_manager.training.packing import (
    AUTO,
    LONGEST,
    PackingCollator,
    build_collator,
    default_row_length,
    pack_rows,
    row_length,
)
from llava_manager.training.run_config import resolve
from llava_manager.training.train import run
from llava_manager.training.train_args import _CHECKPOINTING, parse

# ---------------------------------------------------------------------------------------------------------------------
# A flash-attention stand-in for the CPU: what `_flash_attention_forward` does with the varlen arguments (the rows
# flattened, causal attention within each `cu_seq_lens_q` segment), in plain SDPA. It refuses a call without them, so
# it also checks that they reach every decoder layer.


def varlen_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    scaling=None,
    dropout=0.0,
    cu_seq_lens_q=None,
    cu_seq_lens_k=None,
    max_length_q=None,
    max_length_k=None,
    **kwargs,
):
    assert attention_mask is None and cu_seq_lens_q is not None and torch.equal(cu_seq_lens_q, cu_seq_lens_k)
    batch, heads, length, dim = query.shape
    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    q, k, v = (x.transpose(1, 2).reshape(batch * length, heads, dim) for x in (query, key, value))
    out = torch.empty_like(q)
    bounds = cu_seq_lens_q.tolist()
    assert bounds[-1] == batch * length and max(b - a for a, b in zip(bounds, bounds[1:])) == max_length_q
    for start, end in zip(bounds, bounds[1:]):
        segment = [x[start:end].transpose(0, 1) for x in (q, k, v)]
        out[start:end] = torch.nn.functional.scaled_dot_product_attention(
            *segment, is_causal=True, scale=scaling
        ).transpose(0, 1)
    return out.view(batch, length, heads, dim), None


AttentionInterface.register("varlen_reference", varlen_attention)
ATTENTION = ["sdpa", "eager", "varlen_reference"]


# ---------------------------------------------------------------------------------------------------------------------
# Real samples of the embedded shapes data, through SupervisedDataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return shapes_samples(tmp_path_factory.mktemp("shapes"))


def samples_of(shapes, processor, model):
    folder, records = shapes
    dataset = SupervisedDataset(records, processor, folder, model_config=model.config)
    samples = [dataset[i] for i in range(len(records))]
    assert all(s["skipped"] == [] for s in samples)
    return samples


def step(model, batch):
    """Per-token losses, the mean loss over scored tokens, and every parameter's gradient of it."""
    model.zero_grad(set_to_none=True)
    out = model(**model_inputs(batch))
    losses = per_token_losses(out.logits, batch["labels"])
    scored = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    mean = losses.sum() / scored
    torch.testing.assert_close(out.loss, mean, rtol=1e-6, atol=1e-6)  # the model's own loss is this mean
    mean.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return losses.detach(), out.loss.detach(), grads


# ---------------------------------------------------------------------------------------------------------------------
# The packed step is the padded step


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_packed_step_has_the_padded_steps_per_token_losses_and_gradients(family, attention, shapes):
    model, processor = patched_model(family, attention)
    samples = samples_of(shapes, processor, model)
    lengths = [len(s["input_ids"]) for s in samples]
    pad = processor.tokenizer.pad_token_id
    padded = Collator(pad, family)(samples)
    want_losses, want_loss, want_grads = (
        step(model, padded) if attention != "varlen_reference" else step(patched_model(family)[0], padded)
    )  # the padded reference under SDPA (the stand-in takes packed only)
    manager_grads = [want_grads[n] for n, _ in model.named_parameters() if ".managers." in n]
    assert manager_grads and all(g.abs().sum() > 0 for g in manager_grads)  # the managers matter here

    # one row holding everything (flash-attention's default); a tight budget: several rows, first-fit moving a later
    # sample to an earlier row; rows as long as the longest sample (the default under SDPA / eager)
    tight = lengths[0] + lengths[2] + 8
    for budget in (sum(lengths), tight, LONGEST):
        rows = pack_rows(lengths, max(lengths) if budget == LONGEST else budget)
        order = [i for row in rows for i in row]
        if budget == tight:
            assert len(rows) > 1 and order != sorted(order)
            assert any(sum("pixel_values" in samples[i] for i in row) > 1 for row in rows)
        if budget == LONGEST:
            assert len(rows) <= len(samples)  # no more rows than the padded batch, none wider than its rows
        packed = PackingCollator(pad, family, max_packed_tokens=budget)(samples)
        if budget == LONGEST:
            assert packed["input_ids"].shape[1] == padded["input_ids"].shape[1] == max(lengths)
        losses, loss, grads = step(model, packed)
        torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
        for i, (r, column) in sample_slices(rows, lengths).items():
            n = lengths[i]
            # token for token: every position of sample i scores the same next token with the same loss
            assert torch.equal(packed["labels"][r, column + 1 : column + n], padded["labels"][i, 1:n])
            torch.testing.assert_close(
                losses[r, column : column + n - 1], want_losses[i, : n - 1], rtol=1e-5, atol=2e-6
            )
            if column + n < losses.shape[1] + 1:  # its last token predicts nothing across the boundary
                assert losses[r, column + n - 1] == 0
        assert grads.keys() == want_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, want_grads[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_without_the_packed_positions_the_samples_would_see_each_other(shapes):
    """The check above has teeth: the same packed rows without restarting positions (one causal sequence a row), or
    with a cache (transformers then does not look for packed sequences), give other losses."""
    model, processor = patched_model("llava_onevision")
    samples = samples_of(shapes, processor, model)
    packed = PackingCollator(processor.tokenizer.pad_token_id, "llava_onevision", max_packed_tokens=400)(samples)
    inputs = model_inputs(packed)
    with torch.no_grad():
        right = model(**inputs).loss
        assert not torch.allclose(model(**{k: v for k, v in inputs.items() if k != "position_ids"}).loss, right)
        assert not torch.allclose(model(**{**inputs, "use_cache": True}).loss, right)


# ---------------------------------------------------------------------------------------------------------------------
# The packing


def test_first_fit_in_arrival_order_within_the_row_length():
    assert pack_rows([5, 4, 3, 2, 6], 8) == [[0, 2], [1, 3], [4]]
    assert pack_rows([5, 4, 3, 2, 6], 8) == pack_rows([5, 4, 3, 2, 6], 8)  # deterministic
    assert pack_rows([3, 3, 3], 9) == [[0, 1, 2]] and pack_rows([9, 9], 9) == [[0], [1]]
    lengths = [(7 * i) % 23 + 1 for i in range(60)]
    rows = pack_rows(lengths, 40)
    assert sorted(i for row in rows for i in row) == list(range(60))
    assert all(sum(lengths[i] for i in row) <= 40 for row in rows) and all(row == sorted(row) for row in rows)
    with pytest.raises(ValueError, match=r"a sample of 9 tokens .* longer than a packed row \(--max_packed_tokens 8\)"):
        pack_rows([5, 9], 8)
    with pytest.raises(ValueError, match="max_packed_tokens 0"):
        PackingCollator(0, "llava", max_packed_tokens=0)


@pytest.mark.parametrize("family", ["llava_onevision", "llava_next"])
def test_the_packed_batch(family, shapes):
    model, processor = patched_model(family)
    samples = samples_of(shapes, processor, model)
    lengths = [len(s["input_ids"]) for s in samples]
    pad = processor.tokenizer.pad_token_id
    budget = lengths[0] + lengths[2] + 8
    collate = PackingCollator(pad, family, max_packed_tokens=budget)
    batch = collate(samples)
    rows = pack_rows(lengths, budget)
    order = [i for row in rows for i in row]
    width = max(sum(lengths[i] for i in row) for row in rows)

    assert "attention_mask" not in batch and batch["use_cache"] is False
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (len(rows), width)
    assert width <= budget
    for i, (r, column) in sample_slices(rows, lengths).items():
        n = lengths[i]
        assert batch["position_ids"][r, column : column + n].tolist() == list(range(n))  # positions restart
        assert torch.equal(batch["input_ids"][r, column : column + n], samples[i]["input_ids"])
        assert batch["labels"][r, column] == IGNORE_INDEX  # nothing predicts across a boundary
        assert torch.equal(batch["labels"][r, column + 1 : column + n], samples[i]["labels"][1:])
    for r, row in enumerate(rows):  # the rest of a row: a padding segment of its own
        used = sum(lengths[i] for i in row)
        assert (batch["input_ids"][r, used:] == pad).all() and (batch["labels"][r, used:] == IGNORE_INDEX).all()
        assert batch["position_ids"][r, used:].tolist() == list(range(width - used))

    # flash attention's varlen arguments: what transformers derives from the positions of the flattened rows
    (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(batch["position_ids"])
    assert torch.equal(batch["cu_seq_lens_q"], cu_q) and torch.equal(batch["cu_seq_lens_k"], cu_k)
    assert batch["cu_seq_lens_q"].dtype == torch.int32 and batch["max_length_q"] == batch["max_length_k"] == int(max_q)

    # images in packed order, as the padded collator lays out the same samples in that order
    reordered = Collator(pad, family)([samples[i] for i in order])
    for key in ("pixel_values", "image_sizes", "batch_num_images"):
        assert (key in batch) == (key in reordered) and (key not in batch or torch.equal(batch[key], reordered[key]))
    if family == "llava_onevision":  # one entry per sample: the two-image sample keeps its base-crops-only layout
        assert batch["batch_num_images"].tolist() == [len(samples[i].get("pixel_values", ())) for i in order]
        assert 0 in batch["batch_num_images"].tolist() and 2 in batch["batch_num_images"].tolist()

    # token accounting for the throughput logs beside the skip records, under one key; a deterministic collation
    info = batch[BATCH_INFO]
    assert set(info) == {"skipped", "num_tokens", "num_padding", "sample_lengths"}
    assert info["num_tokens"] == sum(lengths) and info["num_padding"] == len(rows) * width - sum(lengths)
    assert info["sample_lengths"].tolist() == [lengths[i] for i in order]
    again = collate(samples)

    def same(a, b):
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b

    assert same(batch, again)
    assert set(model_inputs(batch)) == set(batch) - {BATCH_INFO} and not set(info) & set(model_inputs(batch))


# ---------------------------------------------------------------------------------------------------------------------
# The row length: by default from the attention kernel, the user's value always winning

MASKED = [None, "sdpa", "eager", "flex_attention", "varlen_reference"]  # None: transformers' default (SDPA)
VARLEN = [  # flash-attention: varlen
    "flash_attention_2",
    "flash_attention_3",
    "kernels-community/flash-attn2",
    "kernels-community/vllm-flash-attn3",
]


def collator_for(attention, packed_tokens, max_length=4096):
    """`build_collator` for the tiny OneVision whose language model runs `attention` (set on the config only: the
    flash kernels are not installed here, and the collator reads nothing but the config)."""
    processor = tiny_processor(family="llava_onevision")
    config = tiny_model_config(processor)
    config.get_text_config()._attn_implementation = attention
    return build_collator(SimpleNamespace(config=config), processor, packed_tokens, max_length)


@pytest.mark.parametrize("attention", MASKED + VARLEN)
def test_the_default_row_length_follows_the_attention_kernel(attention, caplog):
    with caplog.at_level(logging.INFO, logger="llava_manager.training.packing"):
        collate = collator_for(attention, AUTO, max_length=3000)
    want = 3000 if attention in VARLEN else LONGEST  # varlen: the whole batch in one row; masked: the longest sample
    assert collate.max_packed_tokens == want == default_row_length(attention, 3000)[0]
    assert not isinstance(collator_for(attention, None), PackingCollator)  # None: padded batches
    # the choice and its reason, logged and kept on the collator
    (line,) = [r.getMessage() for r in caplog.records if "padding-free" in r.getMessage()]
    assert collate.row_choice in line and f"default --max_packed_tokens {want}" in line
    assert (attention or "sdpa") in line and ("varlen kernel" in line) == (attention in VARLEN)
    # a collator built by hand follows its model config's kernel too (one row: the stages' --max_length)
    processor = tiny_processor(family="llava_onevision")
    config = tiny_model_config(processor)
    config.get_text_config()._attn_implementation = attention
    by_hand = PackingCollator(processor.tokenizer.pad_token_id, "llava_onevision", config)
    assert by_hand.max_packed_tokens == (16384 if attention in VARLEN else LONGEST)


@pytest.mark.parametrize("attention", ["sdpa", "eager", "flash_attention_2", "kernels-community/flash-attn2"])
@pytest.mark.parametrize("given", ["300", 300, "longest", " Longest "])
def test_a_row_length_given_wins_over_the_default(attention, given, caplog):
    with caplog.at_level(logging.INFO, logger="llava_manager.training.packing"):
        collate = collator_for(attention, given)
    assert collate.max_packed_tokens == row_length(given) and collate.max_packed_tokens in (300, LONGEST)
    assert "as given" in collate.row_choice and "default" not in collate.row_choice
    assert any(collate.row_choice in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("argv", "max_length", "packed"),
    [
        ([], 2048, AUTO),  # resolved by the model's kernel when the collator is built
        (["--attn_implementation", "flash_attention_2", "--max_packed_tokens", "300"], 300, 300),
        (["--attn_implementation", "flash_attention_2", "--max_packed_tokens", "longest"], 2048, LONGEST),
        (["--max_packed_tokens", "auto"], 2048, AUTO),
    ],
)
def test_the_run_config_keeps_the_users_row_length(tmp_path, argv, max_length, packed):
    args = parse("stage2", ["--output_dir", str(tmp_path), "--padding_free", "true", "--max_length", "2048", *argv])
    config = resolve("stage2", *args)
    assert (config.max_length, config.packed_tokens) == (max_length, packed)


@pytest.mark.parametrize("bad", ["0", "-3", "abc", "1.5", "longest-ish", ""])
def test_a_bad_row_length_is_a_clear_error(tmp_path, bad):
    message = rf"--max_packed_tokens {bad}: give a positive number of tokens, 'longest' .* or 'auto'"
    args = parse("stage2", ["--output_dir", str(tmp_path), "--padding_free", "true", f"--max_packed_tokens={bad}"])
    with pytest.raises(ValueError, match=message):
        resolve("stage2", *args)
    with pytest.raises(ValueError, match=message):
        PackingCollator(0, "llava", max_packed_tokens=bad)
    with pytest.raises(ValueError, match=message):
        collator_for("flash_attention_2", bad)


def test_rows_of_the_longest_sample_never_outgrow_the_padded_batch():
    """Rows as long as each batch's longest sample: never wider than the padded batch, never more rows, no sample
    too long for its row whatever its length."""
    rng = torch.Generator().manual_seed(0)
    for _ in range(50):
        lengths = torch.randint(1, 400, (int(torch.randint(1, 17, (1,), generator=rng)),), generator=rng).tolist()
        samples = [{"input_ids": torch.arange(n), "labels": torch.arange(n)} for n in lengths]
        batch = PackingCollator(0, "llava", max_packed_tokens=LONGEST)(samples)
        rows, width = batch["input_ids"].shape
        assert width == max(lengths) and rows <= len(lengths) and rows == len(pack_rows(lengths, max(lengths)))
        assert batch[BATCH_INFO]["num_padding"] <= len(lengths) * max(lengths) - sum(lengths)


# ---------------------------------------------------------------------------------------------------------------------
# The recipe


def test_the_stage2_recipe_packed_has_the_padded_loss(tmp_path):
    common = [
        "--max_steps",
        "2",
        "--synthetic_samples",
        "16",
        "--per_device_train_batch_size",
        "4",
        "--logging_steps",
        "1",
        "--save_steps",
        "100",
        "--dataloader_num_workers",
        "0",
        "--report_to",
        "none",
        f"--{_CHECKPOINTING}",
        "false",
    ]
    run("stage2", ["--output_dir", str(tmp_path / "padded"), *common])
    # the embedded default runs SDPA: by default, rows as long as each batch's longest sample
    trainer = run("stage2", ["--output_dir", str(tmp_path / "packed"), "--padding_free", "true", *common])
    assert trainer.model.config.get_text_config()._attn_implementation == "sdpa"
    assert isinstance(trainer.data_collator, PackingCollator) and trainer.data_collator.max_packed_tokens == LONGEST
    trainer = run(
        "stage2",
        ["--output_dir", str(tmp_path / "one"), "--padding_free", "true", "--max_packed_tokens", "16384", *common],
    )
    assert trainer.data_collator.max_packed_tokens == 16384  # the user's value wins: one row a batch
    run(
        "stage2",
        ["--output_dir", str(tmp_path / "rows"), "--padding_free", "true", "--max_packed_tokens", "200", *common],
    )
    padded, packed, one, rows = (logged_losses(tmp_path / name) for name in ("padded", "packed", "one", "rows"))
    assert sorted(padded) == sorted(packed) == sorted(one) == sorted(rows) == [1, 2]
    # same seed, same samples: rows of the longest sample, one row (the whole batch), rows of at most 200 tokens
    for losses in (packed, one):
        assert losses[1] == pytest.approx(padded[1], rel=1e-6) and losses[2] == pytest.approx(padded[2], rel=1e-6)
    assert rows[1] == pytest.approx(padded[1], rel=1e-6)

    # a budget below some samples' length: those are skipped as over-length, and reported
    run(
        "stage2",
        ["--output_dir", str(tmp_path / "small"), "--padding_free", "true", "--max_packed_tokens", "100", *common],
    )
    skipped = json.loads((tmp_path / "small" / "data_skipped.json").read_text())
    assert skipped["skipped"] > 0 and set(skipped["by_reason"]) == {"over-length"}
