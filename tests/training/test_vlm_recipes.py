"""The recipes train the families beyond LLaVA (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE, Qwen3.5, Qwen3.5-MoE,
InternVL, Gemma 3, Mistral3): the tiny processor of each writes the tokens the tiny model's features fill, in the
family's chat format with the loss on the answers only; the collator gives the forward its inputs (patch rows and grids,
tiles, token types); the embedded default trains and exports (managers, processor); the trainable parts are the
family's; packing keeps the padded losses (M-RoPE positions per sample) or is refused; the real script runs."""

from __future__ import annotations

import inspect
import json
import math

import pytest
import torch
from PIL import Image
from support.helpers import logged_losses, run_recipe
from transformers import AutoModelForImageTextToText, set_seed

import llava_manager
from llava_manager import apply_manager, get_managers
from llava_manager.families import get_family
from llava_manager.processing.processors import family_of_processor, image_prompt, load_processor
from llava_manager.processing.templates import template_for_config
from llava_manager.synthetic import score as shapes_score
from llava_manager.synthetic.data import tiny_model_config, tiny_processor, tiny_template, write_shapes_dataset
from llava_manager.training.data import BATCH_INFO, IGNORE_INDEX, Collator, SupervisedDataset, load_records
from llava_manager.training.packing import PackingCollator, build_collator
from llava_manager.training.parts import module_parameters, set_trainable
from llava_manager.training.train import run
from llava_manager.training.train_args import _CHECKPOINTING, parse

QWEN = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"]
VLM = QWEN + ["internvl", "gemma3", "mistral3"]
# The embedded default's short run, for the families first in line (the others share their paths).
TRAINED = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl", "gemma3", "mistral3"]
LINEAR_ATTENTION = ["qwen3_5", "qwen3_5_moe"]
STEPS = 3
END_OF_TURN = {"gemma3": "<end_of_turn>", "mistral3": "</s>"}


def tiny_model(family: str, seed: int = 0):
    processor = tiny_processor(family=family)
    set_seed(seed)
    model = AutoModelForImageTextToText.from_config(tiny_model_config(processor, family))
    return processor, model


def image_token_id(config) -> int:
    value = getattr(config, "image_token_id", None)
    return value if value is not None else config.image_token_index


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), 24, seed=0)


def dataset(family, processor, model, shapes):
    return SupervisedDataset(
        load_records(shapes["instruct"]),
        processor,
        shapes["image_folder"],
        tiny_template(family),
        model_config=model.config,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Processor, template, collator


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


@pytest.mark.parametrize("family", VLM)
def test_the_collated_batch_is_what_the_family_forward_takes(family, folder):
    processor, model = tiny_model(family)
    model = apply_manager(model)
    adapter = get_family(family)
    data = SupervisedDataset(RECORDS, processor, folder, tiny_template(family), model_config=model.config)
    samples = [data[i] for i in range(len(RECORDS))]
    batch = Collator(processor.tokenizer.pad_token_id, family, model.config)(samples)
    assert batch.pop(BATCH_INFO) == {"skipped": []}
    assert set(batch) <= set(inspect.signature(adapter.model_class.forward).parameters)
    key = adapter.token_type_key  # Qwen-VL's mm_token_type_ids, Gemma 3's token_type_ids, none for InternVL
    assert key is None or batch[key].shape == batch["input_ids"].shape
    pixels = batch["pixel_values"]
    if family in QWEN:  # the three images' patch rows, one after another, and their grids
        grids = batch["image_grid_thw"]
        assert grids.shape == (3, 3) and pixels.shape[0] == int(grids.prod(-1).sum()) and pixels.dim() == 2
        assert set(batch) == {
            "input_ids",
            "labels",
            "attention_mask",
            "pixel_values",
            "image_grid_thw",
            "mm_token_type_ids",
        }
    elif family == "mistral3":  # the images at their own sizes, padded to the largest, and their sizes
        sizes = batch["image_sizes"]
        assert sizes.shape == (3, 2) and pixels.shape == (3, 3, *sizes.max(0).values.tolist())
        assert set(batch) == {"input_ids", "labels", "attention_mask", "pixel_values", "image_sizes"}
    else:  # InternVL's tiles (with a thumbnail), Gemma 3's one crop an image
        size = model.config.vision_config.image_size
        size = size[0] if isinstance(size, list) else size
        assert pixels.shape[1:] == (3, size, size) and (pixels.shape[0] > 3) == (family == "internvl")
        assert set(batch) == {"input_ids", "labels", "attention_mask", "pixel_values"} | ({key} if key else set())
    # The tokens the processor writes are the features the model produces.
    image_inputs = {k: v for k, v in batch.items() if k in ("pixel_values", "image_grid_thw", "image_sizes")}
    with torch.no_grad():
        features = model.model.get_image_features(**image_inputs).pooler_output
    rows = sum(len(f) for f in features) if isinstance(features, (list, tuple)) else features.shape[:-1].numel()
    assert int((batch["input_ids"] == image_token_id(model.config)).sum()) == rows
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert all(m.weight.grad is not None for m in get_managers(model))


@pytest.mark.parametrize("family", VLM)
def test_the_family_chat_format_and_the_answers_only_labelled(family, folder):
    processor, model = tiny_model(family)
    data = SupervisedDataset(RECORDS, processor, folder, tiny_template(family), model_config=model.config)
    tokenizer = processor.tokenizer
    sample = data[0]
    text = "".join(tokenizer.convert_ids_to_tokens(sample["input_ids"].tolist()))  # the tokens, no separator
    text = text.replace("Ċ", "\n").replace("Ġ", " ")  # a byte-level BPE's newline and space symbols
    labelled = tokenizer.convert_ids_to_tokens(sample["labels"][sample["labels"] != IGNORE_INDEX].tolist())
    # a byte-level BPE (Qwen3.5's) writes the space before "." into its token, as "Ġ."
    assert [t.removeprefix("Ġ") for t in labelled] == ["red", ".", END_OF_TURN.get(family, "<|im_end|>")]
    if family == "gemma3":
        assert text.startswith("<bos><start_of_turn>user\n") and "<start_of_turn>model\n" in text
        assert "<start_of_image>" + "<image_soft_token>" * 4 + "<end_of_image>" in text
    elif family == "mistral3":  # v7: BOS, no system block, [INST] ... [/INST] then the answer and </s>
        assert text.startswith("<s>[INST][IMG]") and text.endswith("[/INST]red.</s>")
    else:
        assert text.startswith("<|im_start|>system") and "<|im_start|>assistant\n" in text
    if family in QWEN:  # each image between its vision start and end tokens, as the chat template writes it
        grid = processor.image_processor(images=[[Image.new("RGB", (56, 28))]], return_tensors="pt")["image_grid_thw"]
        pads = int(grid.prod()) // 4
        assert image_prompt(processor) == "<|vision_start|><|image_pad|><|vision_end|>"
        assert "<|vision_start|>" + "<|image_pad|>" * pads + "<|vision_end|>" in text
    if family == "internvl":
        assert "<img>" + "<IMG_CONTEXT>" * 4 in text
    if family == "mistral3":  # 28 x 56 px, longest side to 32: 2 rows of 4 tokens of 8 x 8 px, a break after each
        assert "[IMG]" * 4 + "[IMG_BREAK]" + "[IMG]" * 4 + "[IMG_END]" in text
    # the checkpoint's template follows from its LLM, and the embedded default's from the family
    assert template_for_config(model.config) == tiny_template(family)


def test_the_tiny_mistral3_projector_keeps_the_scale_of_its_input():
    """The tiny Mistral3 draws its projector (patch merger, linear_1, linear_2) from the top-level config's
    `initializer_range`, which transformers reads for that module only: unit-scale tower outputs stay near unit scale
    (at transformers' 0.02 they came out at rms ~0.001 and the embedded default learnt two colours of four), while the
    LLM and the vision tower keep their own 0.02."""
    _, model = tiny_model("mistral3")
    projector = model.model.multi_modal_projector
    vision = model.config.vision_config
    side = vision.image_size // vision.patch_size
    features = torch.randn(side * side, vision.hidden_size)
    with torch.no_grad():
        out = projector(features, torch.tensor([[vision.image_size, vision.image_size]]))
    assert out.shape == (side * side // 4, model.config.text_config.hidden_size)
    assert 0.2 < out.pow(2).mean().sqrt().item() < 5.0
    for part in (model.model.language_model, model.model.vision_tower):
        weights = [p for name, p in part.named_parameters() if name.endswith("proj.weight")]
        assert weights and all(abs(p.std().item() - 0.02) < 0.01 for p in weights)


def test_the_embedded_default_template_per_family():
    assert parse("stage2", ["--family", "gemma3"])[2].template == "gemma"
    assert parse("stage2", ["--family", "qwen2_vl"])[2].template == "qwen_1_5"
    assert parse("stage2", [])[2].template == "qwen_1_5"
    assert parse("stage2", ["--family", "gemma3", "--template", "qwen_1_5"])[2].template == "qwen_1_5"


# ---------------------------------------------------------------------------------------------------------------------
# Trainable parts


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "internvl", "gemma3", "mistral3"])
def test_the_trainable_parts_are_the_family_own(family):
    _, model = tiny_model(family)
    apply_manager(model)
    parts = module_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    ids = [id(p) for ps in parts.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(names)  # every parameter in exactly one part
    projector = {names[id(p)] for p in parts["projector"]}
    tower = {names[id(p)] for p in parts["vision_tower"]}
    if family in QWEN:
        assert projector and all(".visual.merger." in n or ".visual.deepstack_merger_list." in n for n in projector)
        assert tower and all(".visual." in n for n in tower)
        assert (family == "qwen3_vl") == any("deepstack_merger_list" in n for n in projector)
    else:
        assert projector and all(".multi_modal_projector." in n for n in projector)
        assert tower and all(".vision_tower." in n for n in tower)
    set_trainable(model, {"projector"})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    managers = {names[id(p)] for p in parts["managers"]}
    assert trainable == projector | managers


# ---------------------------------------------------------------------------------------------------------------------
# Packing


@pytest.mark.parametrize("family", [f for f in VLM if f not in LINEAR_ATTENTION])
def test_packing_keeps_the_padded_losses(family, shapes):
    processor, model = tiny_model(family)
    model = apply_manager(model).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in get_managers(model):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g))
    data = dataset(family, processor, model, shapes)
    samples = [data[i] for i in range(6)]
    pad = processor.tokenizer.pad_token_id
    padded = Collator(pad, family, model.config)(samples)
    rows = max(len(s["input_ids"]) for s in samples) * 4  # two rows, the shorter filled with a padding segment
    packed = PackingCollator(pad, family, model.config, max_packed_tokens=rows)(samples)
    padded.pop(BATCH_INFO), packed.pop(BATCH_INFO)
    assert packed["input_ids"].shape[0] == 2
    with torch.no_grad():
        expected, got = model(**padded).loss, model(**packed).loss
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if family in QWEN:  # (4, rows, width): text positions, then each sample's own M-RoPE positions
        positions = packed["position_ids"]
        assert positions.shape == (4, *packed["input_ids"].shape)
        assert not torch.equal(positions[1], positions[0])  # the image tokens' height/width positions
        flat = dict(packed, position_ids=positions[0])  # 1-D positions restarting per sample: not the model's
        with torch.no_grad():
            assert not torch.allclose(model(**flat).loss, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", LINEAR_ATTENTION)
def test_packing_is_refused_for_linear_attention(family):
    processor, model = tiny_model(family)
    with pytest.raises(ValueError, match=f"--padding_free with {get_family(family).title}: .*linear-attention"):
        build_collator(model, processor, packed_tokens=512)
    assert isinstance(build_collator(model, processor), Collator)  # padded batches train


# ---------------------------------------------------------------------------------------------------------------------
# The embedded default of each family


@pytest.fixture(scope="module", params=TRAINED)
def family_run(request, tmp_path_factory):
    family = request.param
    out = tmp_path_factory.mktemp(f"default-{family}")
    trainer = run(
        "stage2",
        [
            *("--family", family, "--output_dir", str(out), "--max_steps", str(STEPS)),
            *("--synthetic_samples", "24", "--per_device_train_batch_size", "4", "--logging_steps", "1"),
            *("--save_steps", "100", "--dataloader_num_workers", "0", f"--{_CHECKPOINTING}", "false"),
        ],
    )
    return family, out, trainer


def test_the_embedded_default_trains_and_exports(family_run):
    family, out, trainer = family_run
    adapter = get_family(family)
    assert isinstance(trainer.model, adapter.model_class)
    losses = logged_losses(out)
    assert sorted(losses) == list(range(1, STEPS + 1)) and all(math.isfinite(v) for v in losses.values())
    trained = get_managers(trainer.model)
    assert trained and all(m.weight.abs().sum() > 0 for m in trained)
    assert json.loads((out / "data_skipped.json").read_text())["skipped"] == 0

    exported = llava_manager.from_pretrained(out)
    assert isinstance(exported, adapter.model_class) and exported.config.model_type == family
    saved = get_managers(exported)
    assert [m.layer_idx for m in saved] == [m.layer_idx for m in trained]
    assert all(torch.equal(s.weight, t.weight.detach().cpu()) for s, t in zip(saved, trained))
    processor = load_processor(out)
    assert isinstance(processor, adapter.processor_class)  # or its image-only variant (no torchvision)
    assert family_of_processor(processor) == family or family.startswith("qwen3")
    assert len(processor.tokenizer) == exported.config.text_config.vocab_size
    assert processor.image_token == tiny_processor(family=family).image_token

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    batch.pop(BATCH_INFO)
    assert adapter.token_type_key is None or adapter.token_type_key in batch
    with torch.no_grad():
        assert torch.equal(exported.eval()(**batch).logits, trainer.model.eval()(**batch).logits)

    # what the full run ends with (skipped under --max_steps), on a few documents
    result = shapes_score.score_export(out, samples=3)
    assert result["samples"] == 3 and 0 <= result["exact_match"] <= 1 and 0 <= result["mc_accuracy"] <= 1


# ---------------------------------------------------------------------------------------------------------------------
# The real script


def test_the_recipe_script_trains_the_qwen2_vl_default(tmp_path):
    out = tmp_path / "out"
    text = run_recipe(
        "stage2",
        out,
        *("--family", "qwen2_vl", "--max_steps", "2", "--synthetic_samples", "16"),
        *("--per_device_train_batch_size", "4", "--logging_steps", "1", "--save_steps", "100"),
    )
    assert "a tiny Qwen2-VL model" in text or (out / "config.json").exists()
    assert len(logged_losses(out)) == 2
    assert isinstance(llava_manager.from_pretrained(out), get_family("qwen2_vl").model_class)


def test_a_qwen2_vl_model_directory_trains_its_projector_through_the_recipe(tmp_path):
    """A plain Qwen2-VL directory: its chat format from its LLM, its processor loaded back, and with
    `--train_modules projector` only the merger (and the managers) move."""
    processor, model = tiny_model("qwen2_vl")
    model.save_pretrained(tmp_path / "plain")
    processor.save_pretrained(tmp_path / "plain")
    out = tmp_path / "out"
    run_recipe(
        "stage2",
        out,
        *("--model_name_or_path", str(tmp_path / "plain"), "--train_modules", "projector"),
        *("--learning_rate", "1e-3", "--max_steps", "2", "--synthetic_samples", "16"),
        *("--per_device_train_batch_size", "4", "--logging_steps", "1", "--save_steps", "100"),
        *("--dataloader_num_workers", "0"),
    )
    exported = llava_manager.from_pretrained(out)
    assert all(m.weight.abs().sum() > 0 for m in get_managers(exported))
    before, after = model.state_dict(), exported.state_dict()
    merger = [k for k in before if ".visual.merger." in k]
    assert merger and not all(torch.equal(before[k], after[k]) for k in merger)
    assert all(torch.equal(before[k], after[k]) for k in before if k not in merger)
