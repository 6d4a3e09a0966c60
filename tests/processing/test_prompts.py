"""Prompts as the model was trained: the exact strings for a typed-content chat template (the llava-hf checkpoints'),
a plain-string template (Qwen2's, which the same checkpoints keep in tokenizer_config.json) and no template, in both
formats; a template that renders no image placeholder is an error before the model is loaded."""

from __future__ import annotations

import copy

import pytest
from support.published import CHAT_TEMPLATE, QWEN2_CHAT_TEMPLATE

from llava_manager.analysis.inputs import encode
from llava_manager.processing.processors import load_processor
from llava_manager.processing.prompts import chat_prompt

QUESTION = "What colour is the shape ?"
# LLaVA-NeXT's conv_qwen ("qwen_1_5"), as lmms-eval's llava_onevision model prompts: placeholders joined by spaces.
QWEN_1_IMAGE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
    f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
)
QWEN_2_IMAGES = QWEN_1_IMAGE.replace("<image>\n", "<image> <image>\n")
QWEN_NO_IMAGE = QWEN_1_IMAGE.replace("<image>\n", "")
# The llava-hf template; transformers' test_processor_llava_onevision.py::test_chat_template expects
# "<|im_start|>user <image>\nWhat is shown in this image?<|im_end|><|im_start|>assistant\n" from the published one.
TYPED_1_IMAGE = f"<|im_start|>user <image>\n{QUESTION}<|im_end|><|im_start|>assistant\n"
TYPED_2_IMAGES = f"<|im_start|>user <image><image>\n{QUESTION}<|im_end|><|im_start|>assistant\n"
# A template that only ever renders the role: no text, no images.
NO_PLACEHOLDER = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n<|im_end|>{% endfor %}<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def processor(published_si):
    return load_processor(published_si)


def test_the_published_processor_carries_both_templates(processor):
    assert processor.chat_template == CHAT_TEMPLATE  # chat_template.json
    assert processor.tokenizer.chat_template == QWEN2_CHAT_TEMPLATE  # tokenizer_config.json


@pytest.mark.parametrize("template", [CHAT_TEMPLATE, QWEN2_CHAT_TEMPLATE, None], ids=["typed", "plain", "none"])
def test_the_default_is_the_training_format_whatever_the_template(processor, template):
    processor.chat_template = template
    processor.tokenizer.chat_template = template
    try:
        assert chat_prompt(processor, QUESTION, 1) == QWEN_1_IMAGE
        assert chat_prompt(processor, QUESTION, 2) == QWEN_2_IMAGES
        assert chat_prompt(processor, QUESTION, 0) == QWEN_NO_IMAGE
        assert chat_prompt(processor, f"<image>\n{QUESTION}", 1) == QWEN_1_IMAGE  # placed by the text: kept
    finally:
        processor.chat_template, processor.tokenizer.chat_template = CHAT_TEMPLATE, QWEN2_CHAT_TEMPLATE


def test_chat_template_format_renders_typed_content_with_the_published_template(processor):
    assert chat_prompt(processor, QUESTION, 1, "chat_template") == TYPED_1_IMAGE
    assert chat_prompt(processor, QUESTION, 2, "chat_template") == TYPED_2_IMAGES
    assert chat_prompt(processor, f"<image>\n{QUESTION}", 1, "chat_template") == TYPED_1_IMAGE
    # the same template through transformers' own processor API, with typed content
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == TYPED_1_IMAGE


def test_chat_template_format_falls_back_to_a_plain_string_template(processor):
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
        f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert chat_prompt(processor.tokenizer, QUESTION, 1, "chat_template") == expected  # the tokenizer's template
    assert chat_prompt(processor, QUESTION, 1, "chat_template", chat_template=QWEN2_CHAT_TEMPLATE) == expected


def test_no_template_or_one_without_placeholders_is_an_error(processor):
    bare = copy.deepcopy(processor.tokenizer)
    bare.chat_template = None
    with pytest.raises(ValueError, match="has no chat template and none was given; use prompt_format='qwen_1_5'"):
        chat_prompt(bare, QUESTION, 1, "chat_template")
    with pytest.raises(ValueError, match="renders neither typed content parts nor a plain string with 1 <image>"):
        chat_prompt(processor, QUESTION, 1, "chat_template", chat_template=NO_PLACEHOLDER)
    with pytest.raises(ValueError, match="prompt_format 'llava'"):
        chat_prompt(processor, QUESTION, 1, "llava")
    with pytest.raises(ValueError, match="with prompt_format='qwen_1_5', which does not use one"):
        chat_prompt(processor, QUESTION, 1, "qwen_1_5", chat_template=CHAT_TEMPLATE)


def test_evaluation_model_refuses_a_template_without_placeholders_before_loading(published_si, monkeypatch):
    pytest.importorskip("lmms_eval")
    from llava_manager.evaluation import lmms_eval_model

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the prompt was checked")

    monkeypatch.setattr(lmms_eval_model, "from_pretrained", loaded)
    with pytest.raises(ValueError, match="renders neither typed content parts"):
        lmms_eval_model.LlavaOvManager(pretrained=str(published_si), chat_template=NO_PLACEHOLDER, device="cpu")
    with pytest.raises(ValueError, match="prompt_format 'chat'"):
        lmms_eval_model.LlavaOvManager(pretrained=str(published_si), prompt_format="chat", device="cpu")


@pytest.mark.parametrize("prompt_format, expected", [("qwen_1_5", QWEN_1_IMAGE), ("chat_template", TYPED_1_IMAGE)])
def test_analysis_inputs_use_the_same_prompts(processor, prompt_format, expected):
    from PIL import Image

    inputs = encode(processor, Image.new("RGB", (30, 30), (200, 10, 10)), QUESTION, prompt_format=prompt_format)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    ids = [i for i in inputs["input_ids"][0].tolist() if i != image_id]
    text_ids = [i for i in processor.tokenizer(expected.replace("<image>", ""))["input_ids"]]
    assert ids == text_ids and (inputs["input_ids"][0] == image_id).sum() > 1
