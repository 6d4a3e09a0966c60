"""One user turn with images, in the model's chat format: the tokenizer's chat template when it has one, else the
qwen_1_5 format the recipes train with. Used by the evaluation model and the analyses."""

from __future__ import annotations

from .data import IMAGE_PLACEHOLDER, QWEN


def chat_prompt(tokenizer, text: str, num_images: int, chat_template: str | None = None) -> str:
    """Images first (as LLaVA-OneVision was trained) unless `text` places its own `<image>` placeholders."""
    if IMAGE_PLACEHOLDER not in text:
        text = f"{IMAGE_PLACEHOLDER}\n" * num_images + text
    template = chat_template or tokenizer.chat_template
    if template:
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], chat_template=template,
                                             tokenize=False, add_generation_prompt=True)
    return QWEN.system.format(QWEN.default_system) + QWEN.user.format(text) + QWEN.assistant
