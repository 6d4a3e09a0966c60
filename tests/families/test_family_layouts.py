"""The paper's rule at every family's published sizes (the README's table), the overhead benchmark's FLOP
extrapolation, and the budget command on every family."""

from __future__ import annotations

import csv
import importlib.util
import math

import pytest
import torch
from support.family_models import family_model
from support.helpers import ROOT

from llava_manager import apply_manager, get_managers
from llava_manager.analysis.__main__ import main as analysis
from llava_manager.analysis.budget import measure_budget
from llava_manager.analysis.layouts import markdown_table, published_layouts
from llava_manager.families import FAMILIES as PACKAGE_FAMILIES
from llava_manager.families import get_family

# The checkpoints the README's table lists, with the config fields the rule reads, as the Hub configs give them
# (llava-hf/llava-1.5-7b-hf, llava-v1.6-mistral-7b-hf, LLaVA-NeXT-Video-7B-hf: CLIP ViT-L/336, 24 layers,
# vision_feature_layer -2, 4096 x 32 decoder; llava-onevision-qwen2-0.5b/7b-ov-hf: SigLIP 26 layers, -1, Qwen2
# 896 x 24 and 3584 x 28).
PUBLISHED = {
    "llava-1.5-7b": dict(vision_layers=24, feature_layer=-2, decoder_layers=32, hidden=4096),
    "llava-v1.6-mistral-7b": dict(vision_layers=24, feature_layer=-2, decoder_layers=32, hidden=4096),
    "LLaVA-NeXT-Video-7B": dict(vision_layers=24, feature_layer=-2, decoder_layers=32, hidden=4096),
    "llava-onevision-qwen2-0.5b-ov": dict(vision_layers=26, feature_layer=-1, decoder_layers=24, hidden=896),
    "llava-onevision-qwen2-7b-ov": dict(vision_layers=26, feature_layer=-1, decoder_layers=28, hidden=3584),
    # The others feed the LLM from their last vision layer. Sources: the config.json copies cited in each adapter
    # (Qwen2-VL-7B: vision depth 32 by Qwen2VLVisionConfig's default, 28 x 3584; Qwen2.5-VL-3B/7B: depth 32,
    # 36 x 2048 / 28 x 3584; Qwen3-VL-8B: depth 27, 36 x 4096; Qwen3-VL-30B-A3B: depth 27, 48 x 2048; InternVL3-1B:
    # InternViT-300M 24 layers, 24 x 896; gemma-3-4b-it: SigLIP 27 layers, 34 x 2560; Pixtral-12B and
    # Mistral-Small-3.1: Pixtral 24 layers, 40 x 5120).
    "pixtral-12b": dict(vision_layers=24, feature_layer=-1, decoder_layers=40, hidden=5120),
    "Qwen2-VL-7B-Instruct": dict(vision_layers=32, feature_layer=-1, decoder_layers=28, hidden=3584),
    "Qwen2.5-VL-3B-Instruct": dict(vision_layers=32, feature_layer=-1, decoder_layers=36, hidden=2048),
    "Qwen2.5-VL-7B-Instruct": dict(vision_layers=32, feature_layer=-1, decoder_layers=28, hidden=3584),
    "Qwen3-VL-8B-Instruct": dict(vision_layers=27, feature_layer=-1, decoder_layers=36, hidden=4096),
    "Qwen3-VL-30B-A3B-Instruct": dict(vision_layers=27, feature_layer=-1, decoder_layers=48, hidden=2048),
    "InternVL3-1B-hf": dict(vision_layers=24, feature_layer=-1, decoder_layers=24, hidden=896),
    "gemma-3-4b-it": dict(vision_layers=27, feature_layer=-1, decoder_layers=34, hidden=2560),
    "Mistral-Small-3.1-24B-Instruct-2503": dict(vision_layers=24, feature_layer=-1, decoder_layers=40, hidden=5120),
}


@pytest.fixture(scope="module")
def layouts():
    return published_layouts()


def test_published_layouts_follow_the_papers_rule(layouts):
    assert sorted(r.checkpoint for r in layouts) == sorted(PUBLISHED)
    for row in layouts:
        spec = PUBLISHED[row.checkpoint]
        f = spec["vision_layers"] + 1 + spec["feature_layer"]  # hidden_states has one more entry than layers
        top = math.ceil(f / 2)
        assert row.feature_layer == f
        assert row.vision_layers == tuple(range(f - top + 1, f + 1))
        assert row.inject_layers == tuple(range(0, spec["decoder_layers"], 4))
        assert row.parameters == len(row.inject_layers) * top * spec["hidden"]
    clip = next(r for r in layouts if r.checkpoint == "llava-1.5-7b")
    assert clip.vision_layers == tuple(range(12, 24)) and clip.parameters == 8 * 12 * 4096


def test_readme_table_is_the_computed_one(layouts):
    assert markdown_table(layouts) in (ROOT / "README.md").read_text()


def test_layouts_command_writes_the_table(tmp_path, capsys):
    paths = analysis(["layouts", "--out", str(tmp_path)])
    with paths["table"].open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["checkpoint"] for r in rows) == sorted(PUBLISHED)
    assert "| LLaVA-1.5 | `llava-hf/llava-1.5-7b-hf` |" in capsys.readouterr().out


def _overhead_module():
    spec = importlib.util.spec_from_file_location("overhead", ROOT / "benchmarks" / "overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("family", list(PACKAGE_FAMILIES))
def test_benchmark_flop_extrapolation_equals_a_direct_count(family):
    """The benchmark counts FLOPs at depths 1 and 2 and carries them to the real depth; on a tiny shape, where the
    real depth fits, that must equal counting the real depth directly."""
    overhead = _overhead_module()
    adapter = get_family(family)

    class Args:
        prompt_tokens = 6
        image_side = 40

    hybrid = family.startswith("qwen3_5")  # runs of 3 linear-attention and 1 full-attention layers

    def make_config():
        return adapter.tiny_config(num_text_layers=12 if hybrid else 9)

    got = overhead.published_flops(adapter, make_config, Args, torch.device("cpu"), torch.float32)
    model = overhead.build(adapter, make_config, None, torch.device("cpu"), torch.float32)
    inputs = overhead.inputs_for(model, adapter, Args.prompt_tokens, Args.image_side)
    base, patched = overhead.counted(model, inputs)  # managers before layers 0, 4, 8
    assert got["managers"] == 3 and len(get_managers(apply_manager(model))) == 3
    assert (got["base"], got["patched"]) == (base, patched)
    assert patched > base


@pytest.mark.parametrize("family", ["llava", "llava_next", "llava_next_video"])
def test_budget_on_families_without_optional_grids(family):
    model = family_model(family)
    rows = measure_budget(model, image_size=(40, 80), text_tokens=6, timings=False)
    assert [r.variant for r in rows] == ["Baseline", "+Manager"]
    base, managed = rows
    apply_manager(model)
    assert managed.parameters - base.parameters == sum(m.weight.numel() for m in get_managers(model))
    assert managed.flops > base.flops and base.image_tokens == managed.image_tokens
