"""The patch on every input layout: left padding, different crop counts, multi-image samples, inputs_embeds."""

import pytest
import torch
from support.helpers import make_batch, randomize, tiny_model
from support.reference import add_reference_hooks

from llava_manager import apply_manager, get_managers


def check_against_reference(batch_fn, select_strategy="full"):
    model = apply_manager(tiny_model(vision_feature_select_strategy=select_strategy))
    batch = batch_fn(model)
    weights = randomize(model)
    with torch.no_grad():
        patched = model(**batch).logits
    reference = tiny_model(vision_feature_select_strategy=select_strategy)
    add_reference_hooks(reference, batch, weights, get_managers(model)[0].vision_layers)
    with torch.no_grad():
        expected = reference(**batch).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(patched[mask], expected[mask], rtol=1e-5, atol=1e-5)
    return model, batch


@pytest.mark.parametrize("left_pad", [True, False])
def test_padded_batch_with_different_crop_counts(left_pad):
    images = [(28, 28), (28, 56), (100, 110), (56, 30)]  # 1, 3, 17 and 5 crops
    model, batch = check_against_reference(lambda m: make_batch(m, images, prompt_lens=[0, 5, 2, 9], left_pad=left_pad))
    assert (batch["attention_mask"] == 0).any()


def test_multi_image_samples_use_base_crops_only():
    images = [(40, 80), (100, 110), (28, 56), (56, 56)]
    model, batch = check_against_reference(lambda m: make_batch(m, images, images_per_sample=[3, 1]))
    tokens = (batch["input_ids"] == model.config.image_token_id).sum(1)
    per_crop = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    assert tokens[0] == 3 * (per_crop + 1)  # three base crops, each with its newline row


def test_default_select_strategy_drops_first_token():
    images = [(40, 80), (100, 110)]  # two images in one sample: base crops only, so no grid to unpad
    check_against_reference(lambda m: make_batch(m, images, images_per_sample=[2]), select_strategy="default")


def test_inputs_embeds_path_equals_input_ids_path():
    model = apply_manager(tiny_model())
    batch = make_batch(model, [(40, 80), (28, 28)])
    randomize(model)
    with torch.no_grad():
        by_ids = model(**batch).logits
        embeds = model.get_input_embeddings()(batch["input_ids"])
        by_embeds = model(
            inputs_embeds=embeds,
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            image_sizes=batch["image_sizes"],
        ).logits
    torch.testing.assert_close(by_embeds, by_ids, rtol=0, atol=0)


def test_text_only_batch_is_untouched():
    model = tiny_model()
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        base = model(input_ids=ids).logits
        apply_manager(model)
        randomize(model)
        assert torch.equal(model(input_ids=ids).logits, base)
