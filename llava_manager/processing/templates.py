"""How conversation turns become training text: the LLaVA conversation templates the recipes train with, and the
default one for a checkpoint's LLM (`template_for_config`)."""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class Template:
    """How turns become text. Assistant text followed by `end_of_turn` is what the model learns to write.

    `bos`: the text starts with the tokenizer's BOS token, once (LLaVA's preprocessing tokenises the whole prompt
    with the Llama/Mistral tokenizer, which puts `<s>` first); a template without it still gets BOS when the
    tokenizer puts one first itself (`add_bos_token`; Qwen's tokenizer has no BOS). `whole_text`: the text is
    tokenised in one piece and the labels follow the characters (needed by SentencePiece tokenizers, which mark a
    word start at every piece boundary); otherwise piece by piece, as LLaVA-NeXT's `preprocess_qwen` does.
    `special_tokens`: tokens the template writes that the tokenizer must know as single tokens."""

    name: str
    system: str  # the system block with "{}" for its text, or "" for none
    default_system: str  # the system text where the data gives none; "" writes no system block then
    user: str  # with "{}" where the turn's text goes
    assistant: str  # the header before the assistant's text
    end_of_turn: str  # labelled: the model must learn to stop
    after_turn: str  # not labelled
    keep_user_text: bool = True  # "plain" keeps only the image of the human turn
    bos: bool = False
    whole_text: bool = False
    special_tokens: tuple[str, ...] = ()


# LLaVA-NeXT `conv_qwen` ("qwen_1_5"), used by LLaVA-OneVision for Stage-1.5 and Stage-2.
QWEN = Template(
    name="qwen_1_5",
    system="<|im_start|>system\n{}<|im_end|>\n",
    default_system="You are a helpful assistant.",
    user="<|im_start|>user\n{}<|im_end|>\n",
    assistant="<|im_start|>assistant\n",
    end_of_turn="<|im_end|>",
    after_turn="\n",
    special_tokens=("<|im_start|>", "<|im_end|>"),
)
# LLaVA's `conv_llava_plain`, used for Stage-1 alignment: the image, then the caption.
PLAIN = Template(
    name="plain",
    system="",
    default_system="",
    user="{}",
    assistant="",
    end_of_turn="\n",
    after_turn="",
    keep_user_text=False,
)
# LLaVA's `conv_vicuna_v1` ("v1" / "vicuna_v1", SeparatorStyle.TWO, sep " ", sep2 "</s>"), what LLaVA-1.5 was
# fine-tuned with (`scripts/v1_5/finetune.sh`: `--version v1`; haotian-liu/LLaVA `llava/conversation.py`, the same
# in LLaVA-VL/LLaVA-NeXT). `get_prompt`: system + " " + "USER: " + question + " " + "ASSISTANT: " + answer + "</s>"
# + "USER: " ...; `preprocess_v1` tokenises it whole (BOS first) and labels each answer and its "</s>".
# (Its system prompt says "curious user ... the user's questions"; `conv_llava_v1` says "human".)
VICUNA_V1 = Template(
    name="vicuna_v1",
    system="{} ",
    default_system="A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    user="USER: {} ",
    assistant="ASSISTANT: ",
    end_of_turn="</s>",
    after_turn="",
    bos=True,
    whole_text=True,
    special_tokens=("</s>",),
)
# LLaVA-NeXT's `conv_mistral_instruct` ("mistral_instruct", SeparatorStyle.LLAMA_2, system "", sep "", sep2 "</s>";
# LLaVA-VL/LLaVA-NeXT `llava/conversation.py`), for LLaVA-NeXT (v1.6) on Mistral-7B-Instruct. `get_prompt`:
# "[INST] " + question + " [/INST]" + " " + answer + " " + "</s>" + "[INST] " ...; `preprocess_llama_2` tokenises
# it whole (BOS first) and labels each answer through its " </s>". (With an empty system there is no <<SYS>> block;
# a system turn in the data is dropped, as this template has no place for one.)
MISTRAL_INSTRUCT = Template(
    name="mistral_instruct",
    system="",
    default_system="",
    user="[INST] {} [/INST]",
    assistant=" ",
    end_of_turn=" </s>",
    after_turn="",
    bos=True,
    whole_text=True,
    special_tokens=("</s>",),
)
# Gemma 3's chat template (google/gemma-3-*-it `chat_template`): "<bos>" once, then "<start_of_turn>user\n" + text +
# "<end_of_turn>\n" and "<start_of_turn>model\n" + answer + "<end_of_turn>\n". An image is the processor's
# "<start_of_image>", which it expands to "\n\n<start_of_image>" + soft tokens + "<end_of_image>\n\n". (Its system
# turn goes in front of the first user turn; this template has no place for one, so a system turn in the data is
# dropped, as with mistral_instruct.) Tokenised whole: Gemma's tokenizer is SentencePiece-based.
GEMMA = Template(
    name="gemma",
    system="",
    default_system="",
    user="<start_of_turn>user\n{}<end_of_turn>\n",
    assistant="<start_of_turn>model\n",
    end_of_turn="<end_of_turn>",
    after_turn="\n",
    bos=True,
    whole_text=True,
    special_tokens=("<start_of_turn>", "<end_of_turn>"),
)
# The v7 chat format of Mistral-Small-3.1 (Mistral3; the `chat_template` of
# mistralai/Mistral-Small-3.1-24B-Instruct-2503, as transformers' tests/models/mistral3/test_processing_mistral3.py
# quotes it): BOS once, a system turn as "[SYSTEM_PROMPT]" + text + "[/SYSTEM_PROMPT]", each user turn as "[INST]" +
# text + "[/INST]", each answer followed by "</s>", with no spaces or newlines between them; an image is the
# processor's "[IMG]". The published template writes its long default system message (with today's date) when a
# conversation has none; this one writes a system block only where the data gives a system turn (an empty
# `default_system`).
MISTRAL_V7 = Template(
    name="mistral_v7",
    system="[SYSTEM_PROMPT]{}[/SYSTEM_PROMPT]",
    default_system="",
    user="[INST]{}[/INST]",
    assistant="",
    end_of_turn="</s>",
    after_turn="",
    bos=True,
    whole_text=True,
    special_tokens=("[INST]", "[/INST]", "</s>"),
)
TEMPLATES = {t.name: t for t in (QWEN, PLAIN, VICUNA_V1, MISTRAL_INSTRUCT, GEMMA, MISTRAL_V7)}

# The chat template a checkpoint is fine-tuned with when --template is not given, by its LLM
# (`config.text_config.model_type`): LLaVA-OneVision (Qwen2), LLaVA-1.5 / NeXT-Vicuna / NeXT-Video (Llama),
# LLaVA-NeXT-Mistral; the Qwen-VL families' LLMs and InternVL's Qwen2 / Qwen3 (ChatML, the Qwen-VL images written
# as `<|vision_start|><|image_pad|><|vision_end|>`, `processors.image_prompt`), Gemma 3's. Stage-1 uses `plain` for
# every LLM.
QWEN_VL_LLMS = (
    "qwen2_vl_text",
    "qwen2_5_vl_text",
    "qwen3_vl_text",
    "qwen3_vl_moe_text",
    "qwen3_5_text",
    "qwen3_5_moe_text",
    "qwen3",
)
LLM_TEMPLATES = {
    "qwen2": "qwen_1_5",
    "llama": "vicuna_v1",
    "mistral": "mistral_instruct",
    **dict.fromkeys(QWEN_VL_LLMS, "qwen_1_5"),
    "gemma3_text": "gemma",
}
# Models whose chat format is not their LLM's (Mistral3's Mistral LLM speaks v7, not LLaVA-NeXT-Mistral's format).
MODEL_TEMPLATES = {"mistral3": "mistral_v7"}


def template_for_config(config) -> str:
    """The default chat template for a model config (by its LLM's model_type); an LLM without one is an error
    that names --template and its choices."""
    if getattr(config, "model_type", None) in MODEL_TEMPLATES:
        return MODEL_TEMPLATES[config.model_type]
    text_config = getattr(config, "text_config", None)
    model_type = getattr(text_config, "model_type", None)
    if model_type not in LLM_TEMPLATES:
        known = ", ".join(f"{llm} -> {name}" for llm, name in LLM_TEMPLATES.items())
        raise ValueError(
            f"no default conversation template for a {model_type!r} LLM (known: {known}); "
            f"choose one with --template: one of {', '.join(TEMPLATES)}."
        )
    return LLM_TEMPLATES[model_type]
