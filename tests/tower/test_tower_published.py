"""ManagerTower against a BridgeTower checkpoint laid out as published (support/published_tower.py): what transformers
itself makes of the files, warm-starting ManagerTower from them, and the package's collators on the published
tokenizer and image processor. Expected values are typed out from the sources cited in tests/support/published_tower.py
(roberta-base's special ids, BridgeTower's 288 px input), not imported from the package."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from support.published_tower import PUBLISHED_FILES, PUBLISHED_REPOS, write_published_tower

# roberta-base (tokenizer.json / vocab.json of the BridgeTower repos)
BOS, PAD, EOS, UNK, MASK = 0, 1, 2, 3, 50264
IMAGE_SIDE = 288  # BridgeTowerImageProcessor's default shortest edge and crop; the published files set no size
MANAGER_PREFIXES = (
    "cross_modal_text_managers.",
    "cross_modal_image_managers.",
    "layer_embeddings_text.",
    "layer_embeddings_image.",
)
# what BridgeTower has and ManagerTower replaces: the layer-by-layer bridges (link towers) and their LayerNorms
BRIDGE_PREFIXES = (
    "cross_modal_text_link_tower.",
    "cross_modal_image_link_tower.",
    "cross_modal_text_layernorm.",
    "cross_modal_image_layernorm.",
)
CAPTIONS = [
    "A red circle on the left of the image.",
    "what colour is the shape in the picture?",
    "There is a blue square on the right.",
    "a yellow triangle on a black background",
]


def _write(factory, variant: str, layout: str = "published") -> Path:
    # A folder named as the repo (like a snapshot_download folder, whose path names the repo too).
    return write_published_tower(
        factory.mktemp(f"{variant}-{layout}") / PUBLISHED_REPOS[variant].split("/")[1], variant, weights_layout=layout
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return _write(tmp_path_factory, "base")


@pytest.fixture(scope="module")
def itm_mlm(tmp_path_factory) -> Path:
    return _write(tmp_path_factory, "itm-mlm")


@pytest.fixture(scope="module")
def base_safetensors(tmp_path_factory) -> Path:
    """bridgetower-base with transformers 5's own model.safetensors instead of the published pytorch_model.bin."""
    return _write(tmp_path_factory, "base", "transformers")


@pytest.fixture(params=["base", "itm_mlm"])
def checkpoint(request) -> Path:
    return request.getfixturevalue(request.param)


def load_processor(folder: Path):
    """The package's loader: `BridgeTowerProcessor.from_pretrained` cannot resolve the published files
    (see test_processor_from_pretrained_needs_a_model_type)."""
    from llava_manager.tower.data.processor import load_tower_processor

    return load_tower_processor(folder)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    """Real files of odd sizes and modes: 37x53 grey ('L'), 61x40 RGBA, 50x50 palette ('P')."""
    g = torch.Generator().manual_seed(0)
    folder = tmp_path_factory.mktemp("images")
    grey = Image.fromarray(torch.randint(0, 256, (53, 37), generator=g, dtype=torch.uint8).numpy(), mode="L")
    rgba = Image.fromarray(torch.randint(0, 256, (40, 61, 4), generator=g, dtype=torch.uint8).numpy(), mode="RGBA")
    palette = Image.fromarray(
        torch.randint(0, 256, (50, 50, 3), generator=g, dtype=torch.uint8).numpy(), mode="RGB"
    ).convert("P")
    paths = [folder / "grey.png", folder / "rgba.png", folder / "palette.png"]
    for image, path in zip((grey, rgba, palette), paths):
        image.save(path)
    return paths


def _inputs(folder: Path, image_files: list[Path]) -> dict:
    """Two samples of different text lengths (so one is padded) made by the fixture's processor from the files
    decoded as the package does (`open_image`)."""
    from llava_manager.processing.images import open_image

    images = [open_image(image_files[0]), open_image(image_files[1])]
    return dict(
        load_processor(folder)(
            images=images, text=["A red <mask> on the left.", CAPTIONS[1]], padding=True, return_tensors="pt"
        )
    )


# ---------------------------------------------------------------------------------------------------------------------
# The fixture and what transformers makes of it


def test_fixture_is_laid_out_as_published(checkpoint):
    assert {p.name for p in checkpoint.iterdir()} == set(PUBLISHED_FILES)
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["text_config_dict"] is None and config["vision_config_dict"] is None
    assert (config["head_hidden_scale"], config["drop_rate"], config["max_text_len"]) == (2, 0.1, 50)
    assert "model_type" not in config and "architectures" not in config
    assert (config["vision_config"]["image_size"], config["vision_config"]["patch_size"]) == (288, 16)
    assert config["text_config"]["vocab_size"] == 50265
    preprocessor = json.loads((checkpoint / "preprocessor_config.json").read_text())
    assert preprocessor["tokenizer"] == "roberta-base" and preprocessor["vit"] == "ViT-B/16"
    assert not {"image_processor_type", "size", "crop_size", "image_mean", "size_divisor"} & set(preprocessor)
    tokenizer = json.loads((checkpoint / "tokenizer.json").read_text())
    assert tokenizer["post_processor"]["type"] == "RobertaProcessing"
    assert {t["content"]: t["id"] for t in tokenizer["added_tokens"]} == {
        "<s>": BOS,
        "<pad>": PAD,
        "</s>": EOS,
        "<unk>": UNK,
        "<mask>": MASK,
    }
    assert len(json.loads((checkpoint / "vocab.json").read_text())) == 50265
    state = torch.load(checkpoint / "pytorch_model.bin", map_location="cpu", weights_only=True)
    buffers = {k: v for k, v in state.items() if k.endswith("position_ids")}
    assert len(buffers) == 2 and all(v.dtype == torch.int64 for v in buffers.values())
    assert {v.dtype for k, v in state.items() if k not in buffers} == {torch.float32}


def test_transformers_loads_the_published_weights(base, itm_mlm):
    from transformers import BridgeTowerForImageAndTextRetrieval, BridgeTowerForMaskedLM, BridgeTowerModel

    state = torch.load(itm_mlm / "pytorch_model.bin", map_location="cpu", weights_only=True)
    mlm_head = {k for k in state if k.startswith("mlm_score.")}
    itm_head = {k for k in state if k.startswith("itm_score.")}
    assert mlm_head and itm_head
    cases = [
        (BridgeTowerModel, base, set()),
        (BridgeTowerForMaskedLM, itm_mlm, itm_head),
        (BridgeTowerForImageAndTextRetrieval, itm_mlm, mlm_head),
    ]
    for model_class, folder, other_head in cases:
        model, info = model_class.from_pretrained(folder, output_loading_info=True)
        assert not info["missing_keys"] and not info["mismatched_keys"], (model_class.__name__, info)
        assert set(info["unexpected_keys"]) <= other_head, (model_class.__name__, info["unexpected_keys"])
    word = "bridgetower.text_model.embeddings.word_embeddings.weight"
    assert torch.equal(model.state_dict()[word], state[word])


def test_processor_from_pretrained_needs_a_model_type(base, tmp_path):
    """The published config.json has no "model_type" (module doc of published_tower.py) and transformers 5 no longer
    guesses it from the repo name, so `BridgeTowerProcessor.from_pretrained` cannot pick the image processor and
    `AutoTokenizer` returns a tokenizer without RoBERTa's special tokens; torchvision is not the cause (the same
    files plus "model_type" load, with the PIL image processor where torchvision is missing)."""
    from transformers import AutoTokenizer, BridgeTowerProcessor

    with pytest.raises(ValueError, match="Unrecognized image processor"):
        BridgeTowerProcessor.from_pretrained(base)
    assert AutoTokenizer.from_pretrained(base).mask_token is None
    fixed = shutil.copytree(base, tmp_path / "bridgetower-base", ignore=shutil.ignore_patterns("*.bin"))
    config = json.loads((fixed / "config.json").read_text())
    (fixed / "config.json").write_text(json.dumps({**config, "model_type": "bridgetower"}))
    processor = BridgeTowerProcessor.from_pretrained(fixed)
    assert type(processor.tokenizer).__name__ == "RobertaTokenizer"
    assert processor.tokenizer.mask_token_id == MASK


def test_published_tokenizer_and_image_processor(base, image_files):
    from llava_manager.processing.images import open_image

    processor = load_processor(base)
    tokenizer = processor.tokenizer
    assert (
        tokenizer.bos_token_id,
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        tokenizer.unk_token_id,
        tokenizer.mask_token_id,
    ) == (BOS, PAD, EOS, UNK, MASK)
    ids = tokenizer("A red <mask> on the left.")["input_ids"]
    assert ids[0] == BOS and ids[-1] == EOS and ids.count(MASK) == 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == "A red on the left."  # <mask> takes its space (lstrip)
    images = [open_image(p) for p in image_files]
    assert [im.mode for im in images] == ["RGB"] * 3
    encoded = processor.image_processor(images, return_tensors="pt")
    assert tuple(encoded["pixel_values"].shape) == (3, 3, IMAGE_SIDE, IMAGE_SIDE)
    assert bool(encoded["pixel_mask"].all())


# ---------------------------------------------------------------------------------------------------------------------
# ManagerTower from the published files


def test_manager_tower_config_from_the_published_config(base):
    from transformers import BridgeTowerConfig

    from llava_manager.tower import ManagerTowerConfig

    published = BridgeTowerConfig.from_pretrained(base)
    config = ManagerTowerConfig.from_pretrained(base, manager_type="aaum")
    assert config.model_type == "managertower" and config.manager_type == "aaum"
    assert config.text_config.to_dict() == published.text_config.to_dict()
    assert config.vision_config.to_dict() == published.vision_config.to_dict()
    for name in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "share_cross_modal_transformer_layers",
        "share_link_tower_layers",
        "link_tower_type",
        "layer_norm_eps",
        "tie_word_embeddings",
    ):
        assert getattr(config, name) == getattr(published, name), name
    assert config.head_hidden_scale == 2  # the published legacy key is ManagerTower's head width knob
    saved = config.to_dict()
    assert "text_config_dict" not in saved and "vision_config_dict" not in saved


@pytest.mark.parametrize(
    "override, message",
    [
        ({"manager_type": "no-such-manager"}, "manager_type must be one of"),
        ({"num_managed_layers": 99}, r"num_managed_layers must be in 1\.\.6"),
        ({"manager_weight": "matrix"}, "manager_weight must be one of"),
    ],
)
def test_config_overrides_given_to_from_pretrained_are_validated(base, override, message):
    """`ManagerTowerConfig(**kwargs)` refuses these values (with a strict-dataclass validation error naming the
    field); the same values given to `from_pretrained` must be refused too."""
    from llava_manager.tower import ManagerTowerConfig

    with pytest.raises(Exception, match=message):
        ManagerTowerConfig(**{**ManagerTowerConfig.from_pretrained(base).to_dict(), **override})
    with pytest.raises(Exception, match=message):
        ManagerTowerConfig.from_pretrained(base, **override)


def _reference_backbone(folder: Path):
    from transformers import BridgeTowerForMaskedLM, BridgeTowerModel

    if "itm-mlm" in folder.name:  # the backbone of the task checkpoint
        return BridgeTowerForMaskedLM.from_pretrained(folder).bridgetower.eval()
    return BridgeTowerModel.from_pretrained(folder).eval()


@pytest.mark.parametrize("name", ["base", "itm_mlm", "base_safetensors"])
def test_warm_start_bridge_reproduces_transformers_bridgetower(request, name, image_files):
    from llava_manager.tower import ManagerTowerConfig, ManagerTowerModel
    from llava_manager.tower.weights import warm_start_from_bridgetower

    folder = request.getfixturevalue(name)
    model = ManagerTowerModel(ManagerTowerConfig.from_pretrained(folder, manager_type="bridge")).eval()
    report = warm_start_from_bridgetower(model, folder)
    assert report.missing == [] and report.reshaped == {}
    # a bare backbone has no place for the task checkpoint's heads: exactly those are left over
    heads = {"mlm_score.", "itm_score."} if name == "itm_mlm" else set()
    assert {k.split(".")[0] + "." for k in report.unexpected} == heads
    reference = _reference_backbone(folder)
    inputs = _inputs(folder, image_files)
    assert bool((inputs["attention_mask"] == 0).any())  # one sample is padded
    with torch.no_grad():
        ours, theirs = model(**inputs), reference(**inputs)
    for field in ("text_features", "image_features", "pooler_output"):
        assert torch.equal(getattr(ours, field), getattr(theirs, field)), field


@pytest.mark.parametrize("name", ["base", "base_safetensors"])
def test_warm_start_aaum_leaves_exactly_the_managers_new(request, name):
    from llava_manager.tower import ManagerTowerConfig, ManagerTowerModel
    from llava_manager.tower.weights import warm_start_from_bridgetower

    folder = request.getfixturevalue(name)
    model = ManagerTowerModel(ManagerTowerConfig.from_pretrained(folder, manager_type="aaum", num_managed_layers=3))
    report = warm_start_from_bridgetower(model, folder)
    target = model.state_dict()
    assert set(report.missing) == {k for k in target if k.startswith(MANAGER_PREFIXES)} != set()
    source = _reference_backbone(folder).state_dict()
    assert set(report.unexpected) == {k for k in source if k.startswith(BRIDGE_PREFIXES)} != set()
    for key in target:
        if not key.startswith(MANAGER_PREFIXES):
            assert torch.equal(target[key], source[key]), key


def test_warm_start_pretraining_heads_from_itm_mlm(itm_mlm, image_files):
    from transformers import BridgeTowerForImageAndTextRetrieval, BridgeTowerForMaskedLM

    from llava_manager.tower import ManagerTowerConfig
    from llava_manager.tower.heads import ManagerTowerForPreTraining
    from llava_manager.tower.weights import warm_start_from_bridgetower

    model = ManagerTowerForPreTraining(ManagerTowerConfig.from_pretrained(itm_mlm, manager_type="bridge")).eval()
    report = warm_start_from_bridgetower(model, itm_mlm)
    assert report.missing == [] and report.unexpected == []
    inputs = _inputs(itm_mlm, image_files)
    with torch.no_grad():
        ours = model(**inputs)
        mlm = BridgeTowerForMaskedLM.from_pretrained(itm_mlm).eval()(**inputs).logits
        itm = BridgeTowerForImageAndTextRetrieval.from_pretrained(itm_mlm).eval()(**inputs).logits
    assert torch.equal(ours.mlm_logits, mlm) and torch.equal(ours.itm_logits, itm)


# ---------------------------------------------------------------------------------------------------------------------
# The package's collators with the published processor


@pytest.fixture(scope="module")
def items(image_files):
    """`TowerDataset` items (images decoded from the odd files) carrying every collator's text field."""
    from llava_manager.tower.data import TowerDataset

    records = [
        {
            "id": str(i),
            "image": str(image_files[i % 3]),
            "images": [str(image_files[i % 3]), str(image_files[(i + 1) % 3])],
            "caption": caption,
            "question": caption,
            "hypothesis": caption,
            "sentence": caption,
            "label": i % 2,
            "image_index": i % 3,
            "answer_counts": {"red": 3, "yes": 1},
        }
        for i, caption in enumerate(CAPTIONS * 2)
    ]
    # "images" lists two files (NLVR2); the other collators read the first
    dataset = TowerDataset(records, strict=True)
    return [dataset[i] for i in range(len(dataset))]


def test_pretrain_collator_masks_with_the_published_mask_token(itm_mlm, items):
    from transformers import BridgeTowerForMaskedLM

    from llava_manager.tower import ManagerTowerConfig
    from llava_manager.tower.data import PretrainCollator
    from llava_manager.tower.heads import ManagerTowerForPreTraining

    processor = load_processor(itm_mlm)
    batch = PretrainCollator(processor, mlm_probability=0.5, seed=0)(items)
    clean = processor.tokenizer([item["record"]["caption"] for item in items], padding=True, return_tensors="pt")[
        "input_ids"
    ]
    assert torch.equal(batch["input_ids"], clean)  # the ITM pass reads the caption unmasked
    ids, labels, mask = batch["mlm_input_ids"], batch["mlm_labels"], batch["attention_mask"]
    assert bool((mask == 0).any()) and bool((ids[mask == 0] == PAD).all())  # padded with <pad> = 1
    targets = labels != -100
    assert bool(targets.any())
    assert bool((labels[targets] == clean[targets]).all())  # labels are the original tokens
    assert not bool(torch.isin(clean[targets], torch.tensor([BOS, EOS, PAD])).any())  # specials never masked
    assert bool((ids == MASK).any()) and bool(targets[ids == MASK].all())  # <mask> = 50264, only at targets
    assert bool((ids[~targets] == clean[~targets]).all())
    n = len(items)
    for key in ("pixel_values", "itm_pixel_values"):
        assert tuple(batch[key].shape) == (n, 3, IMAGE_SIDE, IMAGE_SIDE), key
    assert set(batch["itm_labels"].tolist()) == {0, 1}
    # the published MLM model and a ManagerTower pre-training model of the published config take the batch
    with torch.no_grad():
        out = BridgeTowerForMaskedLM.from_pretrained(itm_mlm).eval()(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=batch["pixel_values"],
            pixel_mask=batch["pixel_mask"],
            labels=labels,
        )
        assert torch.isfinite(out.loss) and out.logits.shape == (*ids.shape, 50265)
        config = ManagerTowerConfig.from_pretrained(itm_mlm, manager_type="aaum", num_managed_layers=3)
        ours = ManagerTowerForPreTraining(config).eval()(**batch)
    assert torch.isfinite(ours.mlm_loss) and torch.isfinite(ours.itm_loss)


def test_task_collators_with_the_published_processor(base, items):
    from transformers import BridgeTowerModel

    from llava_manager.tower.data import NLVR2Collator, RetrievalCollator, SNLIVECollator, VQACollator

    processor = load_processor(base)
    n = len(items)
    batches = {
        "vqa": VQACollator(processor, label2ans=["red", "blue", "yes"])(items),
        "snli": SNLIVECollator(processor)(items),
        "nlvr2": NLVR2Collator(processor)(items),
        "retrieval": RetrievalCollator(processor, return_image_ids=True)(items),
    }
    expected = processor.tokenizer(CAPTIONS * 2, padding=True, return_tensors="pt")
    for name, batch in batches.items():
        assert torch.equal(batch["input_ids"], expected["input_ids"]), name
        assert torch.equal(batch["attention_mask"], expected["attention_mask"]), name
        assert tuple(batch["pixel_values"].shape) == (n, 3, IMAGE_SIDE, IMAGE_SIDE), name
    assert torch.allclose(batches["vqa"]["labels"], torch.tensor([[0.9, 0.0, 0.3]] * n))
    assert batches["snli"]["labels"].tolist() == [i % 2 for i in range(n)]
    assert tuple(batches["nlvr2"]["pixel_values_2"].shape) == (n, 3, IMAGE_SIDE, IMAGE_SIDE)
    assert not torch.equal(batches["nlvr2"]["pixel_values"], batches["nlvr2"]["pixel_values_2"])
    assert batches["retrieval"]["image_ids"].tolist() == [i % 3 for i in range(n)]
    # the published backbone takes the batch
    batch = batches["snli"]
    with torch.no_grad():
        out = BridgeTowerModel.from_pretrained(base).eval()(
            **{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "pixel_mask")}
        )
    assert out.pooler_output.shape == (n, 2 * 32) and bool(torch.isfinite(out.pooler_output).all())
