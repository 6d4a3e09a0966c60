"""`run_config.resolve`: the recipes' derived settings in one step, before anything is built, without writing into
the arguments (the template, the packed row length and --max_length, the data order, the flags that exclude each
other)."""

from __future__ import annotations

import copy

import pytest

from llava_manager.runtime.commits import IncompleteCheckpointError
from llava_manager.training.run_config import resolve
from llava_manager.training.train_args import parse


def _resolve(stage, argv, tmp_path):
    args = parse(stage, ["--output_dir", str(tmp_path), *argv])
    before = copy.deepcopy([vars(a) for a in args[:3]])
    config = resolve(stage, *args)
    assert [vars(a) for a in args[:3]] == before  # model, manager and data arguments untouched
    return config


def test_the_embedded_default_resolves_to_its_template_and_length(tmp_path):
    config = _resolve("stage2", [], tmp_path)
    assert (config.template, config.packed_tokens, config.resume) == ("qwen_1_5", None, None)
    assert config.max_length == parse("stage2", [])[2].max_length
    assert config.sampling.token_budget is None and not config.sampling.group_by_modality_length


@pytest.mark.parametrize(
    ("argv", "max_length", "packed"),
    [
        (["--padding_free", "true", "--max_length", "4096", "--max_packed_tokens", "1024"], 1024, 1024),
        (["--padding_free", "true", "--max_length", "512", "--max_packed_tokens", "1024"], 512, 1024),
        (["--padding_free", "true", "--max_length", "2048"], 2048, "auto"),  # by the model's attention kernel
        (["--max_length", "2048", "--max_packed_tokens", "1024"], 2048, None),  # no packing: no budget
    ],
)
def test_the_packed_row_length_bounds_the_sample_length(tmp_path, argv, max_length, packed):
    config = _resolve("stage2", argv, tmp_path)
    assert (config.max_length, config.packed_tokens) == (max_length, packed)
    assert config.sampling.token_budget_mode == ("packed" if packed else "padded")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--streaming", "true"], "give the length of the run with --max_steps"),
        (["--streaming", "true", "--max_steps", "4", "--group_by_modality_length", "true"], "order a data set"),
        (["--skip_corrupt_data", "true"], "--skip_corrupt_data skips unreadable pieces of a stream"),
        (["--padding_free", "true", "--max_packed_tokens", "-3"], "--max_packed_tokens -3"),
        (["--token_budget", "0"], "--token_budget 0"),
        (["--resume_from_checkpoint", "last"], "no complete checkpoint"),
    ],
)
def test_flags_that_cannot_work_together_fail_before_anything_is_built(tmp_path, argv, message):
    with pytest.raises((ValueError, IncompleteCheckpointError), match=message):
        _resolve("stage2", argv, tmp_path)


def test_streaming_turns_off_dispatched_batches(tmp_path):
    args = parse("stage2", ["--output_dir", str(tmp_path), "--streaming", "true", "--max_steps", "2"])
    resolve("stage2", *args)
    assert args[3].accelerator_config.dispatch_batches is False
