"""What the packing tests share, on the CPU (`tests/training/test_packing.py`) and on the GPU
(`tests/gpu/test_packing_flash.py`): real samples of the embedded shapes data in arrival order, a family's tiny model
with managers of random (non-zero) weights, per-token losses as transformers shifts them, and where each sample
lies in a packing."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForImageTextToText, set_seed

from llava_manager import apply_manager, get_managers
from llava_manager.synthetic.data import tiny_model_config, tiny_processor, write_shapes_dataset
from llava_manager.training.data import IGNORE_INDEX


def shapes_samples(folder):
    """(image folder, records) of 16 shapes samples written under `folder`, in this arrival order: two images, two
    turns, one image, text only, one image."""
    paths = write_shapes_dataset(folder, 16, seed=0)
    records = json.loads(paths["instruct"].read_text())
    two_images = {
        "id": "two",
        "image": [records[1]["image"], records[2]["image"]],
        "conversations": [
            {"from": "human", "value": "<image>\n<image>\nWhat colour is the first shape ?"},
            {"from": "gpt", "value": "red ."},
        ],
    }
    text_only = records[15]
    assert "image" not in text_only and len(records[0]["conversations"]) == 4  # and a two-turn one
    return paths["image_folder"], [two_images, records[0], records[2], text_only, records[3]]


def patched_model(family: str, attention: str = "sdpa"):
    """The family's tiny model (on the CPU, fp32) with managers of random (non-zero) weights, eval mode (no
    jitter), and its processor; `attention` is the LLM's (the vision tower's stays SDPA)."""
    processor = tiny_processor(family=family)
    set_seed(0)
    model = AutoModelForImageTextToText.from_config(tiny_model_config(processor))
    model.set_attn_implementation({"text_config": attention})
    apply_manager(model)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in get_managers(model):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
    return model.eval(), processor


def per_token_losses(logits, labels):
    """Cross-entropy of every position against the next label (0 where that label is -100), as transformers shifts."""
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), reduction="none", ignore_index=IGNORE_INDEX
    )
    return loss.view(labels.shape[0], -1)


def sample_slices(rows, lengths) -> dict[int, tuple[int, int]]:
    """{sample: (row, first column)} of a packing."""
    where = {}
    for r, row in enumerate(rows):
        column = 0
        for i in row:
            where[i] = (r, column)
            column += lengths[i]
    return where
