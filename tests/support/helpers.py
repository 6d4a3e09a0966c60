"""Tiny models and inputs built in code for the tests; nothing is downloaded."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaOnevisionForConditionalGeneration

from llava_manager.families.llava_onevision import TINY_IMAGE_SIZE, tiny_config

# torch.distributed's launcher variables: an in-process recipe run (plain python with --deepspeed or --fsdp) sets a
# world of one in os.environ; a subprocess started later (lmms-eval, a recipe) must not inherit its MASTER_PORT, which
# this process still holds (EADDRINUSE). conftest restores them after every test; subprocesses drop them.
DISTRIBUTED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def subprocess_env(**extra: str) -> dict:
    """This process's environment without the launcher variables (`DISTRIBUTED_ENV`), plus `extra`: for a test's
    subprocess (a recipe, a launcher, lmms-eval)."""
    import os

    return {**{k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}, **extra}


def tiny_model(seed: int = 0, **config_overrides) -> LlavaOnevisionForConditionalGeneration:
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(tiny_config(**config_overrides))
    return model.eval()


def image_token_counts(model, pixel_values, image_sizes, batch_num_images=None) -> list[int]:
    """Image tokens per image, as the model's own packing produces them."""
    with torch.no_grad():
        out = model.model.get_image_features(pixel_values, image_sizes, batch_num_images=batch_num_images)
    return [len(x) for x in out.pooler_output]


def make_batch(model, image_hw, prompt_lens=None, seed: int = 1, left_pad=None, images_per_sample=None):
    """A batch with one image per sample (or `images_per_sample` base-only images), image tokens after a short
    text prefix, random text, optional left padding. `image_hw` lists (height, width) per image."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    num_images = len(image_hw)
    from llava_manager.families.llava_onevision import crops_per_image

    image_sizes = torch.tensor(image_hw, dtype=torch.long)
    batch_num_images = None if images_per_sample is None else torch.tensor(images_per_sample)
    crops = crops_per_image(cfg, image_sizes, batch_num_images)
    max_crops = max(crops)
    pixel_values = torch.randn(num_images, max_crops, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=g)
    counts = image_token_counts(model, pixel_values, image_sizes, batch_num_images)

    groups = [[i] for i in range(num_images)] if images_per_sample is None else []
    if images_per_sample is not None:
        start = 0
        for n in images_per_sample:
            groups.append(list(range(start, start + n)))
            start += n
    vocab = cfg.text_config.vocab_size - 2  # keep clear of the image and video token ids
    rows = []
    for b, group in enumerate(groups):
        n_text = 3 + (prompt_lens[b] if prompt_lens else 4)
        ids = torch.randint(0, vocab, (2,), generator=g).tolist()
        for i in group:
            ids += [cfg.image_token_id] * counts[i] + torch.randint(0, vocab, (1,), generator=g).tolist()
        ids += torch.randint(0, vocab, (n_text,), generator=g).tolist()
        rows.append(ids)
    length = max(len(r) for r in rows)
    pad_left = True if left_pad is None else left_pad
    input_ids = torch.zeros(len(rows), length, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
    for b, r in enumerate(rows):
        if pad_left:
            input_ids[b, length - len(r) :] = torch.tensor(r)
            attention_mask[b, length - len(r) :] = 1
        else:
            input_ids[b, : len(r)] = torch.tensor(r)
            attention_mask[b, : len(r)] = 1
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, image_sizes=image_sizes)
    if batch_num_images is not None:
        batch["batch_num_images"] = batch_num_images
    return batch


ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def run_recipe(stage: str, output_dir, *args: str, launcher: list[str] | None = None, timeout: int = 900) -> str:
    """Runs `recipes/<stage>.py` in a fresh process, as a user would (plain python unless `launcher`, e.g.
    ["deepspeed", "--num_gpus", "2"]); returns its output and fails the test with its tail if it fails."""
    import subprocess
    import sys

    command = [
        *(launcher or [sys.executable]),
        str(ROOT / "recipes" / f"{stage}.py"),
        "--output_dir",
        str(output_dir),
        *args,
    ]
    result = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1"),
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


def logged_losses(output_dir) -> dict[int, float]:
    """Per-step training losses from the Trainer's `trainer_state.json`."""
    import json
    from pathlib import Path

    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


def randomize(model, seed: int = 3) -> dict:
    """Random manager weights (a fixed seed), so that the managers' terms are not zero; returns them by layer."""
    from llava_manager import get_managers

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in get_managers(model):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g))
    return {m.layer_idx: m.weight.detach().clone() for m in get_managers(model)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy machine they only contend (several times slower).
    Autouse in every test module that imports it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
