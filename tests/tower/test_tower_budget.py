"""tower.analysis.budget (Table VI), tower.analysis.figures (Fig. 7) and the `python -m llava_manager.tower` commands,
against counts written here by hand (from the official heads.py / bert_model.py shapes) on tiny configs; the BASE size
is counted on the meta device only."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from support.tower_models import tiny_inputs, tiny_tower_config, tiny_tower_kwargs

from llava_manager.tower import ManagerTowerModel
from llava_manager.tower.analysis.budget import (
    count_macs,
    format_table,
    fused_query_macs,
    tower_budget,
)
from llava_manager.tower.analysis.figures import aggregation_weights, plot_aggregation_weights

REPO = Path(__file__).resolve().parents[2]

# Tiny sizes (support/tower_models.py): cross-modal width D = 32, N = 3 managed layers, C = 2 cross-modal layers,
# text width 32, vision width 64, 32 px images of 16 px patches: P = 2 * 2 + 1 = 5 image tokens.
D, N, C, D_TEXT, D_VISION, P = 32, 3, 2, 32, 64, 5
T = 7  # text length


# ---------------------------------------------------------------------------------------------------------------------
# Parameters at BASE (meta device)


def test_base_parameters_match_the_official_arithmetic():
    rows = {r.name: r for r in tower_budget(flops=False)}
    assert list(rows) == ["bridge", "saum", "aaum_own", "aaum"]
    bridge = rows["bridge"].parameters
    # official: BT* 326,580,993 = this model + 40,448 CLIP-text leftovers + the ITC temperature
    assert bridge == 326_580_993 - 40_448 - 1
    # official: SAUM +188,952 and AAUM +12,062,292, each with 12 unused softmax_temperature_cross this model lacks
    assert rows["saum"].parameters - bridge == 188_952 - 12
    assert rows["aaum"].parameters - bridge == 12_062_292 - 12
    # AAUM with the own query: SAUM + per AAUM manager (5 layers x 2) the controller D x 6 + 6 and w_C (768) instead
    # of SAUM's last layer_scores row (768): +6 each
    assert rows["aaum_own"].parameters - rows["saum"].parameters == 10 * 6
    assert rows["bridge"].official_parameters == 326_580_993
    assert rows["saum"].official_parameters == 326_769_945
    assert rows["aaum"].official_parameters == 338_643_285
    for row in rows.values():  # Table VI, to its two decimals
        assert round(row.official_parameters / 1e6, 2) == row.paper_parameters_m
        assert row.macs is None and row.flops_ratio is None
    assert rows["aaum"].parameters_ratio == pytest.approx(1.0369, abs=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# FLOPs on tiny configs against hand counts


def test_counter_counts_a_clip_block_and_its_attention():
    """CLIP's nn.MultiheadAttention runs SDPA, whose CPU kernel torch's table lacks: counted here by hand."""
    from transformers import BridgeTowerVisionConfig
    from transformers.models.bridgetower.modeling_bridgetower import BridgeTowerResidualAttention

    length, width = 9, 64
    block = BridgeTowerResidualAttention(BridgeTowerVisionConfig(hidden_size=width)).eval()
    x = torch.randn(length, 1, width)
    with torch.no_grad():
        counts = count_macs(block, x)
    projections = length * (3 * width * width + width * width)  # in_proj (q, k, v) and out_proj
    attention = 2 * length * length * width  # QK^T and AV
    mlp = length * (width * 4 * width) * 2
    assert counts["macs"] == projections + attention + mlp
    assert counts["layer_norm_macs"] == 2 * 5 * length * width  # ln_1, ln_2 at fvcore's 5 per element
    assert counts["by_op"]["aten._scaled_dot_product_flash_attention_for_cpu"] == attention
    torch.testing.assert_close(counts["output"], block(x))
    assert torch.backends.mha.get_fastpath_enabled()  # restored after counting


@pytest.fixture(scope="module")
def tiny_rows():
    rows = tower_budget(tiny_tower_kwargs(num_managed_layers=N), image_size=32, text_length=T)
    return {r.name: r for r in rows}


def hand_fused_query(query: str) -> int:
    """AAUM - SAUM multiply-adds (official heads.py shapes) in the C - 1 AAUM layers, text manager (own T, other P) and
    image
    manager (own P, other T): q projection own D^2, k projection other D^2, QK^T and AV 2 own other D, controller
    own (2D | D) N; the own query has the controller D -> N only."""
    total = 0
    for own, other in ((T, P), (P, T)):
        if query == "own":
            total += own * D * N
        else:
            total += own * D * D + other * D * D + 2 * own * other * D + own * 2 * D * N
    return (C - 1) * total


def test_aaum_flops_over_saum_equal_the_hand_count(tiny_rows):
    saum, own, fused = tiny_rows["saum"], tiny_rows["aaum_own"], tiny_rows["aaum"]
    assert fused.macs - saum.macs == hand_fused_query("fused_concat")
    assert own.macs - saum.macs == hand_fused_query("own")
    # LayerNorms: the fused query adds extra_query_LayerNorm over the other modality's previous output
    assert fused.layer_norm_macs - saum.layer_norm_macs == (C - 1) * 5 * (P + T) * D
    assert own.layer_norm_macs == saum.layer_norm_macs
    # the module's own analytic count agrees
    assert fused.analytic_fused_query_macs == hand_fused_query("fused_concat")
    assert own.analytic_fused_query_macs == hand_fused_query("own")
    config = tiny_tower_config(manager_type="aaum", aaum_query="fused_replace")
    replace = sum(
        length * D * D + other * D * D + 2 * length * other * D + length * D * N for length, other in ((T, P), (P, T))
    )  # the paper's query: controller D -> N
    assert fused_query_macs(config, T, P) == (C - 1) * replace


def test_saum_over_bridge_is_the_projections_of_the_extra_managed_layers(tiny_rows):
    """BridgeTower projects C unimodal layers (one per cross-modal layer), the managers N; the rest is equal."""
    bridge, saum = tiny_rows["bridge"], tiny_rows["saum"]
    per_layer = T * D_TEXT * D + P * D_VISION * D
    assert saum.macs - bridge.macs == (N - C) * per_layer
    # LayerNorms: SAUM's per modality N (first layer) + N + 1 (later layers) against BridgeTower's C - 1 link
    # LayerNorms and 1 input LayerNorm; plus ln_post of N vs C vision layers
    saum_ln = (N + (C - 1) * (N + 1)) * (T + P) * D + (N - C) * P * D_VISION
    bridge_ln = C * (T + P) * D
    assert saum.layer_norm_macs - bridge.layer_norm_macs == 5 * (saum_ln - bridge_ln)
    assert bridge.flops_ratio == 1.0 and saum.flops_ratio > 1.0


def test_table_lists_every_row(tiny_rows):
    table = format_table(list(tiny_rows.values()))
    lines = table.splitlines()
    assert lines[0].startswith("| model") and set(lines[1]) <= {"|", "-", ":"}
    assert len({len(line) for line in lines[:6]}) == 1  # aligned
    for row in tiny_rows.values():
        assert row.label in table and f"{row.parameters:,}" in table
    assert "MACs matmul" in table and "fused_query_macs" in table


# ---------------------------------------------------------------------------------------------------------------------
# Fig. 7


def saum_with_scores(seed=0):
    torch.manual_seed(seed)
    model = ManagerTowerModel(tiny_tower_config(manager_type="saum")).eval()
    g = torch.Generator().manual_seed(seed)
    for managers in (model.cross_modal_text_managers, model.cross_modal_image_managers):
        for manager in managers:
            with torch.no_grad():
                manager.layer_scores.copy_(torch.randn(manager.layer_scores.shape, generator=g))
                manager.softmax_temperature.fill_(0.5 + torch.rand(1, generator=g).item())
    return model


def test_averaged_weights_of_saum_are_its_softmaxed_scores():
    model = saum_with_scores()
    batches = [tiny_inputs(2, 7, seed=0), tiny_inputs(3, 6, seed=1)]
    result = aggregation_weights(model, batches, progress=False)
    assert result["samples"] == 5 and result["text"].shape == result["image"].shape == (C, N)
    assert result["text_layers"] == [2, 3, 4] and result["image_layers"][-1] == 4
    for key, managers in (("text", model.cross_modal_text_managers), ("image", model.cross_modal_image_managers)):
        for layer, manager in enumerate(managers):
            scores = manager.layer_scores.detach().double()[0, :N, 0, :]  # N x D; w_C (last row) is not softmaxed
            expected = torch.softmax(scores / manager.softmax_temperature.item(), dim=0).mean(dim=1)
            torch.testing.assert_close(torch.from_numpy(result[key][layer]), expected, rtol=0, atol=1e-6)
    assert model.training is False


def test_aaum_weights_average_non_padding_tokens_per_sample():
    torch.manual_seed(0)
    model = ManagerTowerModel(tiny_tower_config(manager_type="aaum"))
    with torch.no_grad():  # controllers far from 0, so the weights vary by token
        for m in model.cross_modal_text_managers[1:]:
            m.linear_controller.weight.normal_(0, 1.0)
    model.train()  # aggregation_weights measures in eval mode and restores the mode
    batch = tiny_inputs(2, 7, seed=3)  # sample 1 is padded after 5 tokens
    result = aggregation_weights(model, [batch], progress=False)
    assert model.training
    model.eval()
    with torch.no_grad():
        weights = model(**batch, output_aggregation_weights=True).aggregation_weights
    text = weights[1][0].mean(dim=-1)  # B x N x L
    expected = (text[0, :, :].mean(dim=-1) + text[1, :, :5].mean(dim=-1)) / 2
    torch.testing.assert_close(torch.from_numpy(result["text"][1]).float(), expected, rtol=0, atol=1e-6)
    with_padding = text.mean(dim=(0, 2))
    assert not torch.allclose(with_padding, expected, atol=1e-4)
    image = weights[1][1].mean(dim=-1).mean(dim=(0, 2))
    torch.testing.assert_close(torch.from_numpy(result["image"][1]).float(), image, rtol=0, atol=1e-6)
    for key in ("text", "image"):
        torch.testing.assert_close(torch.from_numpy(result[key].sum(axis=1)), torch.ones(C, dtype=torch.float64))


def test_bridge_has_no_aggregation_weights():
    model = ManagerTowerModel(tiny_tower_config(manager_type="bridge"))
    with pytest.raises(ValueError, match="managers"):
        aggregation_weights(model, [tiny_inputs(1)], progress=False)


@pytest.mark.parametrize("layout", ["paper", "overlay"])
def test_plot_writes_a_png(tmp_path, layout):
    result = aggregation_weights(saum_with_scores(), [tiny_inputs(2)], progress=False)
    path = plot_aggregation_weights(result, tmp_path / "figs" / "fig7.png", layout=layout)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 200


# ---------------------------------------------------------------------------------------------------------------------
# Commands


def test_budget_command_params_only():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "llava_manager.tower", "budget", "--params-only"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for text in ("BridgeTower (BT*)", "326,540,544", "+188,940", "+12,062,280", "338.64M", "40,448"):
        assert text in out
    assert "MACs" not in out.split("\n\n")[0]  # no FLOP columns


def tiny_checkpoint(tmp_path, cls=ManagerTowerModel, manager_type="aaum", processor=False, **extra):
    from llava_manager.tower.data.synthetic import tiny_tower_processor, tiny_tower_tokenizer

    kwargs = tiny_tower_kwargs()
    kwargs["text_config"] = {**kwargs["text_config"], "vocab_size": len(tiny_tower_tokenizer())}
    torch.manual_seed(0)
    model = cls(tiny_tower_config(manager_type=manager_type, **{**kwargs, **extra}))
    path = tmp_path / "checkpoint"
    model.save_pretrained(path)
    if processor:
        tiny_tower_processor().save_pretrained(path)
    return path


def test_weights_command_on_synthetic_pretraining_data(tmp_path, capsys):
    from llava_manager.tower.__main__ import main

    checkpoint = tiny_checkpoint(tmp_path)
    out = tmp_path / "out" / "fig7.png"
    paths = main(
        [
            "weights",
            str(checkpoint),
            "--task",
            "pretrain",
            "--out",
            str(out),
            "--max-samples",
            "6",
            "--batch-size",
            "4",
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert paths["png"] == out and paths["json"] == out.with_suffix(".json")
    with Image.open(out) as image:
        assert image.format == "PNG"
    numbers = json.loads(paths["json"].read_text())
    assert numbers["samples"] == 6 and numbers["manager_type"] == "aaum"
    for key in ("text", "image"):
        assert len(numbers[key]) == C and all(len(row) == N and abs(sum(row) - 1) < 1e-6 for row in numbers[key])
    assert "synthetic pretrain" in capsys.readouterr().out


def test_weights_command_loads_a_task_checkpoint_with_its_processor(tmp_path):
    heads = pytest.importorskip("llava_manager.tower.heads")
    from llava_manager.tower.__main__ import load_tower, main

    checkpoint = tiny_checkpoint(
        tmp_path, cls=heads.ManagerTowerForVisualEntailment, manager_type="saum", processor=True
    )
    model, net = load_tower(checkpoint)
    assert type(model) is heads.ManagerTowerForVisualEntailment and isinstance(net, ManagerTowerModel)
    paths = main(
        [
            "weights",
            str(checkpoint),
            "--task",
            "snli_ve",
            "--out",
            str(tmp_path / "w.png"),
            "--max-samples",
            "4",
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    numbers = json.loads(paths["json"].read_text())
    assert numbers["samples"] == 4 and numbers["manager_type"] == "saum"
