"""`load_processor` on every layout a LLaVA-OneVision processor is published or saved in, with or without torchvision:
llava-hf's (``preprocessor_config.json`` + ``video_processor/preprocessor_config.json``, support/published.py), the one
transformers 5's own `ProcessorMixin.save_pretrained` writes (image and video sections nested in
``processor_config.json``, ``chat_template.jinja``, no ``preprocessor_config.json``), and one with no video processor at
all. Each must give the processor of the published layout: the same settings, template and tensors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers.processing_utils import ProcessorMixin
from transformers.utils import PushToHubMixin, is_torchvision_available

from llava_manager.processing import processors
from llava_manager.processing.processors import load_processor
from llava_manager.synthetic.data import draw_shape


class _PublishedVideoSection(PushToHubMixin):
    """Stands in for the video processor (which needs torchvision) when transformers' own writer serialises the
    processor: its section is the published ``video_processor/preprocessor_config.json``."""

    _auto_class = None

    def __init__(self, config: dict):
        self.config = config

    def to_dict(self) -> dict:
        return dict(self.config)


def _inputs(processor) -> dict:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it ?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    image = draw_shape("circle", "red", "left", "white", (45, 100))
    return dict(processor(images=[image], text=[prompt], return_tensors="pt"))


def _transformers_layout(published, directory):
    """The checkpoint as transformers 5's `ProcessorMixin.save_pretrained` saves its processor."""
    shutil.copytree(published, directory)
    processor = load_processor(published)
    processor.video_processor = _PublishedVideoSection(
        json.loads((published / "video_processor" / "preprocessor_config.json").read_text())
    )
    for name in ("preprocessor_config.json", "processor_config.json", "chat_template.json"):
        (directory / name).unlink()
    shutil.rmtree(directory / "video_processor")
    ProcessorMixin.save_pretrained(processor, directory)
    return directory


def _no_video_layout(published, directory):
    shutil.copytree(published, directory)
    shutil.rmtree(directory / "video_processor")
    return directory


@pytest.mark.parametrize("torchvision", [False, True] if is_torchvision_available() else [False])
def test_every_published_layout_loads_the_same_processor(published_si, tmp_path, monkeypatch, torchvision):
    if not torchvision:  # where torchvision is installed, the image-only path is still the one CPU machines take
        monkeypatch.setattr(processors, "is_torchvision_available", lambda: False)
    expected = load_processor(published_si)
    expected_inputs = _inputs(expected)
    nested = _transformers_layout(published_si, tmp_path / "transformers")
    written = json.loads((nested / "processor_config.json").read_text())
    assert isinstance(written["image_processor"], dict) and isinstance(written["video_processor"], dict)
    assert not (nested / "preprocessor_config.json").exists() and (nested / "chat_template.jinja").exists()

    for directory in (nested, _no_video_layout(published_si, tmp_path / "no_video")):
        processor = load_processor(directory)
        assert type(processor) is type(expected)
        assert processor.chat_template == expected.chat_template
        assert (
            processor.num_image_tokens,
            processor.vision_feature_select_strategy,
            processor.vision_aspect_ratio,
        ) == (expected.num_image_tokens, expected.vision_feature_select_strategy, expected.vision_aspect_ratio)
        image_settings = processor.image_processor.to_dict()
        assert image_settings == expected.image_processor.to_dict()
        assert (
            image_settings["image_grid_pinpoints"]
            == json.loads((published_si / "preprocessor_config.json").read_text())["image_grid_pinpoints"]
        )
        inputs = _inputs(processor)
        assert inputs.keys() == expected_inputs.keys()
        for key, value in expected_inputs.items():
            assert torch.equal(inputs[key], value), key


def test_image_only_loading_takes_settings_and_location_keywords(published_si, monkeypatch):
    monkeypatch.setattr(processors, "is_torchvision_available", lambda: False)
    processor = load_processor(published_si, local_files_only=True, revision="main", num_image_tokens=5)
    assert processor.num_image_tokens == 5
    assert processor.video_processor is None
    assert (
        load_processor(published_si).num_image_tokens
        == json.loads((published_si / "processor_config.json").read_text())["num_image_tokens"]
    )
