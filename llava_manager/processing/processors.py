"""LLaVA-OneVision processors with or without torchvision.

transformers' `LlavaOnevisionProcessor` insists on a video processor class, which needs torchvision; machines with
only a CPU torch have none. For images the video processor is never used, so without torchvision we build the same
processor with the PIL image processor and no video processor. With torchvision, `AutoProcessor` is used as is.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor
from transformers.utils import is_torchvision_available

PROCESSOR_KWARGS = ("num_image_tokens", "vision_feature_select_strategy", "vision_aspect_ratio", "image_token",
                    "video_token")


class ImageOnlyProcessor(LlavaOnevisionProcessor):
    """`LlavaOnevisionProcessor` without a video processor (for machines without torchvision); images only."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """The parts `from_pretrained` builds: the PIL image processor, the tokenizer and no video processor. The
        rest (processor_config.json, the chat template in chat_template.json or .jinja) is transformers' own."""
        kwargs.pop("subfolder", None)
        return [LlavaOnevisionImageProcessorPil.from_pretrained(pretrained_model_name_or_path, **kwargs),
                AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs), None]

    def save_pretrained(self, save_directory, **kwargs):
        """Writes the tokenizer, the image processor and `processor_config.json`, the files `AutoProcessor` reads."""
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(save_directory)
        self.image_processor.save_pretrained(save_directory)
        config = {key: getattr(self, key) for key in PROCESSOR_KWARGS}
        config["processor_class"] = LlavaOnevisionProcessor.__name__
        (save_directory / "processor_config.json").write_text(json.dumps(config, indent=2))
        if self.chat_template is not None:
            (save_directory / "chat_template.jinja").write_text(self.chat_template)
        return [str(save_directory / "processor_config.json")]


def load_processor(path: str | Path, **kwargs) -> LlavaOnevisionProcessor:
    """The processor saved with a LLaVA-OneVision model (local directory or Hub id; `kwargs` go to
    `from_pretrained`, e.g. `revision`, `local_files_only`)."""
    if is_torchvision_available():
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path, **kwargs)
    return ImageOnlyProcessor.from_pretrained(path, **kwargs)


def build_processor(image_processor, tokenizer, **kwargs) -> LlavaOnevisionProcessor:
    """A processor from its parts, with no video processor when torchvision is missing."""
    if is_torchvision_available():
        from transformers import LlavaOnevisionVideoProcessor

        return LlavaOnevisionProcessor(image_processor, tokenizer, LlavaOnevisionVideoProcessor(), **kwargs)
    return ImageOnlyProcessor(image_processor, tokenizer, None, **kwargs)
