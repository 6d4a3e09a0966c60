"""Mistral3's processor (transformers' `PixtralProcessor`) without torchvision: transformers' own class, the image
tokens and pixels its own tests expect, saved and loaded back through `load_processor`."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    Mistral3ForConditionalGeneration,
    PreTrainedTokenizerFast,
)
from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil
from transformers.processing_utils import ProcessorMixin
from transformers.utils import is_torchvision_available

from llava_manager.families import get_family, random_inputs
from llava_manager.families.llava import pixtral_12b_config
from llava_manager.families.mistral3 import mistral3_tiny_config, mistral_small_3_1_config
from llava_manager.families.pixtral import pixtral_processor_class
from llava_manager.processing.processors import family_of_processor, load_processor

# Mistral-Small-3.1's control tokens at their real ids (transformers' tests/models/mistral3/test_processing_mistral3.py
# expects <s> 1, [IMG] 10, [IMG_BREAK] 12, [IMG_END] 13 from the published tokenizer).
REAL_IDS = {"<unk>": 0, "<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4, "[IMG]": 10, "[IMG_BREAK]": 12, "[IMG_END]": 13}


def v7_tokenizer():
    fillers = {f"<SPECIAL_{i}>": i for i in range(20) if i not in REAL_IDS.values()}
    vocab = fillers | REAL_IDS | {"what": 20, "is": 21, "this": 22, "?": 23}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in REAL_IDS if t.startswith("[")]})
    return tokenizer


def processor(**settings):
    image_processor = PixtralImageProcessorPil(size={"longest_edge": 30}, patch_size={"height": 12, "width": 12})
    return pixtral_processor_class()(image_processor=image_processor, tokenizer=v7_tokenizer(), **settings)


def test_the_class_is_transformers_own_and_the_import_leaves_nothing_behind():
    cls = pixtral_processor_class()
    assert cls.__module__ == "transformers.models.pixtral.processing_pixtral" and cls.__name__ == "PixtralProcessor"
    assert issubclass(cls, ProcessorMixin) and get_family("mistral3").processor_class is cls
    if not is_torchvision_available():  # the PIL module answered the torchvision module's import for that import only
        assert "transformers.models.pixtral.image_processing_pixtral" not in sys.modules


def test_the_processor_module_imports_only_what_the_pil_module_also_defines():
    """`processing_pixtral`'s imports from the torchvision image processor's module are names the PIL one defines."""
    import ast
    import importlib.util

    from transformers.models.pixtral import image_processing_pil_pixtral

    source = Path(importlib.util.find_spec("transformers.models.pixtral.processing_pixtral").origin).read_text()
    names = [
        alias.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom) and node.module == "image_processing_pixtral"
        for alias in node.names
    ]
    assert names == ["get_resize_output_image_size"]
    assert all(callable(getattr(image_processing_pil_pixtral, name, None)) for name in names)


def test_an_image_expands_to_rows_of_image_tokens_as_transformers_tests_expect():
    """transformers' `test_processor_with_single_image` (Mistral3): a 876 x 1300 image at longest_edge 30, patch 6
    merged 2 x 2, gives pixels of 24 x 36 and [IMG] x 3, [IMG_BREAK], [IMG] x 3, [IMG_END]."""
    image = np.random.default_rng(0).integers(0, 255, size=(3, 876, 1300), dtype=np.uint8)
    out = processor(patch_size=6, spatial_merge_size=2)(text="[IMG] what is this ?", images=image, return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 24, 36)
    assert out["image_sizes"].tolist() == [[24, 36]]
    ids = out["input_ids"][0].tolist()
    assert ids == [10, 10, 10, 12, 10, 10, 10, 13, 20, 21, 22, 23]  # (this tokenizer puts no <s> first)


def test_saved_with_its_model_it_loads_back_the_same(tmp_path):
    made = processor(patch_size=6, spatial_merge_size=2)
    made.save_pretrained(tmp_path)
    get_family("mistral3").tiny_config().save_pretrained(tmp_path)
    loaded = load_processor(tmp_path)
    assert type(loaded) is pixtral_processor_class() and family_of_processor(loaded) == "mistral3"
    assert (loaded.patch_size, loaded.spatial_merge_size) == (6, 2)
    image = np.random.default_rng(1).integers(0, 255, size=(3, 40, 20), dtype=np.uint8)
    expected, got = (p(text="[IMG] what", images=image, return_tensors="pt") for p in (made, loaded))
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_a_pixtral_12b_layout_loads_pixtral_processor_whose_tokens_the_model_fills(tmp_path):
    """Pixtral-12B is a LLaVA model saved with `PixtralProcessor` (no 2 x 2 merge): `load_processor` reads the
    processor the checkpoint carries, not LLaVA-1.5's, and its [IMG] tokens are the patched model's image features."""
    from llava_manager import apply_manager
    from llava_manager.synthetic.data import tiny_processor

    mistral3 = get_family("mistral3").tiny_config()
    tokenizer = tiny_processor(family="mistral3").tokenizer
    config = LlavaConfig(
        vision_config=mistral3.vision_config.to_dict(),
        text_config=mistral3.text_config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    patch = config.vision_config.patch_size
    image_processor = PixtralImageProcessorPil(size={"longest_edge": 16}, patch_size={"height": patch, "width": patch})
    made = pixtral_processor_class()(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch, spatial_merge_size=1
    )
    config.save_pretrained(tmp_path)
    made.save_pretrained(tmp_path)
    loaded = load_processor(tmp_path)
    assert type(loaded) is pixtral_processor_class() and loaded.spatial_merge_size == 1

    model = apply_manager(LlavaForConditionalGeneration(config).eval())
    inputs = loaded(text="[IMG] red", images=Image.new("RGB", (16, 8), (200, 30, 30)), return_tensors="pt")
    rows = (inputs["input_ids"][0] == config.image_token_index).sum()
    assert rows == (8 // patch) * (16 // patch)  # one [IMG] per 4 x 4 px patch, rows closed by [IMG_BREAK]
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


# (family, published config, image processor's longest edge and patch as the checkpoint's preprocessor_config.json
# says: tests/support/published_vlm.py)
PUBLISHED_PIXTRAL = [("mistral3", mistral_small_3_1_config, 1540, 14), ("llava", pixtral_12b_config, 1024, 16)]


@pytest.mark.parametrize("family, make_config, longest_edge, patch", PUBLISHED_PIXTRAL)
@pytest.mark.parametrize("height, width", [(336, 336), (336, 500), (3000, 1000), (20, 30)])
def test_random_inputs_size_an_image_as_the_published_image_processor_does(
    family, make_config, longest_edge, patch, height, width
):
    """Benchmarks and analyses take a `height` x `width` image at its own size, as Mistral-Small-3.1's and
    Pixtral-12B's image processors size it, not at the tower's largest size."""
    image_processor = PixtralImageProcessorPil(
        size={"longest_edge": longest_edge}, patch_size={"height": patch, "width": patch}
    )
    expected = image_processor(images=[Image.new("RGB", (width, height))], return_tensors="pt")
    got = get_family(family).pixel_inputs(make_config(), height, width, 2, True, torch.float32, "cpu")
    assert got["pixel_values"].shape == (2, *expected["pixel_values"].shape[1:])
    assert got["image_sizes"].tolist() == expected["image_sizes"].tolist() * 2


def test_random_inputs_fill_a_tiny_mistral3_and_pixtral_llava_with_an_image_of_their_size():
    mistral3 = mistral3_tiny_config()
    pixtral_llava = LlavaConfig(
        vision_config=mistral3.vision_config.to_dict(),
        text_config=mistral3.text_config.to_dict(),
        image_token_index=mistral3.image_token_index,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    # 8 x 16 px, 2 x 4 patches of 4 px: Mistral3 merges them 2 x 2 into 2 tokens, the LLaVA model keeps all 8
    for model, tokens in (
        (Mistral3ForConditionalGeneration(mistral3), 2),
        (LlavaForConditionalGeneration(pixtral_llava), 8),
    ):
        inputs = random_inputs(model.eval(), 8, 16, 5)
        assert inputs["image_sizes"].tolist() == [[8, 16]]
        assert int((inputs["input_ids"] == model.config.image_token_index).sum()) == tokens
        with torch.no_grad():
            assert torch.isfinite(model(**inputs).logits).all()
