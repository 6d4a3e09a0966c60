"""One user turn with images, as text for the processor. Used by the evaluation model and the analyses.

Two formats:
- `qwen_1_5` (default): the conversation format LLaVA-OneVision was trained with (LLaVA-NeXT's `conv_qwen`, the
  recipes' `--template qwen_1_5`), built the way lmms-eval's own `llava_onevision` model builds it, which produced
  the paper's numbers: the system turn, then `<image>` placeholders joined by spaces and a newline before the text
  (unless the text places its own), then the assistant header.
- `chat_template`: the checkpoint's chat template (or one given): the processor's (chat_template.json or .jinja,
  what `processor.apply_chat_template` uses), else the tokenizer's. The llava-hf checkpoints' template reads typed
  content parts (`{"type": "image"}`, `{"type": "text", "text": ...}`) and renders a plain string as nothing, while
  older templates read a plain string. Typed parts are tried first, then a plain string with the placeholders in
  the text; a template that renders neither the text nor one placeholder per image is an error.
"""

from __future__ import annotations

from jinja2 import TemplateError

from .processors import image_prompt
from .templates import IMAGE_PLACEHOLDER, QWEN, TEMPLATES, Template

PROMPT_FORMATS = ("qwen_1_5", "chat_template")


def chat_prompt(
    processor, text: str, num_images: int, prompt_format: str = "qwen_1_5", chat_template: str | None = None
) -> str:
    """The prompt for one user turn of `text` with `num_images` images, ending where the answer starts.

    `processor` is the model's processor (or just its tokenizer); `chat_template` overrides its own template in the
    `chat_template` format.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    image_token = getattr(processor, "image_token", None) or IMAGE_PLACEHOLDER
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format {prompt_format!r}: use one of {PROMPT_FORMATS}.")
    if prompt_format == "qwen_1_5":
        if chat_template is not None:
            raise ValueError(
                "A chat template was given with prompt_format='qwen_1_5', which does not use one; "
                "use prompt_format='chat_template' to prompt with it."
            )
        return template_prompt(processor, text, num_images, QWEN)
    template = chat_template or getattr(processor, "chat_template", None) or tokenizer.chat_template
    return _from_template(tokenizer, text, num_images, template, image_token)


def template_prompt(processor, text: str, num_images: int, template: Template | str = QWEN) -> str:
    """The prompt for one user turn in one of the training templates (`templates.TEMPLATES`, e.g. the embedded
    default's, `synthetic.data.tiny_template`), ending where the answer starts: its system block, the user turn with
    the images' placeholders first (joined by spaces, then a newline; unless the text places its own), the
    assistant header; the BOS token's text first where the template starts with one and the tokenizer does not put
    it there itself. An image's placeholder is the processor's (`processors.image_prompt`: Qwen-VL's
    `<|vision_start|><|image_pad|><|vision_end|>`, ...); with a bare tokenizer, its `image_token` or `<image>`."""
    template = TEMPLATES[template] if isinstance(template, str) else template
    tokenizer = getattr(processor, "tokenizer", processor)
    image_token = getattr(processor, "image_token", None) or IMAGE_PLACEHOLDER
    placeholder = image_prompt(processor) if hasattr(processor, "image_processor") else image_token
    if num_images and image_token not in text:
        text = " ".join([placeholder] * num_images) + "\n" + text
    elif placeholder != image_token and placeholder not in text:
        text = text.replace(image_token, placeholder)
    system = template.system.format(template.default_system) if template.system and template.default_system else ""
    bos = ""
    if template.bos and not getattr(tokenizer, "add_bos_token", False):
        bos = tokenizer.bos_token or ""
    return bos + system + template.user.format(text) + template.assistant


def _from_template(tokenizer, text: str, num_images: int, template: str | None, image_token: str) -> str:
    if not template:
        raise ValueError(
            "prompt_format='chat_template', but the tokenizer has no chat template and none was given; "
            "use prompt_format='qwen_1_5' (the training format) or pass a chat_template."
        )
    pieces = text.split(image_token)
    placed = len(pieces) - 1
    if placed not in (0, num_images):
        raise ValueError(f"The text places {placed} {image_token} placeholders for {num_images} images.")
    if placed:  # the text says where its images go: keep that order (the whitespace around a placeholder goes)
        parts = [{"type": "text", "text": pieces[0].strip()}] if pieces[0].strip() else []
        for piece in pieces[1:]:
            parts += [{"type": "image"}] + ([{"type": "text", "text": piece.strip()}] if piece.strip() else [])
    else:
        parts = [{"type": "image"}] * num_images + [{"type": "text", "text": text}]
    plain = text if placed or not num_images else (image_token + "\n") * num_images + text
    rendered = []
    for content in (parts, plain):
        try:
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": content}],
                chat_template=template,
                tokenize=False,
                add_generation_prompt=True,
            )
        except (TypeError, TemplateError) as error:  # e.g. a plain-string template concatenating a list of parts
            rendered.append(f"{type(error).__name__}: {error}")
            continue
        if prompt.count(image_token) == num_images and all(p.strip() in prompt for p in pieces):
            return prompt
        rendered.append(repr(prompt))
    raise ValueError(
        f"The chat template renders neither typed content parts nor a plain string with {num_images} "
        f"{image_token} placeholder(s) and the text: typed parts gave {rendered[0]}, a plain string gave "
        f"{rendered[1]}. Use prompt_format='qwen_1_5' or pass a chat_template that renders image placeholders."
    )
