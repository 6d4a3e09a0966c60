"""The processors of every LLaVA family, with or without torchvision.

transformers' `LlavaOnevisionProcessor` and `LlavaNextVideoProcessor` insist on a video processor class, which needs
torchvision; machines with only a CPU torch have none. For images the video processor is never used, so without
torchvision we build the same processor with the PIL image processor and no video processor (images only). The
LLaVA-1.5 and NeXT processors have no video processor and are used as they are; Pixtral's (Mistral3, and
Pixtral-12B's LLaVA) comes from `families/pixtral.py`. With torchvision, `AutoProcessor` is used as is.
"""

from __future__ import annotations

import inspect
import json
from functools import cache
from pathlib import Path

from transformers import AutoConfig, AutoProcessor, AutoTokenizer
from transformers.processing_utils import ProcessorMixin
from transformers.utils import is_torchvision_available

from ..families import FAMILIES, family_of_config
from ..families.pixtral import pixtral_processor_class

_PARTS = ("image_processor", "tokenizer", "video_processor", "chat_template")
# `from_pretrained` keywords that say where files come from; the rest configure the processor or its parts.
_HUB_KEYS = ("revision", "local_files_only", "token", "cache_dir", "force_download", "subfolder")


@cache
def image_only(processor_class: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """`processor_class` without a video processor, for machines without torchvision; images only."""
    if "video_processor" not in processor_class.get_attributes():
        return processor_class
    image_processor_class = next(
        a.image_processor_class for a in FAMILIES.values() if a.processor_class is processor_class
    )

    class ImageOnly(processor_class):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

        @classmethod
        def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
            """Loads the PIL image processor, the tokenizer and no video processor, through public APIs only.

            The image processor's settings come from `preprocessor_config.json` (the llava-hf layout) or from the
            `image_processor` section of `processor_config.json` (as transformers 5 writes it); the processor's own
            settings and chat template from `processor_config.json` and `chat_template.json` / `.jinja`. A
            `video_processor` section or `video_processor/` folder is left unread."""
            path = pretrained_model_name_or_path
            hub = {k: kwargs.pop(k) for k in _HUB_KEYS if k in kwargs}
            hub.pop("subfolder", None)
            processor_dict, _ = cls.get_processor_dict(path, **hub)
            accepted = [n for n in inspect.signature(processor_class.__init__).parameters if n not in _PARTS[:3]]
            accepted = [n for n in accepted if n not in ("self", "args", "kwargs")]
            settings = {k: v for k, v in processor_dict.items() if k in accepted}
            settings.update({k: kwargs.pop(k) for k in list(kwargs) if k in accepted})
            parts = {
                "image_processor": image_processor_class.from_pretrained(path, **hub, **kwargs),
                "tokenizer": AutoTokenizer.from_pretrained(path, **hub, **kwargs),
                "video_processor": None,
            }
            return cls(**{name: parts[name] for name in cls.get_attributes()}, **settings)

        def save_pretrained(self, save_directory, **kwargs):
            """Writes the tokenizer, the image processor and `processor_config.json`, the files `AutoProcessor`
            reads (transformers' own writer would serialise the missing video processor)."""
            save_directory = Path(save_directory)
            save_directory.mkdir(parents=True, exist_ok=True)
            self.tokenizer.save_pretrained(save_directory)
            self.image_processor.save_pretrained(save_directory)
            names = [n for n in inspect.signature(processor_class.__init__).parameters if n not in _PARTS]
            config = {n: getattr(self, n) for n in names if isinstance(getattr(self, n, None), (str, int, float))}
            config["processor_class"] = processor_class.__name__
            (save_directory / "processor_config.json").write_text(json.dumps(config, indent=2))
            if self.chat_template is not None:
                (save_directory / "chat_template.jinja").write_text(self.chat_template)
            return [str(save_directory / "processor_config.json")]

    ImageOnly.__name__ = ImageOnly.__qualname__ = f"ImageOnly{processor_class.__name__}"
    ImageOnly.__doc__ = f"`{processor_class.__name__}` without a video processor (no torchvision); images only."
    return ImageOnly


def family_of_processor(processor) -> str:
    """The `FAMILIES` key of `processor` (a family's processor class, or its image-only variant). Qwen3-VL,
    Qwen3-VL-MoE, Qwen3.5 and Qwen3.5-MoE share `Qwen3VLProcessor`, which names Qwen3-VL: the model's config says
    which of them a model is."""
    classes: dict[type, str] = {}
    for name, adapter in FAMILIES.items():  # a class several families share (Qwen3VLProcessor) names the first
        classes.setdefault(adapter.processor_class, name)
    for cls in type(processor).__mro__:
        if cls in classes:
            return classes[cls]
    raise TypeError(
        f"{type(processor).__name__} is not the processor of a supported LLaVA family "
        f"({', '.join(a.processor_class.__name__ for a in FAMILIES.values())})."
    )


def load_processor(path: str | Path, **kwargs) -> ProcessorMixin:
    """The processor saved with a LLaVA-family model (local directory or Hub id; `kwargs` go to `from_pretrained`,
    e.g. `revision`, `local_files_only`); the family is read from the model's config."""
    if is_torchvision_available():
        return AutoProcessor.from_pretrained(path, **kwargs)
    hub_kwargs = {k: v for k, v in kwargs.items() if k in _HUB_KEYS and k != "subfolder"}
    config = AutoConfig.from_pretrained(path, **hub_kwargs)
    processor_class = family_of_config(config).processor_class
    if getattr(getattr(config, "vision_config", None), "model_type", None) == "pixtral":
        processor_class = pixtral_processor_class()  # Pixtral-12B: a LLaVA model saved with Pixtral's processor
    return image_only(processor_class).from_pretrained(path, **kwargs)


def build_processor(image_processor, tokenizer, family: str = "llava_onevision", **kwargs) -> ProcessorMixin:
    """A processor of `family` from its parts, with no video processor when torchvision is missing."""
    adapter = FAMILIES[family]
    processor_class, parts = adapter.processor_class, {"image_processor": image_processor, "tokenizer": tokenizer}
    if "video_processor" in processor_class.get_attributes():
        if is_torchvision_available():
            import transformers

            parts["video_processor"] = getattr(transformers, adapter.video_processor_class)()
        else:
            processor_class, parts["video_processor"] = image_only(processor_class), None
    return processor_class(**parts, **kwargs)


def image_prompt(processor) -> str:
    """The text one image takes in a prompt before the processor expands it: the processor's image token (LLaVA's
    `<image>`, InternVL's `<IMG_CONTEXT>`, Gemma 3's `<start_of_image>`), inside the family's own markers where the
    chat template writes them (Qwen-VL: `<|vision_start|><|image_pad|><|vision_end|>`)."""
    try:
        start, end = FAMILIES[family_of_processor(processor)].image_markers
    except TypeError:  # a processor of no supported family
        start, end = "", ""
    return f"{start}{processor.image_token}{end}"


def images_kwargs(processor) -> dict:
    """The settings the processor's own `__call__` gives its image processor (its class defaults, e.g. InternVL's
    `crop_to_patches=True`, Gemma 3's Pan & Scan off), returning tensors."""
    tokenizer = getattr(processor, "tokenizer", None)
    merged = processor._merge_kwargs(tokenizer_init_kwargs=getattr(tokenizer, "init_kwargs", {}), return_tensors="pt")
    return dict(merged["images_kwargs"])


def process_images(processor, images: list, kwargs: dict | None = None) -> tuple[dict, list[str]]:
    """One sample's `images` through the processor's image path, as its `__call__` takes them: the image
    processor's output and, for each image, the text its prompt placeholder (`image_prompt`) becomes: the
    processor's expansion (`replace_image_token`) inside the family's markers."""
    kwargs = images_kwargs(processor) if kwargs is None else kwargs
    inputs, replacements = processor._process_images([list(images)], **kwargs)
    prompt = image_prompt(processor)
    return inputs, [prompt.replace(processor.image_token, text, 1) for text in replacements]
