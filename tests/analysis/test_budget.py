"""The budget command (Table IV): FLOP deltas against the projector formula, the 0.5B-SI ratios against the paper,
the side-by-side timing rounds, the command's table and figure, and that a patched model is left as it came."""

from __future__ import annotations

import csv
import math
import sys

import pytest
import torch
from support.helpers import tiny_model
from transformers import LlavaOnevisionForConditionalGeneration
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

from llava_manager import apply_manager, get_managers, has_manager
from llava_manager.analysis import timing
from llava_manager.analysis.__main__ import main as analysis
from llava_manager.analysis.budget import VARIANTS, measure_budget
from llava_manager.families.llava_onevision import onevision_0_5b_config


def projector_flops_per_token(config) -> int:
    """Linear(vision -> text) and Linear(text -> text), 2 FLOPs per multiply-add (biases and GELU are not counted)."""
    v, d = config.vision_config.hidden_size, config.text_config.hidden_size
    return 2 * (v * d + d * d)


def rows_by_name(rows):
    assert [r.variant for r in rows] == list(VARIANTS)
    return {r.variant: r for r in rows}


@pytest.mark.parametrize("image_hw", [(28, 28), (56, 84)])
def test_manager_flops_are_one_projector_pass_per_aggregated_layer_and_crop_token(image_hw):
    model = tiny_model(num_vision_layers=6, num_text_layers=8)
    cfg = model.config
    rows = rows_by_name(measure_budget(model, image_size=image_hw, text_tokens=6, timings=False))

    aggregated = math.ceil(cfg.vision_config.num_hidden_layers / 2)  # top half of the layers feeding the LLM
    tokens_per_crop = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
    crops = image_size_to_num_patches(image_hw, cfg.image_grid_pinpoints, cfg.vision_config.image_size)
    per_token = projector_flops_per_token(cfg)

    assert rows["+Manager"].flops - rows["Baseline"].flops == aggregated * tokens_per_crop * per_token
    assert rows["+Grid+Manager"].flops - rows["+Grid"].flops == aggregated * crops * tokens_per_crop * per_token
    # Baseline feeds the base crop and its newline; +Grid the model's own anyres packing.
    assert rows["Baseline"].image_tokens == tokens_per_crop + 1
    with torch.no_grad():
        pixel_values = torch.randn(1, crops, 3, cfg.vision_config.image_size, cfg.vision_config.image_size)
        packed = model.model.get_image_features(pixel_values, torch.tensor([image_hw])).pooler_output[0]
    assert rows["+Grid"].image_tokens == len(packed) > rows["Baseline"].image_tokens
    managers = 2 * aggregated * cfg.text_config.hidden_size  # decoder layers 0 and 4 of 8
    assert rows["+Manager"].parameters - rows["Baseline"].parameters == managers
    assert rows["+Grid"].parameters == rows["Baseline"].parameters
    assert not has_manager(model)


@pytest.mark.slow
def test_budget_at_the_0_5b_shape_reproduces_table_iv():
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(onevision_0_5b_config()).eval()
    rows = rows_by_name(measure_budget(model, timings=False))
    base = rows["Baseline"]
    # Table IV: 893.62 M parameters; FLOPs x1.02 (+Manager), x1.78 (+Grid), x1.82 (+Grid+Manager).
    assert round(base.parameters / 1e6, 2) == 893.62
    assert rows["+Manager"].parameters - base.parameters == 6 * 13 * 896
    assert [round(rows[n].flops / base.flops, 2) for n in ("+Manager", "+Grid", "+Grid+Manager")] == [1.02, 1.78, 1.82]
    # 13 layers x 729 tokens x (1152 x 896 + 896 x 896) multiply-adds = Table IV's 17.39 G, twice with one grid crop.
    assert rows["+Manager"].flops - base.flops == 2 * 17_390_370_816
    assert rows["+Grid+Manager"].flops - rows["+Grid"].flops == 2 * 2 * 17_390_370_816


def test_rounds_rotate_the_order_and_ratios_pair_within_a_round():
    calls = []
    clock = iter([1.0, 2.0, 4.0, 2.0, 1.0, 3.0, 9.0, 9.0, 9.0])

    def fn(name):
        def go():
            calls.append(name)
            return next(clock) if len(calls) > 3 else 0.0  # the warm-up calls return nothing measured

        return go

    times = timing.rounds({n: fn(n) for n in "abc"}, repeats=2, desc="test")
    assert calls == list("abc") + list("abc") + list("bca")
    assert times == {"a": [1.0, 3.0], "b": [2.0, 2.0], "c": [4.0, 1.0]}
    ratios = timing.ratio_to(times, "a")
    assert ratios == {"a": 1.0, "b": pytest.approx((2.0 + 2.0 / 3.0) / 2), "c": pytest.approx((4.0 + 1.0 / 3.0) / 2)}
    with pytest.raises(ValueError, match="repeats"):
        timing.rounds({"a": fn("a")}, repeats=0, desc="test")


def test_budget_command_on_a_patched_directory(tmp_path):
    model = tiny_model()
    base_parameters = sum(p.numel() for p in model.parameters())
    apply_manager(model)
    with torch.no_grad():
        for manager in get_managers(model):
            manager.weight.normal_()
    model.save_pretrained(tmp_path / "model")

    out = tmp_path / "budget"
    paths = analysis(
        [
            "budget",
            "--model",
            str(tmp_path / "model"),
            "--image-size",
            "56",
            "56",
            "--text-tokens",
            "8",
            "--new-tokens",
            "2",
            "--repeats",
            "2",
            "--out",
            str(out),
        ]
    )
    assert paths["png"].stat().st_size > 0
    with paths["csv"].open() as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert list(rows) == list(VARIANTS)
    assert int(rows["Baseline"]["parameters"]) == base_parameters
    assert int(rows["+Manager"]["parameters"]) == sum(p.numel() for p in model.parameters())
    for row in rows.values():
        assert float(row["train_ms"]) > 0 and float(row["infer_ms"]) > 0
    for column in ("flops_ratio", "train_ratio", "infer_ratio"):
        assert float(rows["Baseline"][column]) == 1.0
    assert float(rows["+Grid"]["flops_ratio"]) > float(rows["+Manager"]["flops_ratio"]) > 1.0


def test_budget_leaves_a_patched_model_as_it_came_even_on_error():
    model = tiny_model()
    apply_manager(model, interval=2)
    with torch.no_grad():
        for manager in get_managers(model):
            manager.weight.normal_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = rows_by_name(measure_budget(model, image_size=(28, 28), text_tokens=4, new_tokens=1, repeats=1))
    assert rows["+Manager"].parameters - rows["Baseline"].parameters == 4 * 3 * 32  # the model's own layout
    with pytest.raises(ValueError, match="text_tokens"):
        measure_budget(model, text_tokens=1, timings=False)
    with pytest.raises(ValueError, match="repeats"):
        measure_budget(model, repeats=0)
    assert has_manager(model) and not model.training
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_budget_command_rejects_conflicting_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        analysis(["budget", "--model", str(tmp_path), "--shape", "tiny", "--out", str(tmp_path)])
    assert "--model DIR or --shape, not both" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        analysis(["weights", "--out", str(tmp_path)])
    assert "weights needs --model" in capsys.readouterr().err


def test_analysis_commands_name_the_missing_plotting_package_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(ImportError, match=r"llava-manager\[analysis\]"):
        analysis(["budget", "--shape", "0.5b", "--out", str(tmp_path)])  # would take minutes if it got that far
