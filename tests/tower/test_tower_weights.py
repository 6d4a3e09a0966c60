"""Weights in (`llava_manager.tower.weights`): unimodal encoders -> ManagerTower, transformers BridgeTower warm start,
official ManagerTower checkpoint conversion. Tiny models built in code; no downloads."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import (
    BridgeTowerConfig,
    BridgeTowerForContrastiveLearning,
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerForMaskedLM,
    BridgeTowerModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    RobertaConfig,
    RobertaModel,
)
from transformers.models.bridgetower.modeling_bridgetower import (
    BridgeTowerContrastiveHead,
    BridgeTowerITMHead,
    BridgeTowerMLMHead,
)

from llava_manager.tower import ManagerTowerConfig, ManagerTowerModel
from llava_manager.tower.weights import (
    convert_official_state_dict,
    from_unimodal,
    interpolate_position_embedding,
    load_official_checkpoint,
    unimodal_state_dict,
    warm_start_from_bridgetower,
)

VOCAB, TEXT_LAYERS, VISION_LAYERS, CROSS, MANAGED = 60, 3, 3, 2, 2
D, DV, PATCH = 64, 128, 16  # vision hidden 128: BridgeTower's vision model has hidden // 64 = 2 heads
TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=D,
    num_hidden_layers=TEXT_LAYERS,
    num_attention_heads=2,
    intermediate_size=96,
    max_position_embeddings=24,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
)


def tower_kwargs(image_size=32, **vision):
    return dict(
        hidden_size=D,
        num_hidden_layers=CROSS,
        text_config=dict(TEXT),
        vision_config=dict(
            hidden_size=DV, num_hidden_layers=VISION_LAYERS, patch_size=PATCH, image_size=image_size, **vision
        ),
    )


def mt_config(manager_type="aaum", image_size=32, **kw):
    return ManagerTowerConfig(manager_type=manager_type, num_managed_layers=MANAGED, **tower_kwargs(image_size), **kw)


def tiny_clip(image_size=32, **kw):
    cfg = dict(
        hidden_size=DV,
        intermediate_size=4 * DV,
        num_attention_heads=DV // 64,
        num_hidden_layers=VISION_LAYERS,
        image_size=image_size,
        patch_size=PATCH,
        layer_norm_eps=1e-5,
    )
    cfg.update(kw)
    torch.manual_seed(1)
    model = CLIPVisionModel(CLIPVisionConfig(**cfg)).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases, so a swapped name cannot hide
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def tiny_roberta(**kw):
    torch.manual_seed(2)
    model = RobertaModel(RobertaConfig(**{**TEXT, **kw})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def inputs(image_size=32, batch=2):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, VOCAB, (batch, 7), generator=g)
    ids[:, 0] = 0
    mask = torch.ones_like(ids)
    ids[1, 5:], mask[1, 5:] = 1, 0  # padding (RoBERTa's pad id 1)
    pixels = torch.randn(batch, 3, image_size, image_size, generator=g)
    return ids, mask, pixels


class TinyTask(nn.Module):
    """A task model as the contract names it: the backbone as `managertower`, the official heads' names."""

    def __init__(self, config, answers=5, itc=16):
        super().__init__()
        self.managertower = ManagerTowerModel(config)
        self.mlm_score = BridgeTowerMLMHead(config)
        self.itm_score = BridgeTowerITMHead(2 * D)
        self.vqa_classifier = nn.Sequential(
            nn.Linear(2 * D, 4 * D), nn.LayerNorm(4 * D), nn.GELU(), nn.Linear(4 * D, answers)
        )
        self.itc_text_head = BridgeTowerContrastiveHead(D, itc)
        self.itc_image_head = BridgeTowerContrastiveHead(DV, itc)  # on ln_post(V_L), as the official
        self.temperature = nn.Parameter(torch.tensor(0.07))


def is_added(key: str) -> bool:
    return key.split(".")[0] in (
        "cross_modal_text_managers",
        "cross_modal_image_managers",
        "layer_embeddings_text",
        "layer_embeddings_image",
    )


def is_removed(key: str) -> bool:
    return key.split(".")[0] in (
        "cross_modal_text_layernorm",
        "cross_modal_image_layernorm",
        "cross_modal_text_link_tower",
        "cross_modal_image_link_tower",
    )


# ------------------------------------------------------------------------------------------------------------------
# 1. unimodal encoders
# ------------------------------------------------------------------------------------------------------------------
def test_clip_conversion_gives_clip_hidden_states():
    """The independent check of the CLIP -> OpenAI-CLIP-layout conversion: BridgeTower's vision blocks reproduce
    CLIPVisionModel's per-layer hidden states (2 heads, so the q/k/v packing is exercised), ln_post its
    post_layernorm."""
    clip = tiny_clip()
    model, _ = from_unimodal(mt_config(), tiny_roberta(), clip)
    model.eval()
    pixels = inputs()[2]
    with torch.no_grad():
        ref = clip(pixel_values=pixels, output_hidden_states=True)
        visual = model.vision_model.visual
        x = visual.forward_pre(pixels)  # L x B x D (ln_pre applied)
        ours = [x]
        for block in visual.transformer.resblocks:
            x = block(x)
            ours.append(x)
        post = visual.forward_post(x)
    assert len(ref.hidden_states) == len(ours) == VISION_LAYERS + 1
    for k, (a, b) in enumerate(zip(ref.hidden_states, ours)):
        torch.testing.assert_close(b.permute(1, 0, 2), a, rtol=1e-4, atol=1e-5, msg=f"hidden state {k}")
    torch.testing.assert_close(post, clip.post_layernorm(ref.last_hidden_state), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(post[:, 0], ref.pooler_output, rtol=1e-4, atol=1e-5)


def test_roberta_conversion_gives_roberta_outputs():
    roberta = tiny_roberta()
    model, _ = from_unimodal(mt_config(), roberta, tiny_clip())
    model.eval()
    ids, mask, _ = inputs()
    with torch.no_grad():
        ref = roberta(input_ids=ids, attention_mask=mask)
        ours = model.text_model(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(ours.last_hidden_state, ref.last_hidden_state, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.pooler_output, ref.pooler_output, rtol=1e-4, atol=1e-5)
    assert torch.equal(model.text_model.embeddings.position_ids, roberta.embeddings.position_ids)


def test_from_unimodal_report_and_new_parameters_keep_their_init():
    config = mt_config()
    roberta, clip = tiny_roberta(), tiny_clip()
    torch.manual_seed(0)
    fresh = ManagerTowerModel(config).state_dict()
    torch.manual_seed(0)
    model, report = from_unimodal(config, roberta, clip)
    state = model.state_dict()
    unimodal = {k for k in state if k.startswith(("text_model.", "vision_model."))}
    assert set(report.loaded) == unimodal
    assert set(report.missing) == set(state) - unimodal
    assert any(k.startswith("cross_modal_text_managers.") for k in report.missing)
    for key in report.missing:
        assert torch.equal(state[key], fresh[key]), key
    # where each key came from
    assert (
        report.sources["text_model.encoder.layer.1.attention.self.query.weight"]
        == "text:encoder.layer.1.attention.self.query.weight"
    )
    assert report.sources["vision_model.visual.ln_pre.weight"] == "vision:pre_layrnorm.weight"
    assert report.sources["vision_model.visual.ln_post.bias"] == "vision:post_layernorm.bias"
    assert (
        report.sources["vision_model.visual.transformer.resblocks.2.mlp.c_proj.weight"]
        == "vision:encoder.layers.2.mlp.fc2.weight"
    )
    # the packed attention: rows q, k, v
    clip_state = clip.state_dict()
    packed = state["vision_model.visual.transformer.resblocks.1.attn.in_proj_weight"]
    for i, name in enumerate("qkv"):
        assert torch.equal(packed[i * DV : (i + 1) * DV], clip_state[f"encoder.layers.1.self_attn.{name}_proj.weight"])
    assert report.reshaped == {}
    # the same tensors through the functional API (CLIPModel's on-disk "vision_model." prefix accepted)
    flat = unimodal_state_dict(roberta, {f"vision_model.{k}": v for k, v in clip_state.items()}, config)
    assert set(flat) == unimodal
    for key in flat:
        assert torch.equal(flat[key], state[key]), key


def test_from_unimodal_into_a_task_model_and_into_bridgetower():
    model, report = from_unimodal(mt_config(), tiny_roberta(), tiny_clip(), model_class=TinyTask)
    assert "managertower.vision_model.visual.ln_post.weight" in report.loaded
    assert "mlm_score.bias" in report.missing and "temperature" in report.missing
    bt, report = from_unimodal(
        BridgeTowerConfig(**tower_kwargs()), tiny_roberta(), tiny_clip(), model_class=BridgeTowerModel
    )
    assert "cross_modal_text_link_tower.0.LayerNorm.weight" in report.missing


def official_adapt_position_encoding(model, patch_size=32, after=384, suffix="visual.positional_embedding"):
    """Verbatim LooperXX/ManagerTower src/modules/clip_model.py l.249-276 (np.sqrt -> math.sqrt)."""
    import math

    keys = [k for k in model if k.endswith(suffix)]
    assert len(keys) == 1
    key = keys[0]
    origin_pos_embed = model[key]
    origin_dim2 = False
    if len(origin_pos_embed.shape) == 2:
        origin_dim2 = True
        origin_pos_embed = origin_pos_embed.unsqueeze(0)
    grid_before = int(math.sqrt(origin_pos_embed.shape[1] - 1))
    before = int(grid_before * patch_size)
    assert (before % patch_size) == 0
    grid_after = after // patch_size
    assert (after % patch_size) == 0
    embed_dim = origin_pos_embed.shape[-1]

    pos_embed = origin_pos_embed[0, 1:, :].reshape((grid_before, grid_before, embed_dim))
    new_size = (grid_after, grid_after)
    pos_embed = torch.nn.functional.interpolate(
        pos_embed.permute((2, 0, 1)).unsqueeze(0), size=new_size, mode='bicubic'
    )
    pos_embed = pos_embed.squeeze(0).permute((1, 2, 0)).reshape((-1, embed_dim))
    pos_embed = torch.cat((origin_pos_embed[0, 0:1, :], pos_embed), dim=0).unsqueeze(0)
    assert pos_embed.shape == (1, grid_after * grid_after + 1, embed_dim)
    if origin_dim2:
        assert pos_embed.shape[0] == 1
        pos_embed = pos_embed.squeeze(0)
    model[key] = pos_embed
    return model


def test_position_embeddings_interpolated_as_the_official_code():
    pos = torch.randn(3 * 3 + 1, 8)
    ref = official_adapt_position_encoding({"visual.positional_embedding": pos.clone()}, patch_size=16, after=80)
    ours = interpolate_position_embedding(pos, 5)
    assert torch.equal(ours, ref["visual.positional_embedding"])
    assert torch.equal(ours[0], pos[0])
    assert torch.equal(interpolate_position_embedding(pos, 3), pos)
    # a 32-px CLIP builds a 48-px tower (as a 224-px CLIP a 384-px one), which runs at 48 px
    clip = tiny_clip(image_size=32)
    model, report = from_unimodal(mt_config(image_size=48), tiny_roberta(), clip)
    key = "vision_model.visual.embeddings.position_embedding.weight"
    assert key in report.reshaped and "2x2 to a 3x3" in report.reshaped[key]
    expected = official_adapt_position_encoding(
        {"visual.positional_embedding": clip.embeddings.position_embedding.weight.detach().clone()},
        patch_size=PATCH,
        after=48,
    )["visual.positional_embedding"]
    assert torch.equal(model.state_dict()[key], expected)
    ids, mask, pixels = inputs(image_size=48)
    with torch.no_grad():
        out = model.eval()(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    assert out.image_features.shape == (2, 10, D)


@pytest.mark.parametrize(
    "which, change, field",
    [
        ("vision", dict(hidden_act="gelu"), "hidden_act"),
        ("vision", dict(layer_norm_eps=1e-6), "vision_config.layer_norm_eps"),
        ("vision", dict(num_attention_heads=4), "num_attention_heads"),
        ("vision", dict(patch_size=8), "vision_config.patch_size"),
        ("vision", dict(num_hidden_layers=2), "vision_config.num_hidden_layers"),
        ("text", dict(vocab_size=61), "text_config.vocab_size"),
        ("text", dict(layer_norm_eps=1e-12), "text_config.layer_norm_eps"),
        ("text", dict(type_vocab_size=2), "text_config.type_vocab_size"),
        ("text", dict(hidden_act="relu"), "text_config.hidden_act"),
    ],
)
def test_unimodal_config_mismatches_are_errors_naming_the_field(which, change, field):
    roberta = tiny_roberta(**change) if which == "text" else tiny_roberta()
    clip = tiny_clip(**change) if which == "vision" else tiny_clip()
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        from_unimodal(mt_config(), roberta, clip)


def test_remove_last_layer_leaves_clips_last_block_out():
    kw = tower_kwargs()
    kw["vision_config"]["remove_last_layer"] = True
    config = ManagerTowerConfig(manager_type="aaum", num_managed_layers=MANAGED, **kw)
    model, report = from_unimodal(config, tiny_roberta(), tiny_clip())
    assert len(model.vision_model.visual.transformer.resblocks) == VISION_LAYERS - 1
    assert report.dropped and all(k.startswith(f"vision:encoder.layers.{VISION_LAYERS - 1}.") for k in report.dropped)


# ------------------------------------------------------------------------------------------------------------------
# 2. transformers BridgeTower
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_bridgetower(tmp_path_factory):
    torch.manual_seed(4)
    bt = BridgeTowerModel(BridgeTowerConfig(**tower_kwargs())).eval()
    path = tmp_path_factory.mktemp("bt") / "bridgetower"
    bt.save_pretrained(path)
    return bt, path


def test_warm_start_bridge_reproduces_bridgetower_exactly(saved_bridgetower):
    bt, path = saved_bridgetower
    model = ManagerTowerModel(mt_config("bridge")).eval()
    report = warm_start_from_bridgetower(model, path)
    assert report.missing == [] and report.unexpected == [] and report.reshaped == {}
    assert set(report.loaded) == set(bt.state_dict())
    ids, mask, pixels = inputs()
    with torch.no_grad():
        ref = bt(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    assert torch.equal(out.text_features, ref.text_features)
    assert torch.equal(out.image_features, ref.image_features)
    assert torch.equal(out.pooler_output, ref.pooler_output)


def test_warm_start_aaum_reports_exactly_what_managertower_adds_and_removes(saved_bridgetower):
    bt, path = saved_bridgetower
    model = ManagerTowerModel(mt_config("aaum"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = warm_start_from_bridgetower(model, path)
    ours, theirs = set(model.state_dict()), set(bt.state_dict())
    assert set(report.missing) == ours - theirs and report.missing
    assert all(is_added(k) for k in report.missing)
    assert {k.split(".")[0] for k in report.missing} == {
        "cross_modal_text_managers",
        "cross_modal_image_managers",
        "layer_embeddings_text",
        "layer_embeddings_image",
    }
    assert set(report.unexpected) == theirs - ours and report.unexpected
    assert all(is_removed(k) for k in report.unexpected)
    state, source = model.state_dict(), bt.state_dict()
    for key in ours & theirs:
        assert torch.equal(state[key], source[key]), key
    for key in report.missing:
        assert torch.equal(state[key], before[key]), key


def test_warm_start_from_masked_lm_into_task_and_backbone(tmp_path):
    torch.manual_seed(5)
    mlm = BridgeTowerForMaskedLM(BridgeTowerConfig(**tower_kwargs())).eval()
    mlm.save_pretrained(tmp_path)
    task = TinyTask(mt_config("saum"))
    report = warm_start_from_bridgetower(task, tmp_path)
    source = mlm.state_dict()
    state = task.state_dict()
    for key in ("mlm_score.decoder.weight", "mlm_score.bias", "mlm_score.transform.LayerNorm.weight"):
        assert key in report.loaded and torch.equal(state[key], source[key])
    assert torch.equal(
        state["managertower.text_model.encoder.layer.2.output.dense.weight"],
        source["bridgetower.text_model.encoder.layer.2.output.dense.weight"],
    )
    assert report.sources["managertower.token_type_embeddings.weight"] == "bridgetower.token_type_embeddings.weight"
    heads_missing = {k for k in report.missing if not k.startswith("managertower.")}
    assert {k.split(".")[0] for k in heads_missing} == {
        "itm_score",
        "vqa_classifier",
        "itc_text_head",
        "itc_image_head",
        "temperature",
    }
    assert all(is_added(k[len("managertower.") :]) for k in report.missing if k.startswith("managertower."))
    assert all(is_removed(k[len("bridgetower.") :]) for k in report.unexpected)
    # into the bare backbone: the MLM head is left unused
    report = warm_start_from_bridgetower(ManagerTowerModel(mt_config("saum")), tmp_path)
    assert {k for k in report.unexpected if k.startswith("mlm_score.")} == {
        k for k in source if k.startswith("mlm_score.")
    }


def test_warm_start_from_masked_lm_with_tied_decoder(tmp_path):
    """tie_word_embeddings=True: save_pretrained writes only the word embeddings; the decoder is taken from them."""
    torch.manual_seed(8)
    mlm = BridgeTowerForMaskedLM(BridgeTowerConfig(**tower_kwargs(), tie_word_embeddings=True))
    mlm.save_pretrained(tmp_path)
    task = TinyTask(mt_config("saum"))
    report = warm_start_from_bridgetower(task, tmp_path)
    assert torch.equal(task.mlm_score.decoder.weight, mlm.mlm_score.decoder.weight)
    assert "mlm_score.decoder.weight" in report.reshaped


def test_warm_start_retrieval_and_contrastive_layouts():
    # transformers 5.23: BridgeTowerConfig has no logit_scale_init_value field (BridgeTowerForContrastiveLearning
    # reads it), so it is passed here
    config = BridgeTowerConfig(**tower_kwargs(), contrastive_hidden_size=ITC, logit_scale_init_value=2.6592)
    torch.manual_seed(6)
    itr = BridgeTowerForImageAndTextRetrieval(config)
    task = TinyTask(mt_config("bridge"))
    report = warm_start_from_bridgetower(task, itr.state_dict())
    assert torch.equal(task.itm_score.fc.weight, itr.itm_score.fc.weight)
    assert "mlm_score.bias" in report.missing and report.unexpected == []
    itc = BridgeTowerForContrastiveLearning(config)
    image_head = task.itc_image_head.fc.weight.detach().clone()
    report = warm_start_from_bridgetower(task, itc)
    # the text ITC head reads the last text layer's <s> in both codes: loaded; transformers' image ITC head reads
    # transform(ln_post(V_L)) + type, the official one ln_post(V_L): not loaded
    assert torch.equal(task.itc_text_head.fc.weight, itc.itc_text_head.fc.weight)
    assert torch.equal(task.itc_image_head.fc.weight, image_head)
    assert {"itc_image_head.fc.weight", "itc_image_head.fc.bias", "temperature"} <= set(report.missing)
    assert set(report.unexpected) == {
        "itc_image_head.fc.weight",
        "itc_image_head.fc.bias",
        "itc_cross_modal_head.fc.weight",
        "itc_cross_modal_head.fc.bias",
        "logit_scale",
    }
    assert any("itc_image_head" in note for note in report.notes)


def test_warm_start_grows_token_types_for_nlvr2_and_interpolates_positions(saved_bridgetower):
    bt, path = saved_bridgetower
    model = ManagerTowerModel(mt_config("aaum", image_size=48, num_token_types=3))
    report = warm_start_from_bridgetower(model, path)
    rows = model.token_type_embeddings.weight
    source = bt.token_type_embeddings.weight
    assert torch.equal(rows[:2], source) and torch.equal(rows[2], source[1])
    assert "token_type_embeddings.weight" in report.reshaped
    key = "vision_model.visual.embeddings.position_embedding.weight"
    assert torch.equal(model.state_dict()[key], interpolate_position_embedding(bt.state_dict()[key], 3))
    assert set(report.reshaped) == {"token_type_embeddings.weight", key}


def test_warm_start_refuses_what_it_cannot_explain(saved_bridgetower, tmp_path):
    bt, path = saved_bridgetower
    state = dict(bt.state_dict())
    state["cross_modal_text_transform.extra"] = torch.zeros(3)
    with pytest.raises(ValueError, match="cross_modal_text_transform.extra"):
        warm_start_from_bridgetower(ManagerTowerModel(mt_config("aaum")), state)
    # a shape mismatch (another intermediate size): named
    kw = tower_kwargs()
    kw["text_config"]["intermediate_size"] = 80
    with pytest.raises(ValueError, match=r"shape mismatch for 'text_model\.encoder\.layer\.0\.intermediate"):
        model = ManagerTowerModel(ManagerTowerConfig(manager_type="aaum", num_managed_layers=MANAGED, **kw))
        warm_start_from_bridgetower(model, state, check_config=False)
    # a key the model needs and the source lacks (not something ManagerTower adds)
    state = dict(bt.state_dict())
    del state["cross_modal_text_pooler.dense.weight"]
    with pytest.raises(ValueError, match="cross_modal_text_pooler.dense.weight"):
        warm_start_from_bridgetower(ManagerTowerModel(mt_config("aaum")), state)
    # a config field that changes what the weights compute, from config.json
    kw = tower_kwargs()
    kw["text_config"]["layer_norm_eps"] = 1e-12
    with pytest.raises(ValueError, match=r"text_config\.layer_norm_eps"):
        model = ManagerTowerModel(ManagerTowerConfig(manager_type="aaum", num_managed_layers=MANAGED, **kw))
        warm_start_from_bridgetower(model, path)


# ------------------------------------------------------------------------------------------------------------------
# 3. official ManagerTower checkpoints (names and shapes written from the official module tree, report Sec. 6)
# ------------------------------------------------------------------------------------------------------------------
ITC, ANSWERS = 16, 5


def official_state_dict(manager="AAUE", image_grid=2, token_types=2, heads=True, seed=7):
    """A state dict with the official MTTransformer key names and shapes for the tiny config (random values)."""
    g = torch.Generator().manual_seed(seed)
    shapes: dict[str, tuple] = {}
    # text_transformer = RobertaModel (its own state dict; transformers 4.17 also saved position_ids)
    for name, tensor in tiny_roberta().state_dict().items():
        shapes[f"text_transformer.{name}"] = tuple(tensor.shape)
    shapes["text_transformer.embeddings.position_ids"] = (1, TEXT["max_position_embeddings"])
    # vit_model = CLIP(...): visual + the CLIP text tower leftovers
    v = "vit_model.visual."
    shapes[v + "conv1.weight"] = (DV, 3, PATCH, PATCH)
    shapes[v + "class_embedding"] = (DV,)
    shapes[v + "positional_embedding"] = (image_grid**2 + 1, DV)
    for ln in ("ln_pre", "ln_post"):
        shapes[f"{v}{ln}.weight"] = shapes[f"{v}{ln}.bias"] = (DV,)
    for i in range(VISION_LAYERS):
        b = f"{v}transformer.resblocks.{i}."
        shapes[b + "attn.in_proj_weight"], shapes[b + "attn.in_proj_bias"] = (3 * DV, DV), (3 * DV,)
        shapes[b + "attn.out_proj.weight"], shapes[b + "attn.out_proj.bias"] = (DV, DV), (DV,)
        shapes[b + "mlp.c_fc.weight"], shapes[b + "mlp.c_fc.bias"] = (4 * DV, DV), (4 * DV,)
        shapes[b + "mlp.c_proj.weight"], shapes[b + "mlp.c_proj.bias"] = (DV, 4 * DV), (DV,)
        for ln in ("ln_1", "ln_2"):
            shapes[f"{b}{ln}.weight"] = shapes[f"{b}{ln}.bias"] = (DV,)
    shapes["vit_model.positional_embedding"] = (77, 512)
    shapes["vit_model.ln_final.weight"] = shapes["vit_model.ln_final.bias"] = (512,)
    # fusion
    shapes["cross_modal_text_transform.weight"], shapes["cross_modal_text_transform.bias"] = (D, D), (D,)
    shapes["cross_modal_image_transform.weight"], shapes["cross_modal_image_transform.bias"] = (D, DV), (D,)
    shapes["token_type_embeddings.weight"] = (token_types, D)
    inter = TEXT["intermediate_size"]
    for side in ("text", "image"):
        for i in range(CROSS):
            b = f"cross_modal_{side}_layers.{i}."
            for att in ("attention", "crossattention"):
                for lin in ("self.query", "self.key", "self.value", "output.dense"):
                    shapes[f"{b}{att}.{lin}.weight"], shapes[f"{b}{att}.{lin}.bias"] = (D, D), (D,)
                shapes[f"{b}{att}.output.LayerNorm.weight"] = shapes[f"{b}{att}.output.LayerNorm.bias"] = (D,)
            shapes[b + "intermediate.dense.weight"], shapes[b + "intermediate.dense.bias"] = (inter, D), (inter,)
            shapes[b + "output.dense.weight"], shapes[b + "output.dense.bias"] = (D, inter), (D,)
            shapes[b + "output.LayerNorm.weight"] = shapes[b + "output.LayerNorm.bias"] = (D,)
        shapes[f"cross_modal_{side}_pooler.dense.weight"] = (D, D)
        shapes[f"cross_modal_{side}_pooler.dense.bias"] = (D,)
    shapes["temperature"] = ()
    shapes["layer_embeddings_text.weight"] = (TEXT_LAYERS, D)
    shapes["layer_embeddings_image.weight"] = (VISION_LAYERS, D)
    # managers: heads.Manager(...).manager_layer = SAUE (layer 0, or all with 'SAUE') / AAUE (layers 1.., 'AAUE')
    n = MANAGED
    for side in ("text", "image"):
        for i in range(CROSS):
            b = f"cross_modal_{side}_manager_tower.{i}.manager_layer."
            shapes[b + "softmax_temperature"] = shapes[b + "softmax_temperature_cross"] = (1,)
            if i == 0 or manager == "SAUE":
                previous = 0 if i == 0 else 1
                shapes[b + "layer_scores"] = (1, n + previous, 1, D)
                norms = n + previous
            else:
                shapes[b + "layer_scores_cross"] = (1, 1, 1, D)
                shapes[b + "linear_controller.weight"], shapes[b + "linear_controller.bias"] = (n, 2 * D), (n,)
                for proj in ("q_proj", "k_proj"):
                    shapes[f"{b}fusion_attention.{proj}.weight"] = (D, D)
                    shapes[f"{b}fusion_attention.{proj}.bias"] = (D,)
                shapes[b + "extra_query_LayerNorm.weight"] = shapes[b + "extra_query_LayerNorm.bias"] = (D,)
                norms = n + 1
            for k in range(norms):
                shapes[f"{b}LayerNorm.{k}.weight"] = shapes[f"{b}LayerNorm.{k}.bias"] = (D,)
    if heads:
        shapes["mlm_score.transform.dense.weight"], shapes["mlm_score.transform.dense.bias"] = (D, D), (D,)
        shapes["mlm_score.transform.LayerNorm.weight"] = shapes["mlm_score.transform.LayerNorm.bias"] = (D,)
        shapes["mlm_score.decoder.weight"], shapes["mlm_score.bias"] = (VOCAB, D), (VOCAB,)
        shapes["itm_score.fc.weight"], shapes["itm_score.fc.bias"] = (2, 2 * D), (2,)
        # ITCHead(config['hidden_size'], ...) for both: the text head reads T_L, the image head ln_post(V_L), so
        # with a vision width != hidden_size (only here) the image head's input is the vision width
        for side, width in (("text", D), ("image", DV)):
            shapes[f"cross_modal_itc_{side}_head.fc.weight"] = (ITC, width)
            shapes[f"cross_modal_itc_{side}_head.fc.bias"] = (ITC,)
        shapes["vqa_classifier.0.weight"], shapes["vqa_classifier.0.bias"] = (4 * D, 2 * D), (4 * D,)
        shapes["vqa_classifier.1.weight"] = shapes["vqa_classifier.1.bias"] = (4 * D,)
        shapes["vqa_classifier.3.weight"], shapes["vqa_classifier.3.bias"] = (ANSWERS, 4 * D), (ANSWERS,)
    state = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    state["text_transformer.embeddings.position_ids"] = torch.arange(TEXT["max_position_embeddings"])[None]
    return state


def expected_name(key: str) -> str | None:
    """The report's Sec. 6 table, by plain string edits; None for the documented drops."""
    if (
        key in ("text_transformer.embeddings.position_ids", "vit_model.positional_embedding")
        or key.startswith("vit_model.ln_final.")
        or key.endswith(".softmax_temperature_cross")
    ):
        return None
    fixed = {
        "vit_model.visual.conv1.weight": "vision_model.visual.embeddings.patch_embedding.weight",
        "vit_model.visual.class_embedding": "vision_model.visual.embeddings.class_embedding",
        "vit_model.visual.positional_embedding": "vision_model.visual.embeddings.position_embedding.weight",
    }
    if key in fixed:
        return "managertower." + fixed[key]
    if key.startswith(("mlm_score.", "itm_score.", "vqa_classifier.")) or key == "temperature":
        return key
    if key.startswith("cross_modal_itc_"):
        return key.replace("cross_modal_itc_", "itc_")
    key = key.replace("text_transformer.", "text_model.").replace("vit_model.visual.", "vision_model.visual.")
    key = key.replace("_manager_tower.", "_managers.").replace(".manager_layer.", ".")
    return "managertower." + key


def test_convert_official_maps_every_key_onto_the_model_with_its_shape():
    official = official_state_dict()
    task = TinyTask(mt_config("aaum"))
    target = task.state_dict()
    converted, report = convert_official_state_dict(official, backbone_prefix="managertower.")
    drops = {k for k in official if expected_name(k) is None}
    assert set(report.dropped) == drops
    assert len(drops) == 4 + 2 * CROSS  # position_ids, CLIP text pos + ln_final (2), one per manager
    assert len(converted) == len(official) - len(drops)
    for key, value in official.items():
        name = expected_name(key)
        if name is None:
            continue
        assert name in converted, key
        assert torch.equal(converted[name], value), key
        assert name in target and target[name].shape == value.shape or key == "temperature", (key, name)
    assert set(converted) == set(target)  # nothing left over on either side
    # the same without a prefix (for a bare ManagerTowerModel)
    bare, _ = convert_official_state_dict(official)
    assert "vision_model.visual.ln_post.weight" in bare and "mlm_score.bias" in bare


def test_load_official_checkpoint_gives_the_model_those_tensors(tmp_path):
    official = official_state_dict()
    path = tmp_path / "ManagerTower_pt_base.ckpt"
    torch.save(
        {
            "state_dict": official,
            "epoch": 3,
            "global_step": 10,
            "hyper_parameters": {"config": {"manager_type": "AAUE", "image_size": 32}},
        },
        path,
    )
    task = TinyTask(mt_config("aaum"))
    report = load_official_checkpoint(task, path)
    assert report.missing == [] and report.unexpected == [] and report.reshaped == {}
    state = task.state_dict()
    for key, value in official.items():
        name = expected_name(key)
        if name is not None:
            assert torch.equal(state[name], value.reshape(state[name].shape)), key
    assert len(report.dropped) == 4 + 2 * CROSS
    # into the bare backbone: the heads are left unused, the rest is the same
    model = ManagerTowerModel(mt_config("aaum"))
    report = load_official_checkpoint(model, official)
    assert report.missing == []
    assert set(report.unexpected) == {
        k
        for k in official
        if k.startswith(("mlm_score.", "itm_score.", "vqa_classifier.", "cross_modal_itc_")) or k == "temperature"
    }
    assert torch.equal(
        model.cross_modal_image_managers[1].linear_controller.weight,
        official["cross_modal_image_manager_tower.1.manager_layer.linear_controller.weight"],
    )
    ids, mask, pixels = inputs()
    with torch.no_grad():
        assert torch.isfinite(model.eval()(input_ids=ids, attention_mask=mask, pixel_values=pixels).pooler_output).all()


def test_official_checkpoint_at_another_resolution_and_nlvr2_token_types():
    official = official_state_dict(image_grid=3)  # saved at 48 px (as the 288-px pre-training checkpoint)
    model = ManagerTowerModel(mt_config("aaum", num_token_types=3))  # built at 32 px, NLVR2
    report = load_official_checkpoint(model, official)
    key = "vision_model.visual.embeddings.position_embedding.weight"
    assert torch.equal(
        model.state_dict()[key],
        official_adapt_position_encoding(
            {"visual.positional_embedding": official["vit_model.visual.positional_embedding"]},
            patch_size=PATCH,
            after=32,
        )["visual.positional_embedding"],
    )
    rows = official["token_type_embeddings.weight"]
    assert torch.equal(model.token_type_embeddings.weight, torch.cat([rows, rows[1:]]))
    assert set(report.reshaped) == {key, "token_type_embeddings.weight"}
    # an NLVR2 checkpoint (3 token types) loads as it is
    nlvr2 = official_state_dict(token_types=3, heads=False)
    report = load_official_checkpoint(model, nlvr2)
    assert torch.equal(model.token_type_embeddings.weight, nlvr2["token_type_embeddings.weight"])
    assert report.reshaped == {}
    # convert alone interpolates when given the image size
    converted, report = convert_official_state_dict(official, image_size=32)
    assert converted[key].shape == (5, DV) and key in report.reshaped


class _Opaque:  # something torch.load(weights_only=True) refuses
    pass


def test_official_checkpoint_refusals(tmp_path):
    official = official_state_dict(heads=False)
    with pytest.raises(ValueError, match="vit_model.visual.proj"):
        convert_official_state_dict({**official, "vit_model.visual.proj": torch.zeros(DV, 8)})
    # an all-SAUM ('SAUE') checkpoint into an AAUM model: the manager keys do not fit, named
    saue = official_state_dict(manager="SAUE", heads=False)
    with pytest.raises(ValueError, match=r"cross_modal_text_manager_tower\.1\.manager_layer\.layer_scores"):
        load_official_checkpoint(ManagerTowerModel(mt_config("aaum")), saue)
    # ... and into a SAUM model it loads
    report = load_official_checkpoint(ManagerTowerModel(mt_config("saum")), saue)
    assert report.missing == []
    # a checkpoint whose managers are incomplete: the missing ones are named
    broken = {k: v for k, v in official.items() if "manager_tower.1." not in k}
    with pytest.raises(ValueError, match=r"cross_modal_text_managers\.1\."):
        load_official_checkpoint(ManagerTowerModel(mt_config("aaum")), broken)
    # a checkpoint that needs full unpickling is refused unless allowed
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": official, "callbacks": _Opaque()}, path)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_official_checkpoint(ManagerTowerModel(mt_config("aaum")), path)
    report = load_official_checkpoint(ManagerTowerModel(mt_config("aaum")), path, allow_pickle=True)
    assert report.missing == []


def test_with_the_task_models_of_llava_manager_tower_heads(saved_bridgetower, tmp_path):
    """The same loaders on the package's own task models (`managertower.` backbone, official head names)."""
    from llava_manager.tower.heads import (
        ManagerTowerForImageTextRetrieval,
        ManagerTowerForNLVR2,
        ManagerTowerForPreTraining,
    )

    official = official_state_dict()
    retrieval = ManagerTowerForImageTextRetrieval(mt_config("aaum", contrastive_hidden_size=ITC))
    report = load_official_checkpoint(retrieval, official)
    assert report.missing == []
    assert torch.equal(retrieval.itc_image_head.fc.weight, official["cross_modal_itc_image_head.fc.weight"])
    assert torch.equal(retrieval.temperature, official["temperature"])
    assert {k.split(".")[0] for k in report.unexpected} == {"mlm_score", "vqa_classifier"}
    # the pre-trained checkpoint (2 token types) into NLVR2 (3): rows 0, 1 copied, row 2 = row 1
    nlvr2 = ManagerTowerForNLVR2(mt_config("aaum"))
    report = load_official_checkpoint(nlvr2, official)
    rows = official["token_type_embeddings.weight"]
    assert torch.equal(nlvr2.managertower.token_type_embeddings.weight, torch.cat([rows, rows[1:]]))
    assert {k.split(".")[0] for k in report.missing} == {"nlvr2_classifier"}
    # transformers' BridgeTowerForMaskedLM into the pre-training model
    torch.manual_seed(9)
    mlm = BridgeTowerForMaskedLM(BridgeTowerConfig(**tower_kwargs()))
    mlm.save_pretrained(tmp_path)
    pretraining = ManagerTowerForPreTraining(mt_config("aaum"))
    report = warm_start_from_bridgetower(pretraining, tmp_path)
    assert torch.equal(pretraining.mlm_score.decoder.weight, mlm.mlm_score.decoder.weight)
    assert {k.split(".")[0] for k in report.missing if not k.startswith("managertower.")} == {"itm_score"}
