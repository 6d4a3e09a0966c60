"""ManagerTower's task heads (llava_manager/tower/heads/): shapes, each loss against a computation written here from
the logits, NLVR2's token types, retrieval training and the retrieval evaluation against brute force, save / load,
and gradients for every manager type."""

import pytest
import torch
import torch.nn.functional as F
from support.tower_models import tiny_inputs, tiny_tower_config, tiny_tower_kwargs
from transformers import BridgeTowerConfig, BridgeTowerForImageAndTextRetrieval

from llava_manager.tower.heads import (
    ManagerTowerForImageTextMatching,
    ManagerTowerForImageTextRetrieval,
    ManagerTowerForMaskedLM,
    ManagerTowerForNLVR2,
    ManagerTowerForPreTraining,
    ManagerTowerForQuestionAnswering,
    ManagerTowerForVisualEntailment,
    retrieval_scores,
)

KINDS = ("bridge", "saum", "aaum")
VOCAB = 99
NUM_ANSWERS = 5


def make(cls, kind="aaum", seed=0, train=False, **overrides):
    torch.manual_seed(seed)
    model = cls(tiny_tower_config(manager_type=kind, **overrides))
    return model.train(train)


def mlm_labels(input_ids, positions=(1, 3)):
    labels = torch.full_like(input_ids, -100)
    labels[:, list(positions)] = input_ids[:, list(positions)]
    return labels


def backbone(model, **kwargs):
    return model.managertower(**kwargs)


def hand_ce(logits, labels):
    """Mean negative log-likelihood of `labels` (hard) over the rows whose label is not -100."""
    logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    keep = labels != -100
    logp = logits[keep].log_softmax(-1)
    return -logp.gather(1, labels[keep, None]).mean()


def hand_soft_ce(logits, targets):
    return -(targets * logits.log_softmax(-1)).sum(-1).mean()


# ---------------------------------------------------------------------------------------------------------------------
# Single-pass heads


def test_masked_lm_logits_and_loss():
    model = make(ManagerTowerForMaskedLM)
    inputs = tiny_inputs()
    labels = mlm_labels(inputs["input_ids"])
    out = model(**inputs, labels=labels)
    assert out.logits.shape == (2, 7, VOCAB)
    features = backbone(model, **inputs).text_features
    torch.testing.assert_close(out.logits, model.mlm_score(features))
    torch.testing.assert_close(out.loss, hand_ce(out.logits, labels))
    # not tied to the word embeddings (the official mlm_score.decoder is its own weight)
    assert (
        model.mlm_score.decoder.weight.data_ptr()
        != model.managertower.text_model.embeddings.word_embeddings.weight.data_ptr()
    )


def test_itm_logits_and_loss():
    model = make(ManagerTowerForImageTextMatching)
    inputs, labels = tiny_inputs(), torch.tensor([1, 0])
    out = model(**inputs, labels=labels)
    assert out.logits.shape == (2, 2)
    torch.testing.assert_close(out.logits, model.itm_score.fc(backbone(model, **inputs).pooler_output))
    torch.testing.assert_close(out.loss, hand_ce(out.logits, labels))


def test_vqa_logits_and_loss_is_bce_times_num_labels():
    model = make(ManagerTowerForQuestionAnswering, num_labels=NUM_ANSWERS)
    assert [type(m).__name__ for m in model.vqa_classifier] == ["Linear", "LayerNorm", "GELU", "Linear"]
    assert model.vqa_classifier[0].weight.shape == (64, 64)  # 2D -> 2D x head_hidden_scale (1)
    inputs = tiny_inputs()
    targets = torch.tensor([[0.0, 0.3, 1.0, 0.0, 0.6], [0.9, 0.0, 0.0, 0.0, 0.0]])
    out = model(**inputs, labels=targets)
    assert out.logits.shape == (2, NUM_ANSWERS)
    p = torch.sigmoid(out.logits)
    bce = -(targets * p.log() + (1 - targets) * (1 - p).log())
    torch.testing.assert_close(out.loss, bce.mean() * NUM_ANSWERS)


def test_head_hidden_scale_widens_the_classifiers():
    model = make(ManagerTowerForVisualEntailment, head_hidden_scale=2)
    assert model.snli_classifier[0].weight.shape == (128, 64)
    assert model.snli_classifier[3].weight.shape == (3, 128)
    nlvr2 = make(ManagerTowerForNLVR2, head_hidden_scale=2)
    assert nlvr2.nlvr2_classifier[0].weight.shape == (128, 128)  # 4D -> 2D x 2


def test_snli_ve_logits_and_loss():
    model = make(ManagerTowerForVisualEntailment)
    inputs, labels = tiny_inputs(), torch.tensor([2, 0])
    out = model(**inputs, labels=labels)
    assert out.logits.shape == (2, 3)
    torch.testing.assert_close(out.logits, model.snli_classifier(backbone(model, **inputs).pooler_output))
    torch.testing.assert_close(out.loss, hand_ce(out.logits, labels))


def test_heads_start_as_bridgetower_initialises_them():
    model = make(ManagerTowerForQuestionAnswering, num_labels=NUM_ANSWERS)
    first, norm = model.vqa_classifier[0], model.vqa_classifier[1]
    assert torch.count_nonzero(first.bias) == 0
    assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and torch.count_nonzero(norm.bias) == 0
    assert 0.04 < first.weight.std().item() < 0.06  # N(0, 0.05 * initializer_factor)


def test_outputs_as_tuple_and_optional_extras():
    model = make(ManagerTowerForVisualEntailment)
    inputs, labels = tiny_inputs(), torch.tensor([2, 0])
    out = model(**inputs, labels=labels)
    assert out.hidden_states is None and out.attentions is None and out.aggregation_weights is None
    full = model(**inputs, output_hidden_states=True, output_attentions=True, output_aggregation_weights=True)
    assert len(full.hidden_states) == 3 and len(full.attentions) == 2 and len(full.aggregation_weights) == 2
    loss, logits = model(**inputs, labels=labels, return_dict=False)
    torch.testing.assert_close(loss, out.loss)
    torch.testing.assert_close(logits, out.logits)


def test_bridge_itm_head_is_bridgetowers():
    """With manager_type="bridge", the ITM model is transformers' BridgeTowerForImageAndTextRetrieval under the
    `bridgetower.` -> `managertower.` prefix."""
    model = make(ManagerTowerForImageTextMatching, kind="bridge")
    reference = BridgeTowerForImageAndTextRetrieval(BridgeTowerConfig(**tiny_tower_kwargs())).eval()
    state = {k.replace("managertower.", "bridgetower.", 1): v for k, v in model.state_dict().items()}
    reference.load_state_dict(state, strict=True)
    inputs = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits)


# ---------------------------------------------------------------------------------------------------------------------
# NLVR2


def pooled_per_pass(model, inputs):
    """The backbone's pooler_output of each call during one NLVR2 forward, and the image token type it used."""
    seen = []
    hook = model.managertower.register_forward_hook(
        lambda mod, args, kwargs, out: seen.append((kwargs["image_token_type_idx"], out.pooler_output)),
        with_kwargs=True,
    )
    try:
        logits = model(**inputs).logits
    finally:
        hook.remove()
    return logits, seen


def nlvr2_inputs():
    inputs = tiny_inputs()
    inputs["pixel_values_2"] = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    return inputs


def test_nlvr2_two_passes_and_loss():
    config = tiny_tower_config()
    torch.manual_seed(0)
    model = ManagerTowerForNLVR2(config).eval()
    assert config.num_token_types == 2, "the caller's config is left alone"
    assert model.config.num_token_types == 3
    weight = model.managertower.token_type_embeddings.weight
    assert weight.shape == (3, 32) and torch.equal(weight[2], weight[1])

    inputs, labels = nlvr2_inputs(), torch.tensor([1, 0])
    out = model(**inputs, labels=labels)
    assert out.logits.shape == (2, 2)
    first = backbone(
        model,
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        pixel_values=inputs["pixel_values"],
        image_token_type_idx=1,
    ).pooler_output
    second = backbone(
        model,
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        pixel_values=inputs["pixel_values_2"],
        image_token_type_idx=2,
    ).pooler_output
    torch.testing.assert_close(out.logits, model.nlvr2_classifier(torch.cat([first, second], -1)))
    torch.testing.assert_close(out.loss, hand_ce(out.logits, labels))


def test_nlvr2_second_image_uses_token_type_2():
    model = make(ManagerTowerForNLVR2)
    inputs = nlvr2_inputs()
    logits, before = pooled_per_pass(model, inputs)
    assert [idx for idx, _ in before] == [1, 2]
    with torch.no_grad():
        # not a constant shift: the managers' LayerNorms would remove it
        shift = torch.randn(32, generator=torch.Generator().manual_seed(0))
        model.managertower.token_type_embeddings.weight[2] += shift
    logits_after, after = pooled_per_pass(model, inputs)
    torch.testing.assert_close(after[0][1], before[0][1])  # the first image's pass does not read row 2
    assert not torch.allclose(after[1][1], before[1][1])  # the second image's pass does
    assert not torch.allclose(logits_after, logits)


def test_nlvr2_loads_a_two_type_checkpoint_and_grows_row_2(tmp_path):
    source = make(ManagerTowerForImageTextMatching, seed=3)
    source.save_pretrained(tmp_path / "itm")
    old = source.managertower.token_type_embeddings.weight.detach()
    model = ManagerTowerForNLVR2.from_pretrained(tmp_path / "itm").eval()
    weight = model.managertower.token_type_embeddings.weight.detach()
    assert weight.shape == (3, 32) and model.config.num_token_types == 3
    torch.testing.assert_close(weight[:2], old)
    torch.testing.assert_close(weight[2], old[1])
    torch.testing.assert_close(
        model.managertower.cross_modal_text_pooler.dense.weight,
        source.managertower.cross_modal_text_pooler.dense.weight,
    )
    # and an NLVR2 checkpoint (3 types) round-trips
    inputs = nlvr2_inputs()
    model.save_pretrained(tmp_path / "nlvr2")
    again = ManagerTowerForNLVR2.from_pretrained(tmp_path / "nlvr2").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs).logits, model(**inputs).logits)


# ---------------------------------------------------------------------------------------------------------------------
# Pre-training


def pretrain_batch():
    inputs = tiny_inputs()
    masked = inputs["input_ids"].clone()
    masked[:, [1, 3]] = 4  # a stand-in <mask> id
    g = torch.Generator().manual_seed(9)
    return dict(
        inputs,
        mlm_input_ids=masked,
        mlm_labels=mlm_labels(inputs["input_ids"]),
        itm_pixel_values=torch.randn(2, 3, 32, 32, generator=g),
        itm_labels=torch.tensor([0, 1]),
    )


def count_backbone_calls(model):
    calls = []
    hook = model.managertower.register_forward_hook(lambda *a: calls.append(1))
    return calls, hook


def test_pretraining_two_passes_as_the_official_objectives():
    model = make(ManagerTowerForPreTraining)
    batch = pretrain_batch()
    calls, hook = count_backbone_calls(model)
    out = model(**batch)
    hook.remove()
    assert len(calls) == 2
    mlm_features = backbone(
        model,
        input_ids=batch["mlm_input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
    ).text_features
    itm_pooled = backbone(
        model,
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["itm_pixel_values"],
    ).pooler_output
    torch.testing.assert_close(out.mlm_logits, model.mlm_score(mlm_features))
    torch.testing.assert_close(out.itm_logits, model.itm_score(itm_pooled))
    mlm_loss, itm_loss = hand_ce(out.mlm_logits, batch["mlm_labels"]), hand_ce(out.itm_logits, batch["itm_labels"])
    torch.testing.assert_close(out.mlm_loss, mlm_loss)
    torch.testing.assert_close(out.itm_loss, itm_loss)
    torch.testing.assert_close(out.loss, mlm_loss + itm_loss)


def test_pretraining_one_objective_at_a_time():
    model = make(ManagerTowerForPreTraining)
    batch = pretrain_batch()
    only_mlm = {k: v for k, v in batch.items() if not k.startswith("itm_")}
    out = model(**only_mlm)
    assert out.itm_logits is None and out.itm_loss is None
    torch.testing.assert_close(out.loss, out.mlm_loss)
    only_itm = {k: v for k, v in batch.items() if not k.startswith("mlm_")}
    out = model(**only_itm)
    assert out.mlm_logits is None and out.mlm_loss is None
    torch.testing.assert_close(out.loss, out.itm_loss)


def test_pretraining_one_pass_when_both_objectives_share_inputs():
    """MLM labels (`labels`) and `itm_labels` on the same text and images: one backbone pass serves both."""
    model = make(ManagerTowerForPreTraining)
    inputs = tiny_inputs()
    labels, itm = mlm_labels(inputs["input_ids"]), torch.tensor([1, 0])
    labels[1] = -100
    calls, hook = count_backbone_calls(model)
    out = model(**inputs, labels=labels, itm_labels=itm)
    hook.remove()
    assert len(calls) == 1
    features = backbone(model, **inputs)
    torch.testing.assert_close(out.mlm_logits, model.mlm_score(features.text_features))
    torch.testing.assert_close(out.itm_logits, model.itm_score(features.pooler_output))
    torch.testing.assert_close(out.loss, hand_ce(out.mlm_logits, labels) + hand_ce(out.itm_logits, itm))
    with pytest.raises(ValueError, match="not both"):
        model(**inputs, labels=labels, mlm_labels=labels)


# ---------------------------------------------------------------------------------------------------------------------
# Retrieval: training


def test_retrieval_itc_itm_losses_and_hard_negatives():
    model = make(ManagerTowerForImageTextRetrieval, kind="aaum")
    g = torch.Generator().manual_seed(1)
    batch = 4
    inputs = {
        "input_ids": torch.randint(3, VOCAB, (batch, 6), generator=g),
        "attention_mask": torch.ones(batch, 6, dtype=torch.long),
        "pixel_values": torch.randn(batch, 3, 32, 32, generator=g),
    }
    inputs["pixel_values"][1] = inputs["pixel_values"][0]  # two captions of image 0
    image_ids = torch.tensor([0, 0, 1, 2])
    out = model(**inputs, image_ids=image_ids, generator=torch.Generator().manual_seed(7))

    # ITC, by hand: features from the towers alone, soft targets over positives
    text = F.normalize(
        model.itc_text_head.fc(model.managertower.encode_text(inputs["input_ids"], inputs["attention_mask"])[:, 0]),
        dim=-1,
    )
    image = F.normalize(model.itc_image_head.fc(model.managertower.encode_image(inputs["pixel_values"])[:, 0]), dim=-1)
    logits_t2i = text @ image.t() / 0.07
    torch.testing.assert_close(out.logits_per_text, logits_t2i)
    torch.testing.assert_close(out.logits_per_image, logits_t2i.t())
    positive = (image_ids[:, None] == image_ids[None, :]).float()
    targets = positive / positive.sum(1, keepdim=True)
    itc = (hand_soft_ce(logits_t2i.t(), targets) + hand_soft_ce(logits_t2i, targets)) / 2
    torch.testing.assert_close(out.itc_loss, itc)

    # hard negatives: drawn from softmax(ITC) with positives zeroed, one image per text then one text per image
    draw = torch.Generator().manual_seed(7)
    w_t2i = logits_t2i.softmax(1) * (1 - positive)
    w_i2t = logits_t2i.t().softmax(1) * (1 - positive)
    neg_image = torch.multinomial(w_t2i, 1, generator=draw).view(-1)
    neg_text = torch.multinomial(w_i2t, 1, generator=draw).view(-1)
    assert (image_ids[neg_image] != image_ids).all() and (image_ids[neg_text] != image_ids).all()
    ids, mask, pixels = inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"]
    pairs = [(ids, mask, pixels), (ids, mask, pixels[neg_image]), (ids[neg_text], mask[neg_text], pixels)]
    itm_logits = torch.cat(
        [
            model.itm_score(backbone(model, input_ids=t, attention_mask=m, pixel_values=p).pooler_output)
            for t, m, p in pairs
        ]
    )
    torch.testing.assert_close(out.itm_logits, itm_logits)
    itm_labels = torch.tensor([1] * batch + [0] * 2 * batch)
    assert torch.equal(out.itm_labels, itm_labels)
    torch.testing.assert_close(out.itm_loss, hand_ce(itm_logits, itm_labels))
    torch.testing.assert_close(out.loss, itc + out.itm_loss)


def _count_rows(module, seen: list):
    """Record the batch size of every call of `module` (text embeddings: dim 0; CLIP's pre-transformer: dim 0)."""
    return module.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0] if args else None))


def test_retrieval_training_runs_each_tower_once_per_batch():
    """The negatives reuse the batch's own unimodal layers (the official default): one pass of each tower for B
    pairs, not 3B; in training too, where the towers' dropout is then shared by a negative and its positive."""
    model = make(ManagerTowerForImageTextRetrieval, train=True, seed=3)
    inputs = tiny_inputs(batch=3)
    texts, images = [], []
    hooks = [
        _count_rows(model.managertower.text_model.embeddings.word_embeddings, texts),
        _count_rows(model.managertower.vision_model.visual.embeddings, images),
    ]
    try:
        out = model(**inputs, generator=torch.Generator().manual_seed(0))
    finally:
        for hook in hooks:
            hook.remove()
    assert texts == [3] and images == [3]
    assert out.itm_logits.shape == (9, 2)
    out.loss.backward()  # gradients flow through the shared towers
    assert model.managertower.text_model.embeddings.word_embeddings.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["bridge", "saum", "aaum", "sam"])
def test_fuse_of_paired_tower_states_is_the_forward_of_those_pairs(kind):
    model = make(ManagerTowerForImageTextRetrieval, kind=kind, seed=4).managertower
    inputs = tiny_inputs(batch=3)
    text_index, image_index = torch.tensor([2, 0, 1, 1]), torch.tensor([0, 0, 2, 1])
    with torch.no_grad():
        towers = model.unimodal(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"])
        fused = model.fuse(towers.pairs(text_index, image_index), output_aggregation_weights=True)
        direct = model(
            input_ids=inputs["input_ids"][text_index],
            attention_mask=inputs["attention_mask"][text_index],
            pixel_values=inputs["pixel_values"][image_index],
            output_aggregation_weights=True,
        )
    torch.testing.assert_close(fused.pooler_output, direct.pooler_output)
    torch.testing.assert_close(fused.text_features, direct.text_features)
    torch.testing.assert_close(fused.image_features, direct.image_features)
    torch.testing.assert_close(fused.image_unimodal, direct.image_unimodal)
    if kind != "bridge":
        torch.testing.assert_close(fused.aggregation_weights, direct.aggregation_weights)
    with pytest.raises(ValueError, match="3 text indices for 2 image indices"):
        towers.pairs(torch.tensor([0, 1, 2]), torch.tensor([0, 1]))


def test_retrieval_without_loss_and_temperature_clamp():
    model = make(ManagerTowerForImageTextRetrieval)
    inputs = tiny_inputs()
    out = model(**inputs, return_loss=False)
    assert out.loss is None and out.itm_logits.shape == (2, 2) and out.logits_per_text.shape == (2, 2)
    assert out.text_embeds.shape == (2, 256)
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), torch.ones(2))
    with torch.no_grad():
        model.temperature.fill_(3.0)
    model(**inputs, return_loss=False)
    assert model.temperature.item() == pytest.approx(0.5)
    with torch.no_grad():
        model.temperature.fill_(1e-6)
    model(**inputs, return_loss=False)
    assert model.temperature.item() == pytest.approx(0.001)


def test_retrieval_contrastive_width_and_temperature_init():
    model = make(ManagerTowerForImageTextRetrieval, contrastive_hidden_size=16)
    assert model.itc_text_head.fc.weight.shape == (16, 32)  # D_text
    assert model.itc_image_head.fc.weight.shape == (16, 64)  # D_vision
    assert model.temperature.item() == pytest.approx(0.07)


# ---------------------------------------------------------------------------------------------------------------------
# Retrieval: evaluation


@pytest.fixture(scope="module")
def retrieval_set():
    model = make(ManagerTowerForImageTextRetrieval, seed=2)
    g = torch.Generator().manual_seed(3)
    pixels = torch.randn(3, 3, 32, 32, generator=g)
    ids = torch.randint(3, VOCAB, (5, 6), generator=g)
    mask = torch.ones(5, 6, dtype=torch.long)
    mask[4, 4:] = 0
    ids[4, 4:] = 1
    with torch.no_grad():
        brute = torch.stack(
            [
                torch.stack(
                    [
                        model.itm_score(
                            backbone(
                                model,
                                input_ids=ids[j : j + 1],
                                attention_mask=mask[j : j + 1],
                                pixel_values=pixels[i : i + 1],
                            ).pooler_output
                        )[0, 1]
                        for j in range(5)
                    ]
                )
                for i in range(3)
            ]
        )
        sims = model.image_itc_features(pixels) @ model.text_itc_features(ids, mask).t()
    image_batches = [
        {"pixel_values": pixels[:2], "pixel_mask": torch.ones(2, 32, 32, dtype=torch.long)},
        {"pixel_values": pixels[2:], "pixel_mask": torch.ones(1, 32, 32, dtype=torch.long)},
    ]
    text_batches = [
        {"input_ids": ids[:3], "attention_mask": mask[:3]},
        {"input_ids": ids[3:], "attention_mask": mask[3:]},
    ]
    return model, image_batches, text_batches, brute, sims


def test_retrieval_scores_with_k_at_least_n_is_the_itm_matrix(retrieval_set, capsys):
    model, image_batches, text_batches, brute, sims = retrieval_set
    model.train()
    scores, itc = retrieval_scores(model, image_batches, text_batches, k=8, batch_size=4, return_itc=True)
    assert model.training, "the model's mode is restored"
    assert scores.shape == (3, 5)
    torch.testing.assert_close(scores, brute)
    torch.testing.assert_close(itc, sims)
    assert "ITM re-ranking" in capsys.readouterr().err


def test_retrieval_scores_encode_each_image_once_per_batch_of_pairs(retrieval_set):
    """Re-ranking runs the vision tower once per distinct image in each batch of pairs (pairs in image order), not
    once per pair: here 3 images x 5 texts = 15 pairs in batches of 4."""
    model, image_batches, text_batches, brute, _ = retrieval_set
    pairs = [(i, j) for i in range(3) for j in range(5)]  # every pair is ranked with k >= n, row by row
    expected = [len({i for i, _ in pairs[s : s + 4]}) for s in range(0, len(pairs), 4)]  # [1, 2, 2, 1]
    images = []
    hook = _count_rows(model.managertower.vision_model.visual.embeddings, images)
    try:
        scores = retrieval_scores(model, image_batches, text_batches, k=8, batch_size=4, progress=False)
    finally:
        hook.remove()
    assert images[:2] == [2, 1]  # the ITC features, batch by batch
    assert images[2:] == expected and sum(expected) < len(pairs)
    torch.testing.assert_close(scores, brute)


def test_retrieval_scores_top_k_and_minus_100_elsewhere(retrieval_set):
    model, image_batches, text_batches, brute, sims = retrieval_set
    scores = retrieval_scores(model, image_batches, text_batches, k=1, progress=False)
    expected = torch.full((3, 5), -100.0)
    for i in range(3):  # image -> text: each image's best text by ITC
        j = sims[i].argmax()
        expected[i, j] = brute[i, j]
    for j in range(5):  # text -> image: each text's best image by ITC; max of the two matrices
        i = sims[:, j].argmax()
        expected[i, j] = max(expected[i, j], brute[i, j])
    torch.testing.assert_close(scores, expected)
    assert (scores == -100).sum() >= 15 - 3 - 5
    # tensors instead of dicts
    again = retrieval_scores(
        model, [b["pixel_values"] for b in image_batches], [b for b in text_batches], k=1, progress=False
    )
    torch.testing.assert_close(again, scores)


# ---------------------------------------------------------------------------------------------------------------------
# Save / load; every manager type; gradients


def test_save_pretrained_round_trip(tmp_path):
    model = make(ManagerTowerForQuestionAnswering, num_labels=NUM_ANSWERS, seed=4)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = ManagerTowerForQuestionAnswering.from_pretrained(tmp_path).eval()
    assert loaded.config.num_labels == NUM_ANSWERS and loaded.config.manager_type == "aaum"
    inputs = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)
    # a pre-training checkpoint feeds the retrieval model's backbone and ITM head by prefix
    pretrain = make(ManagerTowerForPreTraining, seed=5)
    pretrain.save_pretrained(tmp_path / "pt")
    retrieval = ManagerTowerForImageTextRetrieval.from_pretrained(tmp_path / "pt")
    torch.testing.assert_close(retrieval.itm_score.fc.weight, pretrain.itm_score.fc.weight)
    torch.testing.assert_close(
        retrieval.managertower.token_type_embeddings.weight, pretrain.managertower.token_type_embeddings.weight
    )
    assert retrieval.temperature.item() == pytest.approx(0.07)


def head_batch(name):
    inputs = tiny_inputs()
    if name == "mlm":
        return ManagerTowerForMaskedLM, dict(inputs, labels=mlm_labels(inputs["input_ids"])), ["mlm_score"]
    if name == "itm":
        return ManagerTowerForImageTextMatching, dict(inputs, labels=torch.tensor([1, 0])), ["itm_score"]
    if name == "pretrain":
        return ManagerTowerForPreTraining, pretrain_batch(), ["mlm_score", "itm_score"]
    if name == "vqa":
        return (ManagerTowerForQuestionAnswering, dict(inputs, labels=torch.rand(2, 2)), ["vqa_classifier"])
    if name == "snli":
        return ManagerTowerForVisualEntailment, dict(inputs, labels=torch.tensor([0, 2])), ["snli_classifier"]
    if name == "nlvr2":
        return ManagerTowerForNLVR2, dict(nlvr2_inputs(), labels=torch.tensor([0, 1])), ["nlvr2_classifier"]
    return (
        ManagerTowerForImageTextRetrieval,
        dict(inputs, generator=torch.Generator().manual_seed(0)),
        ["itc_text_head", "itc_image_head", "itm_score", "temperature"],
    )


def grad_norm(module_or_param):
    params = [module_or_param] if isinstance(module_or_param, torch.nn.Parameter) else module_or_param.parameters()
    return sum(p.grad.abs().sum().item() for p in params if p.grad is not None)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["mlm", "itm", "pretrain", "vqa", "snli", "nlvr2", "retrieval"])
def test_every_head_trains_with_every_manager_type(kind, name):
    cls, batch, heads = head_batch(name)
    model = make(cls, kind=kind, train=True)
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for head in heads:
        assert grad_norm(getattr(model, head)) > 0, head
    tower = model.managertower
    assert grad_norm(tower.text_model.encoder.layer[-1]) > 0
    assert grad_norm(tower.vision_model.visual.transformer.resblocks[-1]) > 0
    assert grad_norm(tower.cross_modal_image_layers[0]) > 0
    assert grad_norm(tower.cross_modal_text_pooler) > 0 or name == "mlm"
    if kind != "bridge":
        assert grad_norm(tower.cross_modal_text_managers) > 0 and grad_norm(tower.cross_modal_image_managers) > 0


# ---------------------------------------------------------------------------------------------------------------------
# The collators' batches (tower.data) feed the heads as they are


def test_collator_batches_feed_the_heads(tmp_path):
    from llava_manager.tower import data
    from llava_manager.tower.data import synthetic

    processor = synthetic.tiny_tower_processor()
    vocab = len(processor.tokenizer)

    def items(records, n=4):
        dataset = data.TowerDataset(records)
        return [dataset[i] for i in range(n)]

    def paths(task):
        return synthetic.write_synthetic(tmp_path / task, task, n=8, seed=0)

    p = paths("pretrain")
    pretrain = data.read_image_captions(p["annotations"], p["image_folder"]).records
    p = paths("vqav2")
    vqa = data.read_vqav2(p["train_questions"], p["train_annotations"], p["root"]).records
    label2ans = data.build_answer_vocab(vqa, min_count=1)
    p = paths("snli_ve")
    snli = data.read_snli_ve(p["train"], p["image_folder"]).records
    p = paths("nlvr2")
    nlvr2 = data.read_nlvr2(p["train"], p["root"]).records
    p = paths("flickr30k")
    flickr = data.caption_pairs(data.read_flickr30k_karpathy(p["annotations"], p["image_folder"], "train").records)

    cases = [
        (ManagerTowerForPreTraining, data.PretrainCollator(processor, seed=0), pretrain, {}),
        (
            ManagerTowerForQuestionAnswering,
            data.VQACollator(processor, label2ans=label2ans),
            vqa,
            {"num_labels": len(label2ans)},
        ),
        (ManagerTowerForVisualEntailment, data.SNLIVECollator(processor), snli, {}),
        (ManagerTowerForNLVR2, data.NLVR2Collator(processor), nlvr2, {}),
        (
            ManagerTowerForImageTextRetrieval,
            data.RetrievalCollator(processor, return_image_ids=True),
            [flickr[i] for i in (0, 1, 5, 10)],
            {},
        ),
    ]
    for cls, collate, records, overrides in cases:
        batch = collate(items(records))
        text_config = dict(tiny_tower_kwargs()["text_config"], vocab_size=vocab)
        model = make(cls, text_config=text_config, **overrides)
        out = model(**batch)
        assert torch.isfinite(out.loss), cls.__name__
    assert batch["image_ids"].tolist() == [0, 0, 1, 2]
