"""The `published_si` / `published_ov` fixtures (support/published.py) are faithful to the llava-hf checkpoints and
usable. The expected values below are typed out from the sources cited in support/published.py, not imported from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

# chat_template.json of llava-hf/llava-onevision-qwen2-0.5b-{si,ov}-hf (main; the same template as transformers'
# tests/models/llava_onevision/test_processor_llava_onevision.py).
PUBLISHED_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# tokenizer_config.json keeps Qwen2-0.5B-Instruct's text-only template.
QWEN2_TEXT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<image>": 151646,
    "<video>": 151647,
}
PUBLISHED_FILES = {
    "added_tokens.json",
    "chat_template.json",
    "config.json",
    "generation_config.json",
    "merges.txt",
    "model.safetensors",
    "preprocessor_config.json",
    "processor_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "video_processor/preprocessor_config.json",
    "vocab.json",
}
REAL_PINPOINTS = [[h, w] for h in (384, 768, 1152, 1536, 1920, 2304) for w in (384, 768, 1152, 1536, 1920, 2304)]
TOKEN_FLAGS = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}

VARIANTS = ["published_si", "published_ov"]


def _json(directory: Path, name: str) -> dict:
    return json.loads((directory / name).read_text(encoding="utf-8"))


@pytest.fixture(params=VARIANTS)
def checkpoint(request) -> Path:
    return request.getfixturevalue(request.param)


def test_file_names_are_the_published_ones(checkpoint):
    files = {str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*") if p.is_file()}
    assert files == PUBLISHED_FILES
    # The published repos have no chat_template.jinja and no video_preprocessor_config.json.
    assert not (checkpoint / "chat_template.jinja").exists()


def test_unshrunk_files_have_the_published_sizes(checkpoint):
    """Files with no size in them are byte-for-byte the size the Hub lists for them."""
    sizes = {
        "added_tokens.json": 122,
        "chat_template.json": 826,
        "generation_config.json": 126,
        "special_tokens_map.json": 367,
        "tokenizer_config.json": 1695,
    }  # 1695: listed as "1.7 kB"
    assert {name: (checkpoint / name).stat().st_size for name in sizes} == sizes


def test_config_fields_are_the_published_ones(checkpoint):
    config = _json(checkpoint, "config.json")
    text, vision = config.pop("text_config"), config.pop("vision_config")
    pinpoints = config.pop("image_grid_pinpoints")
    assert config == {
        "architectures": ["LlavaOnevisionForConditionalGeneration"],
        "ignore_index": -100,
        "image_token_index": 151646,
        "model_type": "llava_onevision",
        "projector_hidden_act": "gelu",
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.45.0.dev0",
        "use_image_newline_parameter": True,
        "video_token_index": 151647,
        "vision_aspect_ratio": "anyres_max_9",
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
    }
    sizes = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"}
    assert {k: v for k, v in text.items() if k not in sizes | {"num_key_value_heads", "max_window_layers"}} == {
        "_name_or_path": "Qwen/Qwen2-0.5B-Instruct",
        "architectures": ["Qwen2ForCausalLM"],
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "model_type": "qwen2",
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "vocab_size": 151936,
    }
    assert {k: v for k, v in vision.items() if k not in sizes | {"image_size", "patch_size"}} == {
        "model_type": "siglip_vision_model",
        "vision_use_head": False,
    }
    # Sizes shrunk (real: text 896 / 4864 / 24 layers / 14 heads / 2 KV heads; SigLIP 1152 / 4304 / 26 / 16).
    assert text["num_attention_heads"] == 14 and text["num_key_value_heads"] == 2
    assert text["max_window_layers"] == text["num_hidden_layers"] < 24 and text["hidden_size"] < 896
    assert vision["hidden_size"] < 1152 and vision["num_hidden_layers"] < 26
    # The pinpoints are the published 6 x 6 grid, scaled with the crop size.
    scale = vision["image_size"] / 384
    assert pinpoints == [[round(h * scale), round(w * scale)] for h, w in REAL_PINPOINTS]


def test_config_loads_as_published(checkpoint):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(checkpoint)
    assert type(config).__name__ == "LlavaOnevisionConfig"
    assert (config.image_token_id, config.video_token_id) == (151646, 151647)
    assert config.text_config.vocab_size == 151936
    assert config.dtype == torch.float16
    # Published: tie_word_embeddings false at the top, true in text_config; transformers 5 forwards the latter.
    assert config.tie_word_embeddings is True and config.text_config.tie_word_embeddings is True


def test_processor_and_generation_files_are_the_published_ones(checkpoint):
    config = _json(checkpoint, "config.json")
    side = config["vision_config"]["image_size"]
    tokens = (side // config["vision_config"]["patch_size"]) ** 2  # real: (384 // 14) ** 2 = 729
    assert _json(checkpoint, "processor_config.json") == {
        "image_token": "<image>",
        "num_image_tokens": tokens,
        "processor_class": "LlavaOnevisionProcessor",
        "video_token": "<video>",
        "vision_feature_select_strategy": "full",
    }
    assert _json(checkpoint, "generation_config.json") == {
        "_from_model_config": True,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "transformers_version": "4.45.0.dev0",
    }
    common = {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_pad": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "processor_class": "LlavaOnevisionProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": side, "width": side},
    }
    assert _json(checkpoint, "preprocessor_config.json") == {
        **common,
        "image_grid_pinpoints": config["image_grid_pinpoints"],
        "image_processor_type": "LlavaOnevisionImageProcessor",
    }
    assert _json(checkpoint, "video_processor/preprocessor_config.json") == {
        **common,
        "image_processor_type": "LlavaOnevisionVideoProcessor",
    }


def test_tokenizer_files_are_the_published_ones(checkpoint):
    assert _json(checkpoint, "added_tokens.json") == SPECIAL_IDS
    assert _json(checkpoint, "special_tokens_map.json") == {
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "eos_token": {"content": "<|im_end|>", **TOKEN_FLAGS},
        "pad_token": {"content": "<|endoftext|>", **TOKEN_FLAGS},
    }
    config = _json(checkpoint, "tokenizer_config.json")
    assert config.pop("added_tokens_decoder") == {
        str(i): {"content": token, **TOKEN_FLAGS, "special": True} for token, i in SPECIAL_IDS.items()
    }
    assert config == {
        "add_prefix_space": False,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": QWEN2_TEXT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "processor_class": "LlavaOnevisionProcessor",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    assert len(_json(checkpoint, "vocab.json")) == 151643  # Qwen2's regular tokens; the specials follow
    assert (checkpoint / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")


def test_chat_template_is_the_published_one(published_si):
    assert _json(published_si, "chat_template.json") == {"chat_template": PUBLISHED_CHAT_TEMPLATE}


@pytest.fixture(scope="module")
def tokenizer(published_si):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(published_si)


@pytest.fixture(scope="module")
def processor(published_si):
    from llava_manager.processing.processors import load_processor

    return load_processor(published_si)


def test_chat_template_renders_the_documented_prompts(tokenizer):
    def render(messages):
        return tokenizer.apply_chat_template(
            messages, chat_template=PUBLISHED_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
        )

    hi = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    assert render(hi) == "<|im_start|>user <image>\nHi<|im_end|><|im_start|>assistant\n"
    # transformers' test_chat_template expectation for the llava-hf OneVision template.
    shown = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown in this image?"}]}]
    assert render(shown) == "<|im_start|>user <image>\nWhat is shown in this image?<|im_end|><|im_start|>assistant\n"
    # A plain-string content renders nothing: no image, no text.
    plain = render([{"role": "user", "content": "<image>\nHi"}])
    assert plain == "<|im_start|>user <|im_end|><|im_start|>assistant\n"
    assert "<image>" not in render([{"role": "user", "content": "Hi"}])


def test_tokenizer_has_the_published_special_tokens(tokenizer):
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_IDS} == SPECIAL_IDS
    assert len(tokenizer) == 151648
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (151645, 151643)
    assert tokenizer.padding_side == "right" and tokenizer.model_max_length == 32768
    assert tokenizer.chat_template == QWEN2_TEXT_TEMPLATE  # the tokenizer's own template is the text-only one
    assert tokenizer(" ").input_ids == [220] and tokenizer("\n").input_ids == [198]  # as in Qwen2


def test_text_and_prompts_tokenize_without_unknown_tokens(tokenizer, processor):
    for text in ["What colour is the shape ?", "A red circle on white background .", "Ünïcödé 1234 !?"]:
        ids = tokenizer(text).input_ids
        assert max(ids) < 151643 and tokenizer.decode(ids) == text
    words = tokenizer("What colour is the shape").input_ids
    assert tokenizer.convert_ids_to_tokens(words) == ["What", "Ġcolour", "Ġis", "Ġthe", "Ġshape"]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the shape ?"}]}],
        add_generation_prompt=True,
    )
    ids = tokenizer(prompt).input_ids
    assert tokenizer.decode(ids) == prompt
    assert [i for i in ids if i >= 151643] == [151644, 151646, 151645, 151644]


def test_load_processor_reads_the_published_files(processor, published_si):
    config = _json(published_si, "config.json")
    assert processor.chat_template == PUBLISHED_CHAT_TEMPLATE
    assert (
        processor.num_image_tokens
        == (config["vision_config"]["image_size"] // config["vision_config"]["patch_size"]) ** 2
    )
    assert (processor.vision_feature_select_strategy, processor.vision_aspect_ratio) == ("full", "anyres_max_9")
    assert (processor.image_token_id, processor.video_token_id) == (151646, 151647)
    size = config["vision_config"]["image_size"]
    assert (processor.image_processor.size.height, processor.image_processor.size.width) == (size, size)
    assert [list(p) for p in processor.image_processor.image_grid_pinpoints] == config["image_grid_pinpoints"]


def test_weights_are_in_the_published_layout(checkpoint):
    from safetensors import safe_open

    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        dtypes = {f.get_slice(k).get_dtype() for k in keys}
    assert dtypes == {"F16"}
    assert "image_newline" in keys and "language_model.model.embed_tokens.weight" in keys
    assert not any("lm_head" in k for k in keys)  # tied to the embeddings, as published
    prefixes = ("language_model.model.", "vision_tower.vision_model.", "multi_modal_projector.")
    assert all(k == "image_newline" or k.startswith(prefixes) for k in keys)


@pytest.mark.parametrize("variant", VARIANTS)
def test_processor_and_model_run_forward_and_generate(variant, request, processor):
    from transformers import LlavaOnevisionForConditionalGeneration

    directory = request.getfixturevalue(variant)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    image = Image.new("RGB", (45, 60), (220, 40, 40))  # (width, height): anyres picks a grid of crops
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the shape ?"}]}],
        add_generation_prompt=True,
    )
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output
        logits = model(**inputs).logits
    assert int((inputs["input_ids"] == 151646).sum()) == sum(len(f) for f in features) > 0
    assert logits.shape == (1, inputs["input_ids"].shape[1], 151936)
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 3)


def test_default_load_is_float16_as_published(published_si, processor):
    from transformers import LlavaOnevisionForConditionalGeneration

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(published_si).eval()
    assert model.dtype == torch.float16  # torch_dtype "float16" in config.json, float16 weights


def test_variants_differ_only_in_weights_and_are_deterministic(published_si, published_ov, tmp_path):
    from support.published import write_published_checkpoint

    for name in PUBLISHED_FILES - {"model.safetensors"}:
        assert (published_si / name).read_bytes() == (published_ov / name).read_bytes(), name
    assert (published_si / "model.safetensors").read_bytes() != (published_ov / "model.safetensors").read_bytes()
    again = write_published_checkpoint(tmp_path / "again", "si")
    assert (again / "model.safetensors").read_bytes() == (published_si / "model.safetensors").read_bytes()
    # transformers 5's own key layout holds the same tensors under `vision_tower.*`.
    from safetensors.torch import load_file

    own = load_file(
        write_published_checkpoint(tmp_path / "own", "si", weights_layout="transformers") / "model.safetensors"
    )
    published = load_file(published_si / "model.safetensors")
    assert {k.replace("vision_tower.", "vision_tower.vision_model.", 1) for k in own} == set(published)
    assert all(
        torch.equal(v, published[k.replace("vision_tower.", "vision_tower.vision_model.", 1)]) for k, v in own.items()
    )
