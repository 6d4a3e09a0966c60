"""Every user path on checkpoints laid out like llava-hf's own (support/published.py: the published file names, field
values, chat template and tokenizer, only the sizes shrunk): patching and generation, loading, the three recipes
chained from the downloaded layout with a resume in a fresh process, every analysis command and the budget.
The lmms-eval runs on the same fixtures are in test_lmms_eval.py."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from PIL import Image
from support.helpers import logged_losses, randomize, run_recipe
from support.published import CHAT_TEMPLATE
from support.reference import add_reference_hooks
from transformers import LlavaOnevisionForConditionalGeneration

import llava_manager
from llava_manager import apply_manager, get_managers, has_manager, load_manager, save_manager
from llava_manager.analysis.__main__ import main as analysis
from llava_manager.processing.processors import load_processor
from llava_manager.synthetic.data import draw_shape, write_shapes_dataset
from llava_manager.training.train_args import _CHECKPOINTING


def typed_inputs(processor, images, question="What colour is the shape ?"):
    """Inputs as a user of the published checkpoint builds them: typed chat content through the processor's own
    chat template (transformers' documented usage)."""
    messages = [{"role": "user", "content": [{"type": "image"}] * len(images) + [{"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(images=images, text=[prompt], return_tensors="pt")


@pytest.mark.parametrize("variant", ["si", "ov"])
def test_apply_manager_and_generate_on_the_published_layout(variant, request):
    directory = request.getfixturevalue(f"published_{variant}")
    processor = load_processor(directory)
    assert processor.chat_template == CHAT_TEMPLATE
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    inputs = typed_inputs(processor, [draw_shape("circle", "red", "left", "white", (45, 100))])
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) > processor.num_image_tokens  # + grids
    with torch.no_grad():
        base_logits = model(**inputs).logits
    base_tokens = model.generate(**inputs, max_new_tokens=6, do_sample=False)

    apply_manager(model)
    assert [m.vision_layers for m in get_managers(model)][0] == (3, 4)  # f = 4 (of 4 SigLIP layers): top ceil(4/2)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, base_logits)  # zero-initialised: the base model, bit for bit
    assert torch.equal(model.generate(**inputs, max_new_tokens=6, do_sample=False), base_tokens)

    weights = randomize(model)
    reference = LlavaOnevisionForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    add_reference_hooks(reference, dict(inputs), weights, get_managers(model)[0].vision_layers)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits, rtol=1e-5, atol=1e-5)
    for kwargs in (dict(do_sample=False), dict(num_beams=2, do_sample=False)):
        assert torch.equal(
            model.generate(**inputs, max_new_tokens=6, **kwargs),
            reference.generate(**inputs, max_new_tokens=6, **kwargs),
        )


def test_loading_the_published_layout(published_si, tmp_path):
    plain = llava_manager.from_pretrained(published_si)
    assert not has_manager(plain)
    own = LlavaOnevisionForConditionalGeneration.from_pretrained(published_si).state_dict()
    assert all(torch.equal(v, own[k]) for k, v in plain.state_dict().items())
    assert plain.dtype == torch.float16  # the published weights' dtype, as transformers loads them

    patched = apply_manager(llava_manager.from_pretrained(published_si, dtype=torch.float32))
    randomize(patched)
    processor = load_processor(published_si)
    inputs = typed_inputs(processor, [Image.new("RGB", (30, 30), (10, 200, 10))])
    with torch.no_grad():
        expected = patched(**inputs).logits
    patched.save_pretrained(tmp_path / "patched")
    save_manager(patched, tmp_path / "managers")
    with torch.no_grad():
        assert torch.equal(llava_manager.from_pretrained(tmp_path / "patched")(**inputs).logits, expected)
        base = llava_manager.from_pretrained(published_si, dtype=torch.float32)
        assert torch.equal(load_manager(base, tmp_path / "managers")(**inputs).logits, expected)


@pytest.fixture(scope="module")
def chain(published_si, tmp_path_factory):
    """stage1 -> stage1.5 -> stage2 from the published layout, each a fresh plain-python process."""
    root = tmp_path_factory.mktemp("chain")
    data = write_shapes_dataset(root / "data", 24)
    common = (
        "--image_folder",
        str(data["image_folder"]),
        "--per_device_train_batch_size",
        "4",
        "--logging_steps",
        "1",
        "--dataloader_num_workers",
        "0",
        f"--{_CHECKPOINTING}",
        "false",
        "--data_seed",
        "42",
    )
    run_recipe(
        "stage1",
        root / "stage1",
        "--model_name_or_path",
        str(published_si),
        "--data_path",
        str(data["captions"]),
        "--max_steps",
        "2",
        "--save_strategy",
        "no",
        *common,
    )
    run_recipe(
        "stage1_5",
        root / "stage1_5",
        "--model_name_or_path",
        str(root / "stage1"),
        "--data_path",
        str(data["instruct"]),
        "--max_steps",
        "2",
        "--save_strategy",
        "no",
        *common,
    )
    stage2 = (
        *common,
        "--model_name_or_path",
        str(root / "stage1_5"),
        "--data_path",
        str(data["instruct"]),
        "--max_steps",
        "4",
        "--save_steps",
        "2",
        "--learning_rate",
        "1e-3",
    )
    run_recipe("stage2", root / "stage2", *stage2)
    return root, stage2


@pytest.mark.slow
def test_recipes_chain_from_the_published_layout(chain, published_si):
    root, _ = chain
    stages = {name: llava_manager.from_pretrained(root / name) for name in ("stage1", "stage1_5", "stage2")}
    managers = {name: [m.weight for m in get_managers(model)] for name, model in stages.items()}
    assert all(len(w) == 1 and w[0].abs().sum() > 0 for w in managers.values())  # 4 decoder layers: one manager
    assert not torch.equal(managers["stage1"][0], managers["stage2"][0])  # each stage went on training them
    # Stage-1 trains the projector (and managers) only: the LLM is still the published one
    published = llava_manager.from_pretrained(published_si, dtype=torch.float32).state_dict()
    stage1 = stages["stage1"].state_dict()
    llm = [k for k in published if ".language_model." in k]
    projector = [k for k in published if "multi_modal_projector" in k]
    assert all(torch.equal(stage1[k], published[k]) for k in llm)
    assert not all(torch.equal(stage1[k], published[k]) for k in projector)
    # each export carries the published processor: same template, same tokens, loadable without torchvision
    processor = load_processor(root / "stage2")
    assert processor.chat_template == CHAT_TEMPLATE
    assert processor.tokenizer.convert_tokens_to_ids(["<image>", "<|im_end|>"]) == [151646, 151645]
    assert json.loads((root / "stage2" / "data_skipped.json").read_text())["skipped"] == 0


@pytest.mark.slow
def test_resume_from_the_published_layout_in_a_fresh_process(chain, tmp_path):
    root, stage2 = chain
    reference = logged_losses(root / "stage2")
    resumed = tmp_path / "resumed"
    shutil.copytree(root / "stage2" / "checkpoint-2", resumed / "checkpoint-2")
    run_recipe("stage2", resumed, *stage2, "--resume_from_checkpoint", str(resumed / "checkpoint-2"))
    assert logged_losses(resumed) == reference and sorted(reference) == [1, 2, 3, 4]
    for a, b in zip(
        get_managers(llava_manager.from_pretrained(resumed)),
        get_managers(llava_manager.from_pretrained(root / "stage2")),
    ):
        assert torch.equal(a.weight, b.weight)


def test_every_analysis_command_on_the_published_layout(chain, published_si, tmp_path):
    root, _ = chain
    images = tmp_path / "images"
    images.mkdir()
    draw_shape("circle", "red", "left", "white", (45, 100)).save(images / "a.png")
    Image.new("L", (31, 17), 90).save(images / "b.png")  # grayscale, odd size
    runs = {
        "weights": [],
        "similarity": ["--inputs", str(images), "--compare", str(published_si)],
        "attention": ["--inputs", str(images), "--compare", str(published_si), "--prompt-format", "chat_template"],
        "siglip": ["--inputs", str(images)],
    }
    for command, extra in runs.items():
        paths = analysis([command, "--model", str(root / "stage2"), "--out", str(tmp_path / command), *extra])
        assert paths and all(p.exists() and p.stat().st_size > 0 for p in paths.values())
    rows = list(csv.DictReader((tmp_path / "similarity" / "layer_similarity.csv").open()))
    assert len(rows) == 3 and all(0 < float(v) <= 1.0 + 1e-5 for row in rows for k, v in row.items() if k != "layer")

    paths = analysis(
        [
            "budget",
            "--model",
            str(published_si),
            "--out",
            str(tmp_path / "budget"),
            "--image-size",
            "45",
            "100",
            "--text-tokens",
            "8",
            "--new-tokens",
            "2",
            "--repeats",
            "1",
            "--dtype",
            "float32",
        ]
    )
    budget = list(csv.DictReader(paths["csv"].open()))
    assert [r["variant"] for r in budget] == ["Baseline", "+Manager", "+Grid", "+Grid+Manager"]
    assert int(budget[1]["parameters"]) - int(budget[0]["parameters"]) == 1 * 2 * 56  # 1 manager x 2 layers x 56
