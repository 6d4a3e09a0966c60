"""ManagerTowerModel against independent references written here from the paper's equations and the official code."""

import math

import pytest
import torch
import torch.nn.functional as F
from support.tower_models import tiny_inputs, tiny_tower_config, tiny_tower_kwargs
from transformers import BridgeTowerConfig, BridgeTowerModel

from llava_manager.tower import ManagerTowerConfig, ManagerTowerModel


def build(kind="aaum", seed=0, **overrides):
    torch.manual_seed(seed)
    return ManagerTowerModel(tiny_tower_config(manager_type=kind, **overrides))


def layer_inputs(model, inputs, **kwargs):
    """What each cross-modal text and image layer received as its own input (pre-hooks)."""
    seen = {}
    hooks = []
    for side in ("text", "image"):
        for i, layer in enumerate(getattr(model, f"cross_modal_{side}_layers")):
            hooks.append(
                layer.register_forward_pre_hook(
                    lambda mod, args, kw, key=(side, i): seen.__setitem__(key, args[0]), with_kwargs=True
                )
            )
    out = model(**inputs, **kwargs)
    for h in hooks:
        h.remove()
    return seen, out


def ln(x, module):
    return F.layer_norm(x, x.shape[-1:], module.weight, module.bias, module.eps)


def projected(model, out, side, n, image_type=1):
    """U_i of the top n layers of one tower, from the tower outputs: transform, + type, + layer embedding."""
    text_states, image_states, _ = out.hidden_states
    if side == "text":
        states, transform, type_row, emb = text_states, model.cross_modal_text_transform, 0, model.layer_embeddings_text
    else:
        visual = model.vision_model.visual
        states = [ln(s.permute(1, 0, 2), visual.ln_post) for s in image_states]
        transform, type_row, emb = model.cross_modal_image_transform, image_type, model.layer_embeddings_image
    depth = len(states) - 1
    return [
        F.linear(states[depth - n + 1 + j], transform.weight, transform.bias)
        + model.token_type_embeddings.weight[type_row]
        + emb.weight[depth - n + j]
        for j in range(n)
    ]


def reference_saum(manager, uni, previous=None):
    """Eq. 5: sum_i softmax(z / tau)_i LN_i(U_i) + w_C LN(C_{l-1}), z the pre-softmax weights."""
    n = len(uni)
    z = manager.layer_scores[0, :n, 0]  # n x D (or n x 1)
    w = torch.softmax(z / manager.softmax_temperature, dim=0)
    out = sum(w[i] * ln(uni[i], manager.LayerNorm[i]) for i in range(n))
    if previous is not None:
        out = out + manager.layer_scores[0, n, 0] * ln(previous, manager.LayerNorm[n])
    return out


def reference_aaum(manager, uni, own, other, query="fused_concat", other_mask=None):
    """Eq. 6-7 as the official AAUE: W_A = softmax(q W_M / tau) per token, q = [CA(LN(own), LN'(other)); LN(own)]."""
    n, d = len(uni), own.shape[-1]
    own_n = ln(own, manager.LayerNorm[n])
    if query == "own":
        q = own_n
    else:
        other_n = ln(other, manager.extra_query_LayerNorm)
        fa = manager.fusion_attention
        scores = (own_n @ fa.q_proj.weight.T + fa.q_proj.bias) @ (
            other_n @ fa.k_proj.weight.T + fa.k_proj.bias
        ).transpose(1, 2)
        scores = scores / math.sqrt(d)
        if other_mask is not None:
            scores = scores.masked_fill(other_mask[:, None, :] == 0, float("-inf"))
        fused = torch.softmax(scores, dim=-1) @ other_n
        q = torch.cat([fused, own_n], dim=-1) if query == "fused_concat" else fused
    logits = q @ manager.linear_controller.weight.T + manager.linear_controller.bias  # B x L x n
    w = torch.softmax(logits / manager.softmax_temperature, dim=-1)
    out = sum(w[..., i : i + 1] * ln(uni[i], manager.LayerNorm[i]) for i in range(n))
    return out + manager.layer_scores_cross[0, 0] * own_n


def randomise_managers(model, seed=1):
    """Move every manager parameter off its initial value, so the references see non-trivial weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "managers" in name or "layer_embeddings" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)


def test_bridge_is_transformers_bridgetower():
    torch.manual_seed(0)
    base = BridgeTowerModel(BridgeTowerConfig(**tiny_tower_kwargs())).eval()
    model = ManagerTowerModel(ManagerTowerConfig(manager_type="bridge", **tiny_tower_kwargs())).eval()
    assert set(base.state_dict()) == set(model.state_dict())
    model.load_state_dict(base.state_dict(), strict=True)
    inputs = tiny_inputs()
    with torch.no_grad():
        a, b = base(**inputs), model(**inputs)
    for field in ("text_features", "image_features", "pooler_output"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    for x, y in zip(a.hidden_states[2], b.hidden_states[2]):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])


@pytest.mark.parametrize("weight", ["vector", "scalar"])
def test_saum_first_and_later_layers_match_the_equation(weight):
    model = build("saum", manager_weight=weight).eval()
    randomise_managers(model)
    inputs = tiny_inputs()
    seen, out = layer_inputs(model, inputs, output_hidden_states=True)
    cross = out.hidden_states[2]
    with torch.no_grad():
        for side, k in (("text", 0), ("image", 1)):
            uni = projected(model, out, side, 3)
            managers = getattr(model, f"cross_modal_{side}_managers")
            torch.testing.assert_close(seen[(side, 0)], reference_saum(managers[0], uni))
            torch.testing.assert_close(seen[(side, 1)], reference_saum(managers[1], uni, cross[0][k]))


@pytest.mark.parametrize("query", ["fused_concat", "fused_replace", "own"])
def test_aaum_matches_the_equation(query):
    model = build("aaum", aaum_query=query).eval()
    randomise_managers(model)
    inputs = tiny_inputs()
    seen, out = layer_inputs(model, inputs, output_hidden_states=True)
    (t0, v0) = out.hidden_states[2][0]
    with torch.no_grad():
        text_uni, image_uni = projected(model, out, "text", 3), projected(model, out, "image", 3)
        # layer 0 is a SAUM with no cross-modal input
        torch.testing.assert_close(seen[("text", 0)], reference_saum(model.cross_modal_text_managers[0], text_uni))
        torch.testing.assert_close(
            seen[("text", 1)], reference_aaum(model.cross_modal_text_managers[1], text_uni, t0, v0, query)
        )
        # the published code does not mask the text padding in the image manager's fused query
        torch.testing.assert_close(
            seen[("image", 1)], reference_aaum(model.cross_modal_image_managers[1], image_uni, v0, t0, query)
        )


def test_masked_fused_query_ignores_text_padding():
    model = build("aaum", mask_fused_query=True).eval()
    randomise_managers(model)
    inputs = tiny_inputs()
    seen, out = layer_inputs(model, inputs, output_hidden_states=True)
    t0, v0 = out.hidden_states[2][0]
    with torch.no_grad():
        image_uni = projected(model, out, "image", 3)
        expected = reference_aaum(
            model.cross_modal_image_managers[1], image_uni, v0, t0, other_mask=inputs["attention_mask"]
        )
        unmasked = reference_aaum(model.cross_modal_image_managers[1], image_uni, v0, t0)
    torch.testing.assert_close(seen[("image", 1)], expected)
    assert not torch.allclose(seen[("image", 1)][1], unmasked[1])  # the padded sample differs
    torch.testing.assert_close(seen[("image", 1)][0], unmasked[0])  # the unpadded one does not


def test_sam_aggregates_all_previous_cross_modal_outputs():
    model = build("sam", num_hidden_layers=3).eval()
    randomise_managers(model)
    seen, out = layer_inputs(model, tiny_inputs(), output_hidden_states=True)
    cross = out.hidden_states[2]
    manager = model.cross_modal_text_managers[2]
    with torch.no_grad():
        uni = projected(model, out, "text", 3)
        w = torch.softmax(manager.layer_scores[0, :, 0] / manager.softmax_temperature, dim=0)
        wc = torch.softmax(manager.layer_scores_cross[0, :, 0] / manager.softmax_temperature_cross, dim=0)
        expected = sum(w[i] * ln(uni[i], manager.LayerNorm[i]) for i in range(3))
        expected = expected + sum(wc[j] * ln(cross[j][0], manager.LayerNorm[3 + j]) for j in range(2))
    torch.testing.assert_close(seen[("text", 2)], expected)


@pytest.mark.parametrize("kind", ["sam", "saum", "aaum"])
def test_weights_are_a_distribution_and_eval_has_no_noise(kind):
    model = build(kind)
    inputs = tiny_inputs()
    model.train()
    out = model(**inputs, output_aggregation_weights=True)
    for text_w, image_w in out.aggregation_weights:
        for w in (text_w, image_w):
            torch.testing.assert_close(w.sum(dim=1), torch.ones_like(w.sum(dim=1)))
            assert (w > 0).all()
    torch.manual_seed(3)
    a = model(**inputs).pooler_output
    torch.manual_seed(4)
    b = model(**inputs).pooler_output
    model.eval()  # dropout off too: the only difference left in training would be the manager noise
    with torch.no_grad():
        torch.manual_seed(3)
        c = model(**inputs).pooler_output
        torch.manual_seed(4)
        d = model(**inputs).pooler_output
    assert not torch.equal(a, b)
    assert torch.equal(c, d)


def test_noise_is_the_only_training_randomness_when_dropout_is_off():
    model = build(
        "aaum",
        text_config=dict(tiny_tower_kwargs()["text_config"], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    )
    model.train()
    inputs = tiny_inputs()
    torch.manual_seed(0)
    noisy = [model(**inputs).pooler_output for _ in range(2)]
    assert not torch.equal(*noisy)
    quiet = build(
        "aaum",
        manager_noise_std=0.0,
        text_config=dict(tiny_tower_kwargs()["text_config"], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    ).train()
    assert torch.equal(quiet(**inputs).pooler_output, quiet(**inputs).pooler_output)


def test_initial_weights_are_the_official_ones():
    model = build("aaum")
    first, later = model.cross_modal_text_managers[0], model.cross_modal_text_managers[1]
    assert torch.equal(first.layer_scores, torch.full((1, 3, 1, 32), 1 / 3))  # pre-softmax 1/N: uniform
    assert torch.equal(later.layer_scores_cross, torch.ones(1, 1, 1, 32))  # w_C = 1
    assert later.softmax_temperature.item() == 1.0
    assert later.linear_controller.weight.std().item() < 0.05 and torch.equal(
        later.linear_controller.bias, torch.zeros(3)
    )


def test_one_hot_saum_reproduces_bridgetowers_first_layer_input():
    torch.manual_seed(0)
    bridge = BridgeTowerModel(BridgeTowerConfig(**tiny_tower_kwargs())).eval()
    model = build("saum").eval()
    model.load_state_dict(bridge.state_dict(), strict=False)
    # BridgeTower's first cross-modal layer takes unimodal layer L - C + 1 = 3 (of 4); our N = 3 managed layers are
    # 2, 3, 4: the one-hot weight goes on the second.
    with torch.no_grad():
        for side in ("text", "image"):
            manager = getattr(model, f"cross_modal_{side}_managers")[0]
            manager.layer_scores.fill_(-1e4)
            manager.layer_scores[:, 1] = 1e4
            manager.LayerNorm[1].load_state_dict(getattr(bridge, f"cross_modal_{side}_layernorm").state_dict())
            getattr(model, f"layer_embeddings_{side}").weight.zero_()
    inputs = tiny_inputs()
    seen_model, _ = layer_inputs(model, inputs)
    seen_bridge, _ = layer_inputs(bridge, inputs)
    for side in ("text", "image"):
        torch.testing.assert_close(seen_model[(side, 0)], seen_bridge[(side, 0)])


@pytest.mark.parametrize("kind", ["sam", "saum", "aaum"])
def test_gradients_reach_every_manager_parameter(kind):
    # SAM: 3 cross-modal layers, so that the last softmaxes over 2 previous outputs (over 1, as in the second
    # layer, the softmax is constantly 1 and its weight and temperature get no gradient, by construction).
    model = build(kind, **({"num_hidden_layers": 3} if kind == "sam" else {})).train()
    model(**tiny_inputs()).pooler_output.square().sum().backward()
    managed = {n: p for n, p in model.named_parameters() if "managers" in n or "layer_embeddings" in n}
    assert managed
    # layer_embeddings rows of unmanaged layers are never used (as in the official code)
    constant = ("managers.1.layer_scores_cross", "managers.1.softmax_temperature_cross") if kind == "sam" else ()
    missing = [
        n
        for n, p in managed.items()
        if "layer_embeddings" not in n and not n.endswith(constant) and (p.grad is None or not p.grad.any())
    ]
    assert not missing
    for side, depth in (("text", 4), ("image", 4)):
        grad = getattr(model, f"layer_embeddings_{side}").weight.grad
        assert grad[depth - 3 :].abs().sum(-1).gt(0).all() and not grad[: depth - 3].any()


@pytest.mark.parametrize("kind", ["bridge", "aaum"])
def test_save_and_load_give_identical_outputs(kind, tmp_path):
    from transformers import AutoModel

    model = build(kind).eval()
    randomise_managers(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is ManagerTowerModel and loaded.config.manager_type == kind
    inputs = tiny_inputs()
    with torch.no_grad():
        assert torch.equal(model(**inputs).pooler_output, loaded(**inputs).pooler_output)


def test_bad_configs_are_refused_with_the_allowed_values():
    with pytest.raises(Exception, match="manager_type must be one of"):
        tiny_tower_config(manager_type="bridges")
    with pytest.raises(Exception, match=r"num_managed_layers must be in 1\.\.4"):
        tiny_tower_config(num_managed_layers=5)
    with pytest.raises(Exception, match="aaum_query must be one of"):
        tiny_tower_config(aaum_query="concat")
    model = build("aaum")
    with pytest.raises(ValueError, match="image_token_type_idx must be in 1..1"):
        model(**tiny_inputs(), image_token_type_idx=2)


def test_base_parameter_deltas_match_table_vi():
    """Table VI (BASE, 384 x 384): BridgeTower 326.58M, +0.19M with SAUM, +12.06M with AAUM's fused query. The
    official code counts 188,952 and 12,062,292 (its src/modules/heads.py shapes), 12 of which are its unused
    `softmax_temperature_cross` (one per manager), which this model does not create."""
    counts = {}
    with torch.device("meta"):
        for kind in ("bridge", "saum", "aaum"):
            model = ManagerTowerModel(ManagerTowerConfig(manager_type=kind, vision_config=dict(image_size=384)))
            counts[kind] = sum(p.numel() for p in model.parameters())
    # transformers' BridgeTowerModel lacks the official model's unused CLIP text leftovers (40,448) and ITC
    # temperature (1): 326,580,993 - 40,449.
    assert counts["bridge"] == 326_540_544
    assert counts["saum"] - counts["bridge"] == 188_952 - 12
    assert counts["aaum"] - counts["bridge"] == 12_062_292 - 12
    assert round((counts["saum"] - counts["bridge"]) / 1e6, 2) == 0.19
    assert round((counts["aaum"] - counts["bridge"]) / 1e6, 2) == 12.06


def test_cross_layer_norm_eps_reaches_only_the_cross_modal_layers():
    model = build("aaum", cross_layer_norm_eps=1e-12)
    assert model.cross_modal_text_layers[0].output.LayerNorm.eps == 1e-12
    assert model.cross_modal_image_layers[1].attention.output.LayerNorm.eps == 1e-12
    assert model.text_model.encoder.layer[0].output.LayerNorm.eps == 1e-5
    assert build("aaum").cross_modal_text_layers[0].output.LayerNorm.eps == 1e-5


def test_auto_classes_build_the_tower_classes():
    from transformers import (
        AutoModel,
        AutoModelForMaskedLM,
        AutoModelForPreTraining,
        AutoModelForVisualQuestionAnswering,
    )

    import llava_manager.tower as tower

    config = tiny_tower_config(num_labels=4)
    expected = {
        AutoModel: tower.ManagerTowerModel,
        AutoModelForMaskedLM: tower.ManagerTowerForMaskedLM,
        AutoModelForPreTraining: tower.ManagerTowerForPreTraining,
        AutoModelForVisualQuestionAnswering: tower.ManagerTowerForQuestionAnswering,
    }
    for auto, cls in expected.items():
        assert type(auto.from_config(config)) is cls
