"""ManagerTower data: readers of the published formats, collators, metrics and the synthetic stand-ins, checked
against hand-computed values and files written here in each task's published layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llava_manager.tower import data, metrics
from llava_manager.tower.data import synthetic


@pytest.fixture(scope="module")
def processor():
    return synthetic.tiny_tower_processor()


def _image(path: Path, colour=(200, 30, 30), size=(32, 32)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return str(path)


def _corrupt(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an image at all")


def _lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _reasons(result: data.ReadResult) -> dict[str, str]:
    return {s["id"]: s["reason"] for s in result.skipped}


# ---------------------------------------------------------------------------------------------------------------------
# Tiny tokenizer and processor


def test_tiny_tokenizer_has_roberta_special_ids_and_whole_word_tokens():
    tokenizer = synthetic.tiny_tower_tokenizer()
    ids = [tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id]
    assert ids == [0, 1, 2, 3]
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "<pad>", "</s>", "<unk>"]
    assert tokenizer.mask_token == "<mask>" and tokenizer.mask_token_id == len(tokenizer) - 1
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("A red circle on a white background.")["input_ids"])
    assert tokens == ["<s>", "A", "Ġred", "Ġcircle", "Ġon", "Ġa", "Ġwhite", "Ġbackground", ".", "</s>"]
    # Byte-level: any text encodes without <unk> and decodes back exactly.
    text = "Zebra #42 über café, naïve!"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == text


def test_tiny_processor_makes_square_crops(processor):
    import importlib.util

    from transformers import BridgeTowerImageProcessorPil

    if importlib.util.find_spec("torchvision") is None:
        assert isinstance(processor.image_processor, BridgeTowerImageProcessorPil)
    out = data.encode_images(processor, [Image.new("RGB", (50, 30)), Image.new("RGB", (32, 32))])
    assert out["pixel_values"].shape == (2, 3, 32, 32) and out["pixel_mask"].shape == (2, 32, 32)
    assert bool(out["pixel_mask"].all())
    with pytest.raises(ValueError):
        synthetic.tiny_tower_processor(image_size=30)


# ---------------------------------------------------------------------------------------------------------------------
# VQAv2


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Two", "2"),
        ("the dog.", "dog"),
        ("dont", "don't"),
        ("1,000", "1000"),
        ("yes!", "yes"),
        ("3.5", "3.5"),
        ("a man's hat", "man's hat"),
        ("left-side", "left side"),
        ("x - y", "x y"),
        ("An Apple", "apple"),
    ],
)
def test_normalize_word(answer, expected):
    assert data.normalize_word(answer) == expected


def test_answer_score_table():
    assert [data.answer_score(c) for c in range(7)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0]


def test_build_answer_vocab_counts_normalised_majority_answers_in_first_seen_order():
    records = [{"multiple_choice_answer": a} for a in ["no", "Two", "2", "yes", "no", "yes", "cat", "two."]]
    records.append({"multiple_choice_answer": None})  # a test question: ignored
    assert data.build_answer_vocab(records, min_count=2) == ["no", "2", "yes"]
    assert data.build_answer_vocab(records, min_count=3) == ["2"]


def _vqa_files(root: Path) -> tuple[Path, Path]:
    """Official-layout val2014 files: q1/q2 answerable, q3 image missing, q4 corrupt image, q5 no annotation."""
    questions = [
        {"image_id": 42, "question": "How many dogs?", "question_id": 42000},
        {"image_id": 42, "question": "What animal?", "question_id": 42001},
        {"image_id": 7, "question": "Missing image?", "question_id": 7000},
        {"image_id": 8, "question": "Corrupt image?", "question_id": 8000},
        {"image_id": 42, "question": "Not annotated?", "question_id": 42002},
    ]
    answers = {  # ten annotators each
        42000: ["two", "2", "2", "three", "3 ", "Three", "three", "four", "4", "10"],
        42001: ["dog", "dog", "a dog", "Dog.", "dogs", "cat", "the dog", "puppy", "dog!", "dog"],
        7000: ["yes"] * 10,
        8000: ["no"] * 10,
    }
    annotations = [
        {
            "question_id": q,
            "image_id": q // 1000,
            "multiple_choice_answer": a[0],
            "answer_type": "other",
            "answers": [{"answer": x, "answer_confidence": "yes", "answer_id": i + 1} for i, x in enumerate(a)],
        }
        for q, a in answers.items()
    ]
    _image(root / "val2014" / "COCO_val2014_000000000042.jpg")
    _corrupt(root / "val2014" / "COCO_val2014_000000000008.jpg")
    qpath = root / "v2_OpenEnded_mscoco_val2014_questions.json"
    qpath.write_text(json.dumps({"data_subtype": "val2014", "task_type": "Open-Ended", "questions": questions}))
    apath = root / "v2_mscoco_val2014_annotations.json"
    apath.write_text(json.dumps({"data_subtype": "val2014", "annotations": annotations}))
    return qpath, apath


def test_read_vqav2_official_layout_and_soft_targets(tmp_path, processor):
    qpath, apath = _vqa_files(tmp_path)
    result = data.read_vqav2(qpath, apath, tmp_path)
    assert [r["question_id"] for r in result.records] == [42000, 42001]
    assert _reasons(result) == {"7000": "missing image", "8000": "corrupt image", "42002": "no annotation"}
    first = result.records[0]
    assert first["image"] == str(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    # Hand count of the normalised answers: 2 x3, 3 x4, 4 x2, 10 x1; dog x7 (a dog, Dog., the dog, dog!), dogs,
    # cat, puppy x1.
    assert first["answer_counts"] == {"2": 3, "3": 4, "4": 2, "10": 1}
    assert result.records[1]["answer_counts"] == {"dog": 7, "dogs": 1, "cat": 1, "puppy": 1}

    label2ans = ["dog", "2", "3", "cat", "4"]  # "10", "dogs" and "puppy" are outside the vocabulary
    items = [data.TowerDataset(result.records)[i] for i in range(2)]
    batch = data.VQACollator(processor, label2ans=label2ans)(items)
    expected = torch.tensor(
        [
            [0.0, 0.9, 1.0, 0.0, 0.6],  # 2 by 3 annotators, 3 by 4, 4 by 2
            [1.0, 0.0, 0.0, 0.3, 0.0],
        ]
    )  # dog by 7, cat by 1
    assert torch.allclose(batch["labels"], expected)
    assert batch["labels"].dtype == torch.float32 and batch["pixel_values"].shape == (2, 3, 32, 32)
    # Predicting "2" then "cat": (0.9 + 0.3) / 2; predicting "3" then "dog": (1.0 + 1.0) / 2.
    assert metrics.vqa_score(torch.tensor([1, 3]), batch["labels"]) == pytest.approx(0.6)
    logits = torch.tensor([[0.0, 0.1, 5.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0, 0.0]])
    assert metrics.vqa_score(logits, batch["labels"], percent=True) == pytest.approx(100.0)


def test_answerable_drops_questions_without_vocabulary_answers():
    records = [{"answer_counts": {"dog": 3}}, {"answer_counts": {"puppy": 10}}, {"answer_counts": None}]
    assert data.answerable(records, ["dog"]) == [records[0], records[2]]


def test_read_vqav2_test_dev_questions_without_annotations(tmp_path, processor):
    _image(tmp_path / "test2015" / "COCO_test2015_000000000001.jpg")
    qpath = tmp_path / "v2_OpenEnded_mscoco_test-dev2015_questions.json"  # no data_subtype: taken from the name
    qpath.write_text(json.dumps({"questions": [{"image_id": 1, "question": "What is it?", "question_id": 1000}]}))
    result = data.read_vqav2(qpath, None, tmp_path)
    assert result.skipped == [] and len(result.records) == 1
    record = result.records[0]
    assert record["image"].endswith("test2015/COCO_test2015_000000000001.jpg") and record["answer_counts"] is None
    batch = data.VQACollator(processor, label2ans=["yes"])([data.TowerDataset(result.records)[0]])
    assert "labels" not in batch and batch["input_ids"].shape[0] == 1


# ---------------------------------------------------------------------------------------------------------------------
# SNLI-VE


def test_read_snli_ve(tmp_path, processor):
    images = tmp_path / "flickr30k-images"
    _image(images / "3416050480.jpg")
    rows = [
        {
            "Flickr30K_ID": "3416050480",
            "gold_label": "entailment",
            "pairID": "3416050480.jpg#4r1e",
            "sentence1": "A man on a bike.",
            "sentence2": "A person rides. ",
        },
        {
            "Flickr30K_ID": "3416050480",
            "gold_label": "contradiction",
            "pairID": "3416050480.jpg#4r1c",
            "sentence1": "A man on a bike.",
            "sentence2": "A man sleeps.",
        },
        {
            "Flickr30K_ID": "3416050480",
            "gold_label": "neutral",
            "pairID": "3416050480.jpg#4r1n",
            "sentence1": "A man on a bike.",
            "sentence2": "A man rides to work.",
        },
        {
            "Flickr30K_ID": "3416050480",
            "gold_label": "-",
            "pairID": "3416050480.jpg#4r2n",
            "sentence1": "A man on a bike.",
            "sentence2": "Undecided.",
        },
        {"Flickr30K_ID": "99", "gold_label": "neutral", "pairID": "99.jpg#0r1n", "sentence1": "x", "sentence2": "y"},
    ]
    result = data.read_snli_ve(_lines(tmp_path / "snli_ve_dev.jsonl", rows), images)
    assert [r["label"] for r in result.records] == [2, 0, 1]  # entailment 2, contradiction 0, neutral 1 (METER)
    assert result.records[0]["hypothesis"] == "A person rides."
    assert result.records[0]["image"] == str(images / "3416050480.jpg")
    assert _reasons(result) == {"3416050480.jpg#4r2n": "unknown label", "99.jpg#0r1n": "missing image"}
    batch = data.SNLIVECollator(processor)([data.TowerDataset(result.records)[i] for i in range(3)])
    assert batch["labels"].tolist() == [2, 0, 1] and batch["labels"].dtype == torch.long


# ---------------------------------------------------------------------------------------------------------------------
# NLVR2


def test_read_nlvr2_layout(tmp_path, processor):
    root = tmp_path / "nlvr"
    _image(root / "images" / "train" / "11" / "train-10171-0-img0.png", (255, 0, 0))
    _image(root / "images" / "train" / "11" / "train-10171-0-img1.png", (0, 0, 255))
    _image(root / "dev" / "dev-0-3-img0.png")
    _image(root / "dev" / "dev-0-3-img1.png")
    _image(root / "dev" / "dev-5-0-img0.png")  # its img1 is missing
    data_dir = root / "nlvr2" / "data"
    data_dir.mkdir(parents=True)
    train = _lines(
        data_dir / "train.json",
        [
            {"identifier": "train-10171-0-0", "sentence": "One image is red.", "label": "True", "directory": 11},
            {"identifier": "train-10171-0-1", "sentence": "Both are green.", "label": "False", "directory": 11},
        ],
    )
    dev = _lines(
        data_dir / "dev.json",
        [
            {"identifier": "dev-0-3-1", "sentence": "s", "label": "False"},
            {"identifier": "dev-5-0-0", "sentence": "t", "label": "True"},
        ],
    )
    result = data.read_nlvr2(train, root)
    assert result.skipped == [] and [r["label"] for r in result.records] == [1, 0]
    assert result.records[0]["images"] == [
        str(root / "images/train/11/train-10171-0-img0.png"),
        str(root / "images/train/11/train-10171-0-img1.png"),
    ]
    dev_result = data.read_nlvr2(dev, root)
    assert [r["identifier"] for r in dev_result.records] == ["dev-0-3-1"]
    assert dev_result.records[0]["images"][1] == str(root / "dev" / "dev-0-3-img1.png")
    assert _reasons(dev_result) == {"dev-5-0-0": "missing image"}

    items = [data.TowerDataset(result.records)[i] for i in range(2)]
    batch = data.NLVR2Collator(processor)(items)
    left = data.encode_images(processor, [Image.new("RGB", (32, 32), (255, 0, 0))])["pixel_values"]
    right = data.encode_images(processor, [Image.new("RGB", (32, 32), (0, 0, 255))])["pixel_values"]
    assert torch.allclose(batch["pixel_values"][0], left[0]) and torch.allclose(batch["pixel_values_2"][0], right[0])
    assert batch["pixel_mask_2"].shape == (2, 32, 32) and batch["labels"].tolist() == [1, 0]


# ---------------------------------------------------------------------------------------------------------------------
# Flickr30K (Karpathy)


def _karpathy(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "flickr30k-images"
    entries = []
    for imgid, (name, split) in enumerate(
        [
            ("10.jpg", "train"),
            ("11.jpg", "train"),
            ("12.jpg", "val"),
            ("13.jpg", "test"),
            ("14.jpg", "test"),
            ("15.jpg", "test"),
        ]
    ):
        if name != "15.jpg":
            _image(images / name)
        entries.append(
            {
                "filename": name,
                "imgid": imgid,
                "split": split,
                "sentids": list(range(5)),
                "sentences": [
                    {"raw": f"caption {k} of {name}", "tokens": [], "imgid": imgid, "sentid": k} for k in range(5)
                ],
            }
        )
    path = tmp_path / "karpathy" / "dataset_flickr30k.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    return path, images


def test_read_flickr30k_karpathy_training_pairs_and_evaluation_set(tmp_path, processor):
    path, images = _karpathy(tmp_path)
    train = data.read_flickr30k_karpathy(path, images, ("train", "val"))
    assert [r["filename"] for r in train.records] == ["10.jpg", "11.jpg", "12.jpg"] and train.skipped == []
    pairs = data.caption_pairs(train.records)
    assert len(pairs) == 15 and pairs[6] == {
        "image": str(images / "11.jpg"),
        "caption": "caption 1 of 11.jpg",
        "image_index": 1,
    }
    test = data.read_flickr30k_karpathy(path, images, "test")
    assert _reasons(test) == {"15.jpg": "missing image"}
    evaluation = data.retrieval_set(test.records)
    assert evaluation["images"] == [str(images / "13.jpg"), str(images / "14.jpg")]
    assert evaluation["texts"][5] == "caption 0 of 14.jpg" and evaluation["text_to_image"] == [0] * 5 + [1] * 5
    batch = data.RetrievalCollator(processor, return_image_ids=True)([data.TowerDataset(pairs)[i] for i in (0, 5, 6)])
    assert batch["image_ids"].tolist() == [0, 1, 1] and batch["pixel_values"].shape == (3, 3, 32, 32)
    assert set(data.RetrievalCollator(processor)([data.TowerDataset(pairs)[0]])) == {
        "input_ids",
        "attention_mask",
        "pixel_values",
        "pixel_mask",
    }


# ---------------------------------------------------------------------------------------------------------------------
# Pre-training captions, MLM and ITM


def test_read_image_captions_formats_and_skips(tmp_path):
    folder = tmp_path / "images"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _image(folder / name)
    _corrupt(folder / "bad.jpg")
    rows = [
        {"image": "a.jpg", "caption": "A red square."},
        {
            "id": "llava-1",
            "image": "b.jpg",
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "A blue circle."}],
        },
        ["c.jpg", "A green cross."],
        {"id": "gone", "image": "gone.jpg", "caption": "x"},
        {"id": "bad", "image": "bad.jpg", "caption": "x"},
        {"id": "empty", "image": "a.jpg", "caption": "  "},
    ]
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(rows))
    result = data.read_image_captions(path, folder)
    assert [r["caption"] for r in result.records] == ["A red square.", "A blue circle.", "A green cross."]
    assert result.records[1]["id"] == "llava-1" and result.records[2]["image"] == str(folder / "c.jpg")
    assert _reasons(result) == {"gone": "missing image", "bad": "corrupt image", "empty": "malformed row"}
    assert [s["index"] for s in result.skipped] == [3, 4, 5]


def test_itm_pairs_half_mismatched_with_other_images():
    generator = torch.Generator().manual_seed(0)
    keys = [f"img{i}" for i in range(8)]
    labels, order = data.itm_pairs(keys, generator)
    assert int((labels == 0).sum()) == 4  # B - B // 2, as ManagerTower's compute_itm
    for i in range(8):
        assert (order[i] == i) == bool(labels[i]) and (labels[i] == 1 or keys[order[i]] != keys[i])
    labels, order = data.itm_pairs(["same"] * 4, generator)  # no other image to draw: all matched
    assert labels.tolist() == [1, 1, 1, 1] and order == [0, 1, 2, 3]
    keys = ["a", "a", "b"]  # a sample may only be shown an image other than its own
    for seed in range(5):
        labels, order = data.itm_pairs(keys, torch.Generator().manual_seed(seed))
        assert int((labels == 0).sum()) == 2
        assert all(labels[i] == 1 or keys[order[i]] != keys[i] for i in range(3))


def _caption_items(tmp_path: Path, n: int) -> list[dict]:
    records = [
        {
            "image": _image(tmp_path / f"{i}.png", (4 * i, 255 - 3 * i, 37 * i % 256)),  # all different
            "caption": f"A red circle on a white background number {i} with some more words.",
        }
        for i in range(n)
    ]
    return [data.TowerDataset(records)[i] for i in range(n)]


def test_pretrain_collator_mlm_and_itm(tmp_path, processor):
    items = _caption_items(tmp_path, 64)
    tokenizer = processor.tokenizer
    plain = data.encode_texts(processor, [it["record"]["caption"] for it in items])
    batch = data.PretrainCollator(processor, seed=0)(items)
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "pixel_values",
        "pixel_mask",
        "mlm_input_ids",
        "mlm_labels",
        "itm_pixel_values",
        "itm_pixel_mask",
        "itm_labels",
    }
    ids, labels, itm = plain["input_ids"], batch["mlm_labels"], batch["itm_labels"]
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    assert torch.equal(batch["attention_mask"], plain["attention_mask"])
    assert torch.equal(batch["input_ids"], ids)  # ITM's text is not masked
    assert bool((labels[special] == -100).all())  # <s>, </s> and padding are never targets
    assert bool((batch["mlm_input_ids"][special] == ids[special]).all())
    targets = labels != -100
    assert torch.equal(labels[targets], ids[targets])  # a target is the original token
    assert abs(targets[~special].float().mean().item() - 0.15) < 0.03
    # Images: MLM sees every caption's own image; ITM's mismatched samples show another one.
    own = data.encode_images(processor, [it["images"][0] for it in items])["pixel_values"]
    assert torch.equal(batch["pixel_values"], own)
    same = (batch["itm_pixel_values"] - own).abs().flatten(1).amax(1) < 1e-6
    assert torch.equal(same, itm == 1) and int((itm == 0).sum()) == 32
    # Reproducible for a seed, different for another.
    again = data.PretrainCollator(processor, seed=0)(items)
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    other = data.PretrainCollator(processor, seed=1)(items)
    assert not torch.equal(batch["mlm_input_ids"], other["mlm_input_ids"])


def test_pretrain_collator_80_10_10_replacement(tmp_path, processor):
    items = _caption_items(tmp_path, 64)
    ids = data.encode_texts(processor, [it["record"]["caption"] for it in items])["input_ids"]
    batch = data.PretrainCollator(processor, mlm_probability=1.0, itm=False, seed=0)(items)
    assert "itm_labels" not in batch
    targets = batch["mlm_labels"] != -100
    special = torch.isin(ids, torch.tensor(processor.tokenizer.all_special_ids))
    assert torch.equal(targets, ~special)  # probability 1: every text token
    masked = (batch["mlm_input_ids"][targets] == processor.tokenizer.mask_token_id).float().mean().item()
    kept = (batch["mlm_input_ids"][targets] == ids[targets]).float().mean().item()
    assert abs(masked - 0.8) < 0.05 and abs(kept - 0.1) < 0.05


def test_text_length_is_capped(tmp_path, processor):
    record = {"image": _image(tmp_path / "x.png"), "hypothesis": "red " * 200, "label": 1}
    item = data.TowerDataset([record])[0]
    batch = data.SNLIVECollator(processor)([item])
    assert batch["input_ids"].shape == (1, 50) and batch["input_ids"][0, -1] == processor.tokenizer.eos_token_id
    assert data.SNLIVECollator(processor, max_length=12)([item])["input_ids"].shape == (1, 12)


def test_dataset_skips_images_that_fail_to_decode(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.jpg"
    full = Path(good).read_bytes()
    truncated.write_bytes(full[: len(full) // 2])
    path = tmp_path / "captions.json"
    path.write_text(json.dumps([{"image": "truncated.jpg", "caption": "a"}, {"image": "good.jpg", "caption": "b"}]))
    assert len(data.read_image_captions(path, tmp_path).records) == 2  # the header reads
    decoded = data.read_image_captions(path, tmp_path, check_images="decode")
    assert [r["caption"] for r in decoded.records] == ["b"] and decoded.skipped[0]["reason"] == "corrupt image"
    dataset = data.TowerDataset(data.read_image_captions(path, tmp_path).records)
    assert dataset[0]["record"]["caption"] == "b" and dataset.skipped[0]["reason"] == "corrupt image"
    with pytest.raises(Exception, match="corrupt image"):
        data.TowerDataset(dataset.records, strict=True)[0]


# ---------------------------------------------------------------------------------------------------------------------
# Metrics


def test_accuracy_ignores_minus_100():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert metrics.accuracy(logits, torch.tensor([1, 1, -100, 0])) == pytest.approx(2 / 3)
    assert metrics.accuracy(torch.tensor([2, 0, 1]), torch.tensor([2, 1, 1]), percent=True) == pytest.approx(200 / 3)
    assert math.isnan(metrics.accuracy(torch.tensor([1]), torch.tensor([-100])))


def test_retrieval_recall_on_a_hand_built_matrix():
    # 3 images x 6 texts, texts 2i and 2i+1 describe image i.
    sim = torch.tensor(
        [
            [0.9, 0.5, 0.8, 0.2, 0.3, 0.0],
            [0.5, 0.4, 0.1, 0.3, 0.6, 0.2],
            [0.2, 0.6, 0.3, 0.1, 0.05, 0.9],
        ]
    )
    out = metrics.retrieval_recall(sim, [0, 0, 1, 1, 2, 2], ks=(1, 2, 4))
    # TR (per image): image 0's best text is its own; image 1's top texts are 4, 0, 1, 3 (its own 4th);
    # image 2's best is its own text 5.
    assert out["tr_r1"] == pytest.approx(2 / 3) and out["tr_r2"] == pytest.approx(2 / 3) and out["tr_r4"] == 1.0
    # IR (per text): texts 0, 3, 5 rank their image first; text 1 second (after image 2); texts 2 and 4 third.
    assert out["ir_r1"] == pytest.approx(3 / 6) and out["ir_r2"] == pytest.approx(4 / 6) and out["ir_r4"] == 1.0
    assert out["ir_mean"] == pytest.approx((0.5 + 4 / 6 + 1) / 3)
    assert out["tr_mean"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert out["r_mean"] == pytest.approx((out["ir_mean"] + out["tr_mean"]) / 2)
    assert metrics.retrieval_recall(sim, [0, 0, 1, 1, 2, 2], percent=True)["ir_r10"] == pytest.approx(100.0)
    with pytest.raises(ValueError):
        metrics.retrieval_recall(sim, [0, 1, 2])


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic stand-ins


def _shape_colour(path: str) -> str:
    """The synthetic colour nearest to the mean of the pixels unlike the corner (background) pixel."""
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=float)
    shape = np.abs(pixels - pixels[0, 0]).sum(-1) > 90
    mean = pixels[shape].mean(0)
    return min(synthetic.COLOURS, key=lambda c: np.abs(mean - np.array(synthetic.COLOURS[c])).sum())


def test_synthetic_sets_read_back_through_the_readers(tmp_path, processor):
    paths = {task: synthetic.write_synthetic(tmp_path / task, task, n=8, seed=0) for task in synthetic.TASKS}
    results = {
        "pretrain": [data.read_image_captions(paths["pretrain"]["annotations"], paths["pretrain"]["image_folder"])],
        "vqav2": [
            data.read_vqav2(
                paths["vqav2"]["train_questions"], paths["vqav2"]["train_annotations"], paths["vqav2"]["root"]
            ),
            data.read_vqav2(paths["vqav2"]["val_questions"], paths["vqav2"]["val_annotations"], paths["vqav2"]["root"]),
            data.read_vqav2(paths["vqav2"]["test_dev_questions"], None, paths["vqav2"]["root"]),
        ],
        "snli_ve": [
            data.read_snli_ve(paths["snli_ve"][s], paths["snli_ve"]["image_folder"]) for s in ("train", "dev", "test")
        ],
        "nlvr2": [data.read_nlvr2(paths["nlvr2"][s], paths["nlvr2"]["root"]) for s in ("train", "dev", "test1")],
        "flickr30k": [
            data.read_flickr30k_karpathy(paths["flickr30k"]["annotations"], paths["flickr30k"]["image_folder"], s)
            for s in ("train", "val", "test")
        ],
    }
    sizes = {task: [len(r.records) for r in rs] for task, rs in results.items()}
    assert sizes == {
        "pretrain": [8],
        "vqav2": [16, 8, 8],
        "snli_ve": [24, 12, 12],
        "nlvr2": [8, 4, 4],
        "flickr30k": [8, 4, 4],
    }
    assert all(r.skipped == [] for rs in results.values() for r in rs)
    assert {r["split"] for r in results["vqav2"][2].records} == {"test-dev2015"}
    assert {r["label"] for r in results["snli_ve"][0].records} == {0, 1, 2}
    assert {r["label"] for rs in results["nlvr2"] for r in rs.records} == {0, 1}
    # The text is about the image: each caption names the colour drawn.
    for record in results["pretrain"][0].records:
        assert (
            _shape_colour(record["image"]) in record["caption"].split()
            or f"{_shape_colour(record['image'])}." in record["caption"].split()
        )
    # Every synthetic word is one token.
    tokenizer = processor.tokenizer
    for record in results["flickr30k"][0].records:
        for caption in record["captions"]:
            tokens = tokenizer.tokenize(caption)
            assert len(tokens) == len(caption.replace(".", " .").split())
    # A vocabulary, targets and batches for each task.
    label2ans = data.build_answer_vocab(results["vqav2"][0].records + results["vqav2"][1].records, min_count=1)
    assert set(label2ans) <= set(synthetic.COLOURS) | set(synthetic.SHAPES) | set(synthetic.BACKGROUNDS) | {"yes", "no"}
    collators = {
        "pretrain": data.PretrainCollator(processor),
        "vqav2": data.VQACollator(processor, label2ans=label2ans),
        "snli_ve": data.SNLIVECollator(processor),
        "nlvr2": data.NLVR2Collator(processor),
    }
    for task, collate in collators.items():
        dataset = data.TowerDataset(results[task][0].records)
        batch = collate([dataset[i] for i in range(4)])
        assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["input_ids"].shape[0] == 4


def test_synthetic_is_deterministic(tmp_path):
    for task in synthetic.TASKS:
        one, two = tmp_path / "a" / task, tmp_path / "b" / task
        a = synthetic.write_synthetic(one, task, n=6, seed=3)
        b = synthetic.write_synthetic(two, task, n=6, seed=3)
        files_a = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
        files_b = sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
        assert files_a == files_b and len(files_a) > 0
        for rel in files_a:
            assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel
        assert set(a) == set(b)
    with pytest.raises(ValueError):
        synthetic.write_synthetic(tmp_path, "coco")
