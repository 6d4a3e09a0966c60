"""Training data: loading, mixtures, tokenisation with answer-only labels, skipping bad samples, collation."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from llava_manager.families import FAMILIES
from llava_manager.synthetic.data import tiny_processor, write_shapes_dataset
from llava_manager.training.data import (
    BATCH_INFO,
    IGNORE_INDEX,
    Collator,
    SupervisedDataset,
    load_records,
    sample_records,
)


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


@pytest.fixture()
def folder(tmp_path):
    Image.new("RGB", (56, 28), (200, 30, 30)).save(tmp_path / "wide.png")
    Image.new("RGB", (28, 28), (30, 30, 200)).save(tmp_path / "small.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    return tmp_path


def words(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens([int(i) for i in ids])


def test_labels_are_the_answers_and_their_end_of_turn_token(processor, folder):
    record = {
        "id": "a",
        "image": "wide.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the shape ?"},
            {"from": "gpt", "value": "red ."},
            {"from": "human", "value": "Where is the shape ?"},
            {"from": "gpt", "value": "left ."},
        ],
    }
    sample = SupervisedDataset([record], processor, folder)[0]
    tok = processor.tokenizer
    tokens = words(tok, sample["input_ids"])
    labelled = [t for t, label in zip(tokens, sample["labels"].tolist()) if label != IGNORE_INDEX]
    assert labelled == ["red", ".", "<|im_end|>", "left", ".", "<|im_end|>"]
    # labels equal the ids where set
    set_ = sample["labels"] != IGNORE_INDEX
    assert torch.equal(sample["labels"][set_], sample["input_ids"][set_])
    # the text around the answers, in order, with the system prompt and role headers unlabelled
    text = [t for t in tokens if t != "<image>"]
    assert text[:8] == ["<|im_start|>", "system", "\n", "You", "are", "a", "helpful", "assistant"]
    assert text.count("<|im_start|>") == 5 and "assistant" in text
    # the image expands to exactly the count the model's packing gives for a 28 x 56 image
    from transformers import LlavaOnevisionForConditionalGeneration

    from llava_manager.synthetic.data import tiny_model_config

    model = LlavaOnevisionForConditionalGeneration(tiny_model_config(processor)).eval()
    with torch.no_grad():
        feats = model.model.get_image_features(sample["pixel_values"], sample["image_sizes"]).pooler_output
    assert tokens.count("<image>") == len(feats[0])


def test_plain_template_keeps_only_the_image_and_labels_the_caption(processor, folder):
    record = {
        "image": "small.png",
        "conversations": [
            {"from": "human", "value": "<image>\nDescribe it ."},
            {"from": "gpt", "value": "A blue square ."},
        ],
    }
    sample = SupervisedDataset([record], processor, folder, template="plain")[0]
    tokens = words(processor.tokenizer, sample["input_ids"])
    n_image = tokens.count("<image>")
    assert tokens[:n_image] == ["<image>"] * n_image
    assert tokens[n_image:] == ["A", "blue", "square", ".", "\n"]
    assert (sample["labels"][:n_image] == IGNORE_INDEX).all()
    assert (sample["labels"][n_image:] != IGNORE_INDEX).all()


def test_text_only_and_missing_placeholder(processor, folder):
    text_only = {
        "conversations": [{"from": "human", "value": "Is a circle round ?"}, {"from": "gpt", "value": "yes ."}]
    }
    sample = SupervisedDataset([text_only], processor, folder)[0]
    assert "pixel_values" not in sample
    no_placeholder = {
        "image": "small.png",
        "conversations": [{"from": "human", "value": "What colour is the shape ?"}, {"from": "gpt", "value": "blue ."}],
    }
    sample = SupervisedDataset([no_placeholder], processor, folder)[0]
    tokens = words(processor.tokenizer, sample["input_ids"])
    first_user = tokens.index("user")
    assert tokens[first_user + 2] == "<image>"  # put in front of the first human turn, after its header


BAD = [
    (
        {
            "image": "nowhere.png",
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}],
        },
        "missing image",
    ),
    (
        {
            "image": "broken.png",
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}],
        },
        "corrupt image",
    ),
    ({"conversations": [{"from": "gpt", "value": "red ."}]}, "malformed"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "red ."}]}, "malformed"),
    (
        {
            "image": "small.png",
            "conversations": [{"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "red ."}],
        },
        "malformed",
    ),
    (
        {
            "image": "wide.png",
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "red . " * 60}],
        },
        "over-length",
    ),
]


@pytest.mark.parametrize("record,reason", BAD, ids=[r for _, r in BAD])
def test_bad_sample_is_skipped_and_recorded_or_raises_when_strict(processor, folder, record, reason):
    good = {
        "id": "good",
        "conversations": [{"from": "human", "value": "Is a circle round ?"}, {"from": "gpt", "value": "yes ."}],
    }
    record = {"id": "bad", **record}
    dataset = SupervisedDataset([record, good], processor, folder, max_length=64)
    sample = dataset[0]
    assert [s["reason"] for s in sample["skipped"]] == [reason]
    assert sample["skipped"][0]["id"] == "bad"
    assert words(processor.tokenizer, sample["input_ids"])[-4:-2] == ["yes", "."]  # the next good sample
    strict = SupervisedDataset([record, good], processor, folder, max_length=64, strict=True)
    with pytest.raises(ValueError, match=r"sample 0 \(id 'bad'\).*" + reason):
        strict[0]


def test_over_length_is_never_cut(processor, folder):
    record = {
        "image": "wide.png",
        "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "red ."}],
    }
    full = SupervisedDataset([record], processor, folder)[0]
    n = len(full["input_ids"])
    assert len(SupervisedDataset([record], processor, folder, max_length=n)[0]["input_ids"]) == n
    with pytest.raises(ValueError, match="over-length"):
        SupervisedDataset([record], processor, folder, max_length=n - 1, strict=True)[0]


def test_yaml_mixture_and_sampling_strategies(tmp_path):
    a = [{"id": f"a{i}"} for i in range(10)]
    b = [{"id": f"b{i}"} for i in range(20)]
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text("\n".join(json.dumps(r) for r in b))
    (tmp_path / "mix.yaml").write_text(
        "datasets:\n  - json_path: a.json\n    sampling_strategy: first:30%\n"
        "  - json_path: sub/b.jsonl\n    sampling_strategy: end:10%\n"
        "  - json_path: a.json\n    sampling_strategy: random:5\n  - json_path: a.json\n"
    )
    records = load_records(tmp_path / "mix.yaml", seed=3)
    ids = [r["id"] for r in records]
    assert ids[:3] == ["a0", "a1", "a2"] and ids[3:5] == ["b18", "b19"]
    assert len(set(ids[5:10])) == 5 and set(ids[5:10]) <= {r["id"] for r in a}
    assert ids[5:10] == [r["id"] for r in load_records(tmp_path / "mix.yaml", seed=3)][5:10]  # seeded
    assert ids[10:] == [r["id"] for r in a]
    with pytest.raises(ValueError, match="sampling_strategy 'middle:5%'"):
        sample_records(a, "middle:5%")
    (tmp_path / "empty.yaml").write_text("datasets: []\n")
    with pytest.raises(ValueError, match="non-empty 'datasets:'"):
        load_records(tmp_path / "empty.yaml")


def test_collator_pads_and_batches_mixed_samples(processor, folder):
    records = [
        {
            "image": "wide.png",
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "red ."}],
        },
        {"conversations": [{"from": "human", "value": "Is a circle round ?"}, {"from": "gpt", "value": "yes ."}]},
        {
            "image": ["small.png", "wide.png"],
            "conversations": [
                {"from": "human", "value": "<image> <image> What colour ?"},
                {"from": "gpt", "value": "blue ."},
            ],
        },
    ]
    dataset = SupervisedDataset(records, processor, folder)
    samples = [dataset[i] for i in range(3)]
    batch = Collator(processor.tokenizer.pad_token_id)(samples)
    lengths = [len(s["input_ids"]) for s in samples]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["batch_num_images"].tolist() == [1, 0, 2]
    assert batch["pixel_values"].shape[0] == 3 and batch["image_sizes"].tolist() == [[28, 56], [28, 28], [28, 56]]
    # the model accepts the batch: image tokens match the features of every image
    from transformers import LlavaOnevisionForConditionalGeneration

    from llava_manager import apply_manager
    from llava_manager.synthetic.data import tiny_model_config

    model = apply_manager(LlavaOnevisionForConditionalGeneration(tiny_model_config(processor)))
    batch.pop(BATCH_INFO)
    loss = model(**batch).loss
    assert torch.isfinite(loss)


def test_synthetic_data_answers_need_the_image(tmp_path):
    paths = write_shapes_dataset(tmp_path, 64, seed=0)
    instruct = json.loads(paths["instruct"].read_text())
    with_image = [r for r in instruct if "image" in r]
    assert len(with_image) >= 56 and any(len(r["conversations"]) == 4 for r in with_image)
    answers = {r["conversations"][1]["value"] for r in with_image}
    assert len(answers) > 5  # the answer varies with the image, not with the question alone
    for r in with_image[:5]:
        assert (paths["image_folder"] / r["image"]).exists()
    mtime = paths["instruct"].stat().st_mtime_ns
    assert write_shapes_dataset(tmp_path, 64, seed=0) == paths and paths["instruct"].stat().st_mtime_ns == mtime
    write_shapes_dataset(tmp_path, 32, seed=0)  # another size: rewritten, not the stale 64
    assert len(json.loads(paths["instruct"].read_text())) == 32


@pytest.mark.parametrize("family", FAMILIES)
def test_the_tiny_processor_saved_with_its_model_loads_back_tokenising_the_same(family, tmp_path):
    """The embedded default's export is scored and evaluated through the processor loaded from its folder: it must
    tokenise as the one the model was trained with. transformers reloads some model types' tokenizers in a class of
    its own whatever the folder names (Qwen3.5: `Qwen3_5Tokenizer`, a byte-level BPE rebuilt from the vocabulary);
    a word-level tokenizer came back turning every word into one token, and the trained model answered ""."""
    from transformers import AutoTokenizer

    from llava_manager.processing.processors import load_processor
    from llava_manager.processing.prompts import template_prompt
    from llava_manager.synthetic.data import tiny_model_config, tiny_template

    processor = tiny_processor(family=family)
    tiny_model_config(processor, family=family).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    text = template_prompt(processor, "What colour is the shape ?", 1, tiny_template(family)) + "green ."
    expected = processor.tokenizer(text)["input_ids"]
    for loaded in (load_processor(tmp_path).tokenizer, AutoTokenizer.from_pretrained(tmp_path)):
        assert loaded(text)["input_ids"] == expected, type(loaded).__name__
    words = processor.tokenizer.convert_ids_to_tokens(expected)
    assert "<unk>" not in words and len(expected) > 12
