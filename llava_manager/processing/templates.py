"""How conversation turns become training text: the LLaVA conversation templates the recipes train with."""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class Template:
    """How turns become text. Assistant text followed by `end_of_turn` is what the model learns to write."""

    name: str
    system: str  # the system block with "{}" for its text, or "" for none
    default_system: str
    user: str  # with "{}" where the turn's text goes
    assistant: str  # the header before the assistant's text
    end_of_turn: str  # labelled: the model must learn to stop
    after_turn: str  # not labelled
    keep_user_text: bool = True  # "plain" keeps only the image of the human turn


# LLaVA-NeXT `conv_qwen` ("qwen_1_5"), used by LLaVA-OneVision for Stage-1.5 and Stage-2.
QWEN = Template(
    name="qwen_1_5",
    system="<|im_start|>system\n{}<|im_end|>\n",
    default_system="You are a helpful assistant.",
    user="<|im_start|>user\n{}<|im_end|>\n",
    assistant="<|im_start|>assistant\n",
    end_of_turn="<|im_end|>",
    after_turn="\n",
)
# LLaVA's `conv_llava_plain`, used for Stage-1 alignment: the image, then the caption.
PLAIN = Template(name="plain", system="", default_system="", user="{}", assistant="", end_of_turn="\n",
                 after_turn="", keep_user_text=False)
TEMPLATES = {t.name: t for t in (QWEN, PLAIN)}
