"""Analyses: each number against its definition, the collectors against the model's own outputs, and the commands'
figures and tables."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageTextToText

from llava_manager import apply_manager, get_managers
from llava_manager.analysis import collect, metrics
from llava_manager.analysis.__main__ import main as analysis
from llava_manager.analysis.inputs import encode, load_samples
from llava_manager.synthetic.data import draw_shape, tiny_model_config, tiny_processor


def test_entropy_and_restriction_by_definition():
    uniform = torch.full((1, 1, 4), 0.25)
    assert metrics.entropy(uniform) == pytest.approx(math.log(4))
    assert metrics.entropy(torch.tensor([[[1.0, 0.0, 0.0]]])) == pytest.approx(0.0, abs=1e-6)
    attention = torch.tensor([[[0.5, 0.2, 0.3], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]]])  # (1 head, 3 q, 3 k)
    queries = torch.tensor([False, True, True])
    keys = torch.tensor([True, False, True])
    part = metrics.restrict(attention, queries, keys)
    assert torch.allclose(part, torch.tensor([[[0.25, 0.75], [0.25, 0.75]]]))
    assert metrics.entropy(part) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), rel=1e-5)


def test_head_divergence_by_definition():
    p, q = [0.5, 0.5], [0.9, 0.1]
    kl = lambda a, b: sum(x * math.log(x / y) for x, y in zip(a, b))  # noqa: E731
    heads = torch.tensor([[p], [q]])  # (2 heads, 1 query, 2 keys)
    assert metrics.head_divergence(heads) == pytest.approx((kl(p, q) + kl(q, p)) / 2, rel=1e-5)
    assert metrics.head_divergence(torch.tensor([[p], [p]])) == pytest.approx(0.0, abs=1e-6)


def test_consecutive_cosine_and_attention_distance_by_definition():
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    b = torch.tensor([[[0.0, 1.0], [0.0, 2.0]]])
    values = metrics.consecutive_cosine([a, a, b], torch.tensor([True, True]))
    assert torch.allclose(values, torch.tensor([1.0, 0.5]))  # (0 + 1) / 2 for the second pair
    # 2 x 2 patches of 14 px: every query looks only at the patch diagonally opposite -> sqrt(2) * 14
    attention = torch.tensor([[[0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0.0]]])
    assert metrics.mean_attention_distance(attention, 2, 14) == pytest.approx(math.sqrt(2) * 14)
    # uniform over 2 x 2: each query is 0, 14, 14, 14 sqrt(2) px from the four patches
    uniform = torch.full((1, 4, 4), 0.25)
    assert metrics.mean_attention_distance(uniform, 2, 14) == pytest.approx((0 + 14 + 14 + 14 * math.sqrt(2)) / 4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    processor = tiny_processor()
    torch.manual_seed(0)
    base = AutoModelForImageTextToText.from_config(tiny_model_config(processor)).eval()
    base.save_pretrained(root / "base")
    processor.save_pretrained(root / "base")
    patched = apply_manager(base, interval=2)
    with torch.no_grad():
        for m in get_managers(patched):
            m.weight.normal_(std=1.0)
    patched.save_pretrained(root / "patched")
    processor.save_pretrained(root / "patched")
    images = root / "images"
    images.mkdir()
    draw_shape("circle", "red", "left", "white", (28, 56)).save(images / "a.png")
    draw_shape("square", "blue", "top", "black", (56, 56)).save(images / "b.png")
    (images / "b.txt").write_text("Where is the shape ?")
    return root, patched, processor


def test_collectors_match_the_models_own_outputs(tiny):
    root, model, processor = tiny
    samples = load_samples(root / "images")
    assert [p for _, p in samples] == ["Describe the image in detail.", "Where is the shape ?"]
    image, prompt = samples[0]
    inputs = encode(processor, image, prompt)
    visual, text = collect.positions(inputs, model.config.image_token_id)

    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True, output_attentions=True)
    model.set_attn_implementation("sdpa")

    stats = collect.attention_statistics(model, processor, samples[:1])
    for layer, attention in enumerate(out.attentions):
        a = attention[0][:, visual][:, :, visual]
        a = a / a.sum(-1, keepdim=True)
        expected = -(a * a.clamp_min(1e-12).log()).sum(-1).mean()
        assert stats["visual_entropy"][layer] == pytest.approx(float(expected), rel=1e-4)
        c = attention[0][:, text][:, :, visual]
        c = c / c.sum(-1, keepdim=True)
        kl = [(c[i] * (c[i].log() - c[j].log())).sum(-1).mean() for i in range(len(c)) for j in range(len(c)) if i != j]
        assert stats["text_to_visual_head_kl"][layer] == pytest.approx(float(sum(kl) / len(kl)), rel=1e-3)

    similarity = collect.layer_similarity(model, processor, samples[:1])
    hidden = out.hidden_states  # [embeddings, out of layer 0, ..., final norm(out of last layer)]
    for layer in range(len(hidden) - 3):
        flat = lambda h: h[0][text]  # noqa: E731
        expected = F.cosine_similarity(flat(hidden[layer + 1]), flat(hidden[layer + 2]), dim=-1).mean()
        assert similarity["text"][layer] == pytest.approx(float(expected), rel=1e-5)

    distances = collect.siglip_attention_distance(model, processor, samples[:1])
    vision = model.config.vision_config
    grid = vision.image_size // vision.patch_size
    model.set_attn_implementation("eager")
    with torch.no_grad():
        crops = inputs["pixel_values"][0]
        crops = crops[: int(crops.flatten(1).abs().sum(1).gt(0).sum())]  # the image's real crops, not padding
        vision_out = model.model.vision_tower(crops, output_attentions=True)
    model.set_attn_implementation("sdpa")
    coords = torch.tensor([[r, c] for r in range(grid) for c in range(grid)], dtype=torch.float) * vision.patch_size
    dist = torch.cdist(coords, coords)
    for layer, attention in enumerate(vision_out.attentions):
        expected = (attention * dist).sum(-1).mean(-1).mean(0)  # over queries, then crops
        assert torch.allclose(distances[layer], expected, rtol=1e-4)


def test_commands_write_figures_and_tables(tiny, tmp_path):
    root, model, _ = tiny
    records = [
        {
            "id": "a",
            "image": "a.png",
            "conversations": [{"from": "human", "value": "<image>\nWhat colour ?"}, {"from": "gpt", "value": "red ."}],
        }
    ]
    (root / "images" / "data.json").write_text(json.dumps(records))
    runs = {
        "weights": [],
        "similarity": ["--inputs", str(root / "images"), "--compare", str(root / "base")],
        "attention": ["--inputs", str(root / "images" / "data.json"), "--compare", str(root / "base")],
        "siglip": ["--inputs", str(root / "images"), "--limit", "1"],
    }
    for command, extra in runs.items():
        paths = analysis([command, "--model", str(root / "patched"), "--out", str(tmp_path / command), *extra])
        for path in paths.values():
            assert path.exists() and path.stat().st_size > 0
            if path.suffix == ".png":
                assert path.read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader((tmp_path / "weights" / "aggregation_weights.csv").open()))
    managers = get_managers(model)
    assert len(rows) == len(managers) * len(managers[0].vision_layers)
    assert float(rows[1]["row_l2_norm"]) == pytest.approx(float(managers[0].weight[1].detach().norm()), rel=1e-5)
    header = next(csv.reader((tmp_path / "similarity" / "layer_similarity.csv").open()))
    assert header == ["layer", "patched, visual", "patched, text", "base, visual", "base, text"]
    with pytest.raises(SystemExit):
        analysis(["attention", "--model", str(root / "patched"), "--out", str(tmp_path / "x")])


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "internvl", "gemma3"])
def test_commands_on_the_other_families(family, tmp_path):
    """weights, similarity and attention on a saved model of another family (its own processor, prompt markers and
    token types); the SigLIP attention distance, which needs square crops of a fixed patch grid, is refused."""
    processor = tiny_processor(family=family)
    torch.manual_seed(0)
    base = AutoModelForImageTextToText.from_config(tiny_model_config(processor, family=family)).eval()
    base.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    patched = apply_manager(base, interval=2)
    with torch.no_grad():
        for m in get_managers(patched):
            m.weight.normal_(std=1.0)
    patched.save_pretrained(tmp_path / "patched")
    processor.save_pretrained(tmp_path / "patched")
    images = tmp_path / "images"
    images.mkdir()
    draw_shape("circle", "red", "left", "white", (28, 56)).save(images / "a.png")
    prompts = ["--prompt-format", "qwen_1_5"]  # the tiny processors carry no chat template
    runs = {
        "weights": [],
        "similarity": ["--inputs", str(images), "--compare", str(tmp_path / "base"), *prompts],
        "attention": ["--inputs", str(images), "--compare", str(tmp_path / "base"), *prompts],
    }
    for command, extra in runs.items():
        paths = analysis([command, "--model", str(tmp_path / "patched"), "--out", str(tmp_path / command), *extra])
        assert all(path.exists() and path.stat().st_size > 0 for path in paths.values())
    rows = list(csv.DictReader((tmp_path / "similarity" / "layer_similarity.csv").open()))
    assert len(rows) == patched.config.text_config.num_hidden_layers - 1
    assert all(-1 <= float(row["patched, visual"]) <= 1 for row in rows)
    if family != "gemma3":  # a SigLIP tower
        with pytest.raises(ValueError, match="needs a CLIP or SigLIP tower"):
            analysis(
                [
                    "siglip",
                    "--model",
                    str(tmp_path / "patched"),
                    "--out",
                    str(tmp_path / "s"),
                    "--inputs",
                    str(images),
                    *prompts,
                ]
            )
