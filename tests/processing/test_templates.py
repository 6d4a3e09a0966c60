"""The conversation templates of every family, through the real data path (`SupervisedDataset` -> `tokenize`):
LLaVA-1.5's `vicuna_v1` and LLaVA-NeXT's `mistral_instruct` on a SentencePiece-like tokenizer with `<s>` / `</s>`
(text, labels, BOS), and the default template a checkpoint's LLM gets, the embedded default keeping `qwen_1_5`."""

from __future__ import annotations

import pytest
from PIL import Image
from transformers import LlavaConfig, LlavaNextConfig, LlavaOnevisionConfig, Mistral3Config, PreTrainedTokenizerFast

from llava_manager.processing.templates import LLM_TEMPLATES, TEMPLATES, template_for_config
from llava_manager.synthetic.data import tiny_processor
from llava_manager.training.data import IGNORE_INDEX, SupervisedDataset
from llava_manager.training.run_config import choose_template
from llava_manager.training.train_args import parse

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
RECORD = {
    "id": "two-turns",
    "image": "wide.png",
    "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the shape?"},
        {"from": "gpt", "value": "It is red."},
        {"from": "human", "value": "Where is it?"},
        {"from": "gpt", "value": "On the left."},
    ],
}
ANSWERS = ["It is red.", "On the left."]


def expected_text(template: str, image: str) -> str:
    """The prompt as LLaVA's `Conversation.get_prompt` writes it (llava/conversation.py), written out by hand."""
    if template == "vicuna_v1":  # SeparatorStyle.TWO: system + sep, role + ": " + message + sep / sep2
        return (
            f"{VICUNA_SYSTEM} USER: {image}\nWhat colour is the shape? ASSISTANT: It is red.</s>"
            f"USER: Where is it? ASSISTANT: On the left.</s>"
        )
    # SeparatorStyle.LLAMA_2, sep "", sep2 "</s>", no system: "[INST] q [/INST]" + " " + a + " " + sep2
    return (
        f"[INST] {image}\nWhat colour is the shape? [/INST] It is red. </s>"
        f"[INST] Where is it? [/INST] On the left. </s>"
    )


def sentencepiece_like_tokenizer() -> PreTrainedTokenizerFast:
    """Llama/Mistral-like: a word-start marker ("▁") on words after a space and on the first, `<s>` / `</s>` /
    `<unk>` / `<image>` special, BOS added by the tokenizer itself; a word-level vocabulary over the test's texts."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
            pre_tokenizers.Split(Regex(r"[\n.,?:]"), behavior="isolated"),
        ]
    )
    specials = ["<unk>", "<s>", "</s>", "<image>"]
    words = set()
    for template in ("vicuna_v1", "mistral_instruct"):
        for piece, _ in pre.pre_tokenize_str(expected_text(template, "")):
            words.update({piece, piece.lstrip("▁")} - {""})  # a word right after a special token has no marker
    vocab = {token: i for i, token in enumerate(specials + sorted(words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        add_bos_token=True,
        extra_special_tokens={"image_token": "<image>"},
    )


def processor_for(family: str):
    """The tiny processor of `family` with the SentencePiece-like tokenizer in place of the Qwen-like one."""
    from llava_manager.processing.processors import build_processor

    tiny = tiny_processor(family=family)
    return build_processor(
        tiny.image_processor,
        sentencepiece_like_tokenizer(),
        family=family,
        patch_size=tiny.patch_size,
        vision_feature_select_strategy=tiny.vision_feature_select_strategy,
        num_additional_image_tokens=tiny.num_additional_image_tokens,
    )


@pytest.mark.parametrize("template,family", [("vicuna_v1", "llava"), ("mistral_instruct", "llava_next")])
def test_llama_and_mistral_templates_are_llavas_text_with_answers_and_eos_labelled(template, family, tmp_path):
    Image.new("RGB", (56, 28), (200, 30, 30)).save(tmp_path / "wide.png")
    processor = processor_for(family)
    tok = processor.tokenizer
    sample = SupervisedDataset([RECORD], processor, tmp_path, template=template, strict=True)[0]
    ids, labels = sample["input_ids"].tolist(), sample["labels"].tolist()
    assert tok.unk_token_id not in ids
    # BOS once, first, unlabelled
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1 and labels[0] == IGNORE_INDEX
    # the whole text is LLaVA's prompt, the image expanded to the processor's count
    n_image = ids.count(tok.convert_tokens_to_ids("<image>"))
    assert n_image > 1
    assert tok.decode(ids[1:]) == expected_text(template, "<image>" * n_image)
    # labels: the ids where set; exactly the answers and the end of turn after each
    assert all(label in (IGNORE_INDEX, i) for i, label in zip(ids, labels))
    runs, run = [], []
    for i, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            run.append(i)
        elif run:
            runs.append(run)
            run = []
    runs += [run] if run else []
    end = " </s>" if template == "mistral_instruct" else "</s>"
    assert len(runs) == 2
    for run, answer in zip(runs, ANSWERS):
        assert run[-1] == tok.eos_token_id
        pieces = "".join(tok.convert_ids_to_tokens(run)).replace("▁", " ")
        assert pieces == " " + answer + end  # the word-start marker of the answer's first word comes with it
    assert ids.count(tok.eos_token_id) == 2


def test_a_template_the_tokenizer_cannot_write_is_an_error(tmp_path):
    """Qwen's format on a Llama-like tokenizer (or Llama's on the Qwen-like tiny one) fails naming --template."""
    Image.new("RGB", (56, 28), (200, 30, 30)).save(tmp_path / "wide.png")
    with pytest.raises(ValueError, match=r"qwen_1_5.*<\|im_start\|>.*--template"):
        SupervisedDataset([RECORD], processor_for("llava"), tmp_path, template="qwen_1_5")
    with pytest.raises(ValueError, match=r"vicuna_v1.*</s>.*--template"):
        SupervisedDataset([RECORD], tiny_processor(family="llava"), tmp_path, template="vicuna_v1")


def test_the_default_template_follows_the_checkpoints_llm(tmp_path):
    configs = {
        "qwen2": LlavaOnevisionConfig(),
        "llama": LlavaConfig(),
        "mistral": LlavaNextConfig(text_config={"model_type": "mistral"}),
        "mistral3": Mistral3Config(),  # a Mistral LLM too, speaking Mistral-Small-3.1's v7 format
    }
    assert Mistral3Config().text_config.model_type == "mistral"
    assert {llm: template_for_config(c) for llm, c in configs.items()} == {
        "qwen2": "qwen_1_5",
        "llama": "vicuna_v1",
        "mistral": "mistral_instruct",
        "mistral3": "mistral_v7",
    }
    assert set(LLM_TEMPLATES.values()) <= set(TEMPLATES)
    with pytest.raises(ValueError, match=r"'gemma'.*--template: one of qwen_1_5, plain, vicuna_v1, mistral_instruct"):
        template_for_config(LlavaConfig(text_config={"model_type": "gemma"}))

    # through the recipe's arguments: Stage-2 from a model directory takes its LLM's; --template and Stage-1 win
    model_dir = tmp_path / "next"
    configs["mistral"].save_pretrained(model_dir)
    real = ["--model_name_or_path", str(model_dir)]
    model_args, _, data_args, _ = parse("stage2", real)
    assert data_args.template is None and choose_template(model_args, data_args) == "mistral_instruct"
    assert data_args.template is None  # resolved, not written back into the arguments
    for stage, argv, expected in [
        ("stage2", ["--template", "vicuna_v1"], "vicuna_v1"),
        ("stage1", [], "plain"),
        ("stage1_5", ["--template", "plain"], "plain"),
    ]:
        model_args, _, data_args, _ = parse(stage, real + argv)
        assert choose_template(model_args, data_args) == expected
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        parse("stage2", real + ["--template", "llama_3"])


@pytest.mark.parametrize("family", ["llava_onevision", "llava", "llava_next"])
def test_the_embedded_default_keeps_qwen_1_5_for_every_family(family):
    for stage, expected in [("stage1", "plain"), ("stage1_5", "qwen_1_5"), ("stage2", "qwen_1_5")]:
        model_args, _, data_args, _ = parse(stage, ["--family", family])
        assert choose_template(model_args, data_args) == expected


@pytest.mark.parametrize("with_system", [True, False])
def test_mistral_v7_writes_what_mistral_small_3_1s_chat_template_writes(with_system):
    """The training text of `mistral_v7` is the published chat template's rendering of the same conversation (its
    text as transformers' Mistral3 processor test quotes it), token for token, with the answers and their </s>
    labelled; with no system turn the published template writes its default system message, which this template
    leaves out."""
    from support.published_vlm import MISTRAL3_TEMPLATE

    from llava_manager.training.data import tokenize

    tokenizer = tiny_processor(family="mistral3").tokenizer
    turns = [("user", "What colour is the shape ?"), ("assistant", "red ."), ("user", "Is it round ?")]
    turns += [("assistant", "yes .")]
    system = [("system", "Answer in one word .")] if with_system else []
    # (the published template reads a system turn's text from typed content only)
    messages = [{"role": "system", "content": [{"type": "text", "text": text}]} for _, text in system]
    messages += [{"role": role, "content": text} for role, text in turns]
    published = tokenizer.apply_chat_template(messages, chat_template=MISTRAL3_TEMPLATE, tokenize=False)
    ids, labels = tokenize(system + turns, TEMPLATES["mistral_v7"], tokenizer, [])
    if not with_system:  # the published default system block, then the same conversation
        start, end = published.index("[SYSTEM_PROMPT]"), published.index("[/SYSTEM_PROMPT]") + len("[/SYSTEM_PROMPT]")
        published = published[:start] + published[end:]
    assert ids == tokenizer(published, add_special_tokens=False)["input_ids"]
    labelled = tokenizer.decode([i for i, label in zip(ids, labels) if label != IGNORE_INDEX])
    assert labelled.replace(" ", "") == "red.</s>yes.</s>"
