"""The recipes train every supported family: the embedded default of each (`--family`), a plain model directory of
a non-OneVision family, the data path (dataset + collator) giving each family the inputs its forward takes, the
image check (`unsupported_reason`) per family, and the held-out shapes score on each family's export."""

from __future__ import annotations

import inspect
import json
import math

import pytest
import torch
from PIL import Image
from support.family_models import FAMILIES
from support.helpers import logged_losses, run_recipe
from transformers import AutoModelForImageTextToText, set_seed

import llava_manager
from llava_manager import apply_manager, get_managers
from llava_manager.families import get_family
from llava_manager.processing.images import unsupported_reason
from llava_manager.processing.processors import family_of_processor, load_processor
from llava_manager.synthetic import score as shapes_score
from llava_manager.synthetic.data import tiny_model_config, tiny_processor
from llava_manager.training.data import BATCH_INFO, Collator, SupervisedDataset
from llava_manager.training.train import run
from llava_manager.training.train_args import _CHECKPOINTING, parse

NO_CHECKPOINTING = [f"--{_CHECKPOINTING}", "false"]
STEPS = 3  # the first step is the warmup's (learning rate 0): two steps move the weights


# ---------------------------------------------------------------------------------------------------------------------
# The embedded default of every family


@pytest.fixture(scope="module", params=FAMILIES)
def family_run(request, tmp_path_factory):
    family = request.param
    out = tmp_path_factory.mktemp(f"default-{family}")
    trainer = run(
        "stage2",
        [
            "--family",
            family,
            "--output_dir",
            str(out),
            "--max_steps",
            str(STEPS),
            "--synthetic_samples",
            "24",
            "--per_device_train_batch_size",
            "4",
            "--logging_steps",
            "1",
            "--save_steps",
            "100",
            "--dataloader_num_workers",
            "0",
            *NO_CHECKPOINTING,
        ],
    )
    return family, out, trainer


def test_the_embedded_default_of_every_family_trains_and_exports(family_run):
    family, out, trainer = family_run
    adapter = get_family(family)
    assert isinstance(trainer.model, adapter.model_class)
    losses = logged_losses(out)
    assert sorted(losses) == list(range(1, STEPS + 1)) and all(math.isfinite(v) for v in losses.values())
    trained = get_managers(trainer.model)
    assert trained and all(m.weight.abs().sum() > 0 for m in trained)  # moved from their zero start

    exported = llava_manager.from_pretrained(out)
    assert isinstance(exported, adapter.model_class) and exported.config.model_type == family
    saved = get_managers(exported)
    assert [m.layer_idx for m in saved] == [m.layer_idx for m in trained]
    assert all(torch.equal(s.weight, t.weight.detach().cpu()) for s, t in zip(saved, trained))
    processor = load_processor(out)
    assert family_of_processor(processor) == family
    assert len(processor.tokenizer) == exported.config.text_config.vocab_size
    assert json.loads((out / "data_skipped.json").read_text())["skipped"] == 0

    # The export is the trained model, on a batch of the family's own collation.
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    batch.pop(BATCH_INFO)
    with torch.no_grad():
        assert torch.equal(exported.eval()(**batch).logits, trainer.model.eval()(**batch).logits)


def test_the_held_out_score_runs_on_every_family(family_run):
    """What the full embedded-default run ends with (skipped under --max_steps), on a few documents."""
    family, out, _ = family_run
    result = shapes_score.score_export(out, samples=4)
    assert result["samples"] == 4 and 0 <= result["exact_match"] <= 1 and 0 <= result["mc_accuracy"] <= 1
    assert "held-out shapes score" in shapes_score.describe(result)


def test_family_choices_and_a_family_that_disagrees_with_the_model(tmp_path):
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        parse("stage2", ["--family", "llava_1_5"])
    assert parse("stage2", [])[0].tiny_family() == "llava_onevision"  # the README's main job is unchanged
    assert parse("stage2", ["--family", "llava"])[0].tiny_family() == "llava"
    model_dir = plain_model_dir(tmp_path / "next", "llava_next")
    with pytest.raises(ValueError, match="--family llava disagrees with .* a llava_next model"):
        run(
            "stage2", ["--model_name_or_path", str(model_dir), "--family", "llava", "--output_dir", str(tmp_path / "x")]
        )


# ---------------------------------------------------------------------------------------------------------------------
# A model directory of another family, through the real recipe script


def plain_model_dir(path, family: str, seed: int = 0):
    """A plain (unpatched) tiny model of `family` and its processor, saved as a checkpoint directory."""
    processor = tiny_processor(family=family)
    set_seed(seed)
    AutoModelForImageTextToText.from_config(tiny_model_config(processor)).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_a_llava_next_model_directory_trains_through_the_recipe(tmp_path):
    """A plain LLaVA-NeXT directory: the managers are applied, the frozen parts stay the directory's weights
    (so the run started from it), the projector and the managers train, with the stage's activation checkpointing."""
    model_dir = plain_model_dir(tmp_path / "plain", "llava_next")
    out = tmp_path / "out"
    # the directory's tokenizer is the tiny Qwen-like one, not Mistral's: its format, not mistral_instruct
    run_recipe(
        "stage2",
        out,
        "--model_name_or_path",
        str(model_dir),
        "--family",
        "llava_next",
        "--template",
        "qwen_1_5",
        "--train_modules",
        "projector",
        "--learning_rate",
        "1e-3",
        "--max_steps",
        str(STEPS),
        "--synthetic_samples",
        "16",
        "--per_device_train_batch_size",
        "4",
        "--logging_steps",
        "1",
        "--save_steps",
        "100",
        "--dataloader_num_workers",
        "0",
    )
    losses = logged_losses(out)
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses.values())
    exported = llava_manager.from_pretrained(out)
    assert isinstance(exported, get_family("llava_next").model_class)
    assert all(m.weight.abs().sum() > 0 for m in get_managers(exported))
    before = AutoModelForImageTextToText.from_pretrained(model_dir).state_dict()
    after = exported.state_dict()
    frozen = [k for k in before if k.startswith(("model.vision_tower.", "model.language_model.", "lm_head."))]
    projector = [k for k in before if k.startswith(("model.multi_modal_projector.", "model.image_newline"))]
    assert len(frozen) + len(projector) == len(before) and projector
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert not all(torch.equal(before[k], after[k]) for k in projector)


# ---------------------------------------------------------------------------------------------------------------------
# The data path: what each family's forward takes


@pytest.fixture()
def folder(tmp_path):
    Image.new("RGB", (56, 28), (200, 30, 30)).save(tmp_path / "wide.png")  # 28 x 56 (height x width)
    Image.new("RGB", (28, 28), (30, 30, 200)).save(tmp_path / "small.png")
    Image.new("RGB", (56, 56), (30, 200, 30)).save(tmp_path / "big.png")
    return tmp_path


RECORDS = [
    {
        "image": "wide.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the shape ?"},
            {"from": "gpt", "value": "red ."},
        ],
    },
    {"conversations": [{"from": "human", "value": "Is a circle round ?"}, {"from": "gpt", "value": "yes ."}]},
    {
        "image": ["small.png", "big.png"],
        "conversations": [
            {"from": "human", "value": "<image> <image> What colour ?"},
            {"from": "gpt", "value": "blue ."},
        ],
    },
]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_collated_batch_is_what_the_family_forward_takes(family, folder):
    processor = tiny_processor(family=family)
    set_seed(0)
    model = apply_manager(AutoModelForImageTextToText.from_config(tiny_model_config(processor)))
    adapter = get_family(family)
    dataset = SupervisedDataset(RECORDS, processor, folder, model_config=model.config)
    samples = [dataset[i] for i in range(len(RECORDS))]
    batch = Collator(processor.tokenizer.pad_token_id, family)(samples)
    assert batch.pop(BATCH_INFO) == {"skipped": []}
    forward = inspect.signature(adapter.model_class.forward).parameters
    assert set(batch) <= set(forward)
    expected = {"input_ids", "labels", "attention_mask", "pixel_values"}
    if family == "llava":  # one 28 px crop per image, no sizes
        assert batch["pixel_values"].shape == (3, 3, 28, 28) and set(batch) == expected
    else:
        with_images = [s for s in samples if "pixel_values" in s]
        crops = 5 if family != "llava_onevision" else max(s["pixel_values"].shape[1] for s in with_images)
        assert batch["pixel_values"].shape == (3, crops, 3, 28, 28)
        assert batch["image_sizes"].tolist() == [[28, 56], [28, 28], [56, 56]]
        if family == "llava_onevision":  # several images in a sample: base crops only
            assert set(batch) == expected | {"image_sizes", "batch_num_images"}
            assert batch["batch_num_images"].tolist() == [1, 0, 2] and samples[2]["pixel_values"].shape[1] == 1
        else:  # every image has its grid crops, padded with zero crops to the batch's largest count
            assert set(batch) == expected | {"image_sizes"}
            assert [s["pixel_values"].shape[1] for s in samples if "pixel_values" in s] == [3, 5]
            assert batch["pixel_values"][1, 3:].abs().sum() == 0 and batch["pixel_values"][2, 3:].abs().sum() > 0
    # The model takes the batch: every image's tokens match its features (transformers raises otherwise).
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert all(m.weight.grad is not None for m in get_managers(model))


# ---------------------------------------------------------------------------------------------------------------------
# The image check, per family


@pytest.mark.parametrize("family", ["llava_next", "llava_next_video"])
def test_a_next_token_feature_mismatch_is_found_before_the_model(family):
    processor = tiny_processor(family=family)
    config = tiny_model_config(processor)
    sizes = [(h, w) for h in range(1, 120, 7) for w in range(1, 120, 11)]
    assert all(unsupported_reason(processor, Image.new("RGB", (w, h)), config) is None for h, w in sizes)
    assert unsupported_reason(processor, Image.new("RGB", (0, 5)), config) == "empty image (0x5 pixels)"
    count = processor._get_number_of_features
    processor._get_number_of_features = lambda h, w, *rest: count(h, w, *rest) + ((h, w) == (12, 90))
    reason = unsupported_reason(processor, Image.new("RGB", (90, 12)), config)
    assert reason == (
        f"the processor writes {count(12, 90, 28, 28)} image tokens for a 90x12 image (aspect ratio "
        f"7.5:1) but the model packs {count(12, 90, 28, 28) - 1} features"
    )
    assert unsupported_reason(processor, Image.new("RGB", (12, 90)), config) is None
    assert unsupported_reason(processor, Image.new("RGB", (90, 12))) == reason  # the layout the processor implies


def test_llava_1_5_has_one_count_for_every_image():
    processor = tiny_processor(family="llava")
    config = tiny_model_config(processor)
    for w, h in [(1, 1), (4000, 3), (3, 4000), (28, 28)]:
        assert unsupported_reason(processor, Image.new("RGB", (w, h)), config) is None
    assert unsupported_reason(processor, Image.new("RGB", (5, 0)), config) == "empty image (5x0 pixels)"
