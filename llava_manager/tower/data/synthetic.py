"""Tiny offline stand-ins for ManagerTower's data: a tiny BridgeTower processor and synthetic data sets written in the
published layout of each task, so that the readers of `tower.data` read them exactly as they read the real files.

- `tiny_tower_tokenizer()`: a `RobertaTokenizer` over a small byte-level BPE vocabulary built here (no download):
  the roberta-base special tokens at their real ids (`<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, `<mask>` last), the
  256 byte-level symbols (so any text encodes, losslessly), and merges that make each word of the synthetic data one
  token (with and without the leading-space marker `Ġ`; capitalised sentence starters also without it).
- `tiny_tower_processor(image_size=32)`: `BridgeTowerProcessor(image_processor, tiny_tower_tokenizer())`, the image
  processor resizing the shorter side to `image_size` and centre-cropping to `image_size` square (the torchvision-
  free `BridgeTowerImageProcessorPil` when torchvision is missing).
- `write_synthetic(folder, task, n, seed)`: coloured shapes (circle, square, triangle, cross in red, green, blue or
  yellow on a white, black or grey background; colours and positions jitter a little) with text that needs the image:
  captions ("pretrain", "flickr30k"), questions ("vqav2"), hypotheses ("snli_ve") and two-image statements
  ("nlvr2"). Deterministic for a seed; tens of tiny images, well under a second.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle", "cross")
BACKGROUNDS = {"white": (250, 250, 250), "black": (10, 10, 10), "grey": (128, 128, 128)}
IMAGE_SIZE = 32  # px, the side of every synthetic image and of the tiny processor's crop
TASKS = ("pretrain", "vqav2", "snli_ve", "nlvr2", "flickr30k")

CAPTIONS = (  # pretraining and Flickr30K captions; Flickr30K images get all five
    "A {colour} {shape} on a {background} background.",
    "There is a {colour} {shape} in the picture.",
    "A picture of a {colour} {shape}.",
    "The {shape} is {colour}.",
    "A {shape} coloured {colour} on {background}.",
)
VQA_QUESTIONS = {  # question -> the fact that answers it; "yes/no" asks about a colour
    "What colour is the shape?": "colour",
    "What shape is in the picture?": "shape",
    "What colour is the background?": "background",
    "Is the shape {ask}?": "yes/no",
}
SNLI_HYPOTHESES = {
    "entailment": ("There is a {colour} shape.", "The picture shows a {shape}."),
    "contradiction": ("There is a {other_colour} shape.", "The picture shows a {other_shape}."),
    "neutral": ("The {shape} was drawn by a child.", "The {colour} shape is made of paper."),
}
NLVR2_SENTENCES = (
    "The left image shows a {colour} shape.",
    "The right image shows a {colour} shape.",
    "Both images show a {shape}.",
)
ANSWER_WORDS = ("yes", "no")
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # roberta-base ids 0..3; "<mask>" is the last id, as there


# ---------------------------------------------------------------------------------------------------------------------
# Tiny tokenizer and processor


def vocabulary() -> list[str]:
    """Every word of the synthetic texts (template words as written, colours, shapes, backgrounds, answers)."""
    templates = list(CAPTIONS) + list(VQA_QUESTIONS) + [h for hs in SNLI_HYPOTHESES.values() for h in hs]
    templates += list(NLVR2_SENTENCES)
    words = {w for t in templates for w in re.findall(r"[A-Za-z]+", re.sub(r"\{\w+\}", " ", t))}
    words |= set(COLOURS) | set(SHAPES) | set(BACKGROUNDS) | set(ANSWER_WORDS)
    return sorted(words)


def _byte_level_bpe(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a byte-level BPE in which each of `words` is one token. A word is built left to right
    (merge (prefix, next character)); all `Ġ` merges rank before all others, and the unprefixed words are the
    capitalised ones only, so in a word only the pair at its start can merge and every chain completes."""
    from tokenizers import pre_tokenizers

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    merges: list[tuple[str, str]] = []

    def chain(word: str) -> None:
        for end in range(2, len(word) + 1):
            if word[:end] not in vocab:
                vocab[word[:end]] = len(vocab)
                merges.append((word[: end - 1], word[end - 1]))

    for word in words:
        chain("Ġ" + word)
    for word in words:
        if word[0].isupper():
            chain(word)
    vocab["<mask>"] = len(vocab)
    return vocab, merges


def tiny_tower_tokenizer():
    """A `RobertaTokenizer` (tokenizers backend) made offline; see the module doc. `len(tokenizer)` is the
    `vocab_size` a tiny model needs."""
    from transformers import RobertaTokenizer

    vocab, merges = _byte_level_bpe(vocabulary())
    return RobertaTokenizer(vocab=vocab, merges=merges)


def _image_processor_class():
    """transformers' default `BridgeTowerImageProcessor` when torchvision is installed, else the PIL backend."""
    import importlib.util

    import transformers

    if importlib.util.find_spec("torchvision") is not None:
        return transformers.BridgeTowerImageProcessor
    return transformers.BridgeTowerImageProcessorPil


def tiny_tower_processor(image_size: int = IMAGE_SIZE):
    """`BridgeTowerProcessor` of `tiny_tower_tokenizer()` and an image processor giving `image_size` px square
    crops (shorter side resized to `image_size`, sizes a multiple of 32 as BridgeTower's `size_divisor`)."""
    from transformers import BridgeTowerProcessor

    if image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32 (BridgeTower's size_divisor), got {image_size}")
    image_processor = _image_processor_class()(
        size={"shortest_edge": image_size}, crop_size={"shortest_edge": image_size}
    )
    return BridgeTowerProcessor(image_processor=image_processor, tokenizer=tiny_tower_tokenizer())


# ---------------------------------------------------------------------------------------------------------------------
# Images


def _jitter(rng: random.Random, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-amount, amount))) for c in rgb)


def draw(facts: dict[str, str], rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """A `facts["colour"]` `facts["shape"]` on a `facts["background"]` square of `size` px; colours, size and
    position jitter a little with `rng`."""
    fill = _jitter(rng, COLOURS[facts["colour"]], 20)
    image = Image.new("RGB", (size, size), _jitter(rng, BACKGROUNDS[facts["background"]], 10))
    r = size // 4 + rng.randint(-1, 2)
    cx, cy = size // 2 + rng.randint(-3, 3), size // 2 + rng.randint(-3, 3)
    pen = ImageDraw.Draw(image)
    if facts["shape"] == "circle":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif facts["shape"] == "square":
        pen.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif facts["shape"] == "triangle":
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        pen.rectangle((cx - r, cy - r // 3, cx + r, cy + r // 3), fill=fill)
        pen.rectangle((cx - r // 3, cy - r, cx + r // 3, cy + r), fill=fill)
    return image


def random_facts(rng: random.Random) -> dict[str, str]:
    return {
        "colour": rng.choice(list(COLOURS)),
        "shape": rng.choice(SHAPES),
        "background": rng.choice(list(BACKGROUNDS)),
    }


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=95) if path.suffix == ".jpg" else image.save(path)


def _other(rng: random.Random, choices, value: str) -> str:
    return rng.choice([c for c in choices if c != value])


def _split_sizes(n: int) -> tuple[int, int]:
    """(training size, size of each evaluation split)."""
    return n, max(4, n // 4)


# ---------------------------------------------------------------------------------------------------------------------
# Writers, one per task


def _write_pretrain(folder: Path, n: int, rng: random.Random) -> dict[str, Path]:
    """`captions.json`: a list of {"image": file name, "caption"}, and `images/`."""
    rows = []
    for i in range(n):
        facts = random_facts(rng)
        name = f"{i:05d}.jpg"
        _save(draw(facts, rng), folder / "images" / name)
        rows.append({"image": name, "caption": rng.choice(CAPTIONS[:3]).format(**facts)})
    (folder / "captions.json").write_text(json.dumps(rows, indent=1))
    return {"annotations": folder / "captions.json", "image_folder": folder / "images"}


def _vqa_question(rng: random.Random, facts: dict[str, str]) -> tuple[str, str, str]:
    """(question, true answer, answer type)."""
    question, fact = rng.choice(list(VQA_QUESTIONS.items()))
    if fact != "yes/no":
        return question, facts[fact], "other"
    ask = facts["colour"] if rng.random() < 0.5 else _other(rng, COLOURS, facts["colour"])
    return question.format(ask=ask), "yes" if ask == facts["colour"] else "no", "yes/no"


def _vqa_answers(rng: random.Random, truth: str, kind: str) -> list[str]:
    """Ten annotators' answers: most say `truth`, a few another answer of the same kind."""
    pool = {"yes/no": ANSWER_WORDS}.get(kind) or [*COLOURS, *SHAPES, *BACKGROUNDS]
    wrong = rng.randint(0, 3)
    answers = [truth] * (10 - wrong) + [_other(rng, pool, truth) for _ in range(wrong)]
    rng.shuffle(answers)
    return answers


def _write_vqav2(folder: Path, n: int, rng: random.Random) -> dict[str, Path]:
    """The official VQAv2 files (questions with `data_subtype`, annotations with 10 answers each) and COCO-named
    images `{subtype}/COCO_{subtype}_{image_id:012d}.jpg`; test-dev questions use `test2015` images."""
    n_train, n_eval = _split_sizes(n)
    paths: dict[str, Path] = {"root": folder}
    image_id = 9
    for key, subtype, images_in, count in (
        ("train", "train2014", "train2014", n_train),
        ("val", "val2014", "val2014", n_eval),
        ("test_dev", "test-dev2015", "test2015", n_eval),
    ):
        questions, annotations = [], []
        for _ in range(count):
            image_id += rng.randint(1, 5)
            facts = random_facts(rng)
            _save(draw(facts, rng), folder / images_in / f"COCO_{images_in}_{image_id:012d}.jpg")
            for k in range(2):
                question, truth, kind = _vqa_question(rng, facts)
                qid = image_id * 1000 + k  # the official question_id convention
                questions.append({"image_id": image_id, "question": question, "question_id": qid})
                answers = _vqa_answers(rng, truth, kind)
                annotations.append(
                    {
                        "question_type": " ".join(question.lower().split()[:3]),
                        "answer_type": kind,
                        "multiple_choice_answer": Counter(answers).most_common(1)[0][0],
                        "answers": [
                            {"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(answers)
                        ],
                        "image_id": image_id,
                        "question_id": qid,
                    }
                )
        common = {
            "info": {"description": "synthetic stand-in"},
            "license": {},
            "data_type": "mscoco",
            "data_subtype": subtype,
        }
        paths[f"{key}_questions"] = folder / f"v2_OpenEnded_mscoco_{subtype}_questions.json"
        paths[f"{key}_questions"].write_text(json.dumps({**common, "task_type": "Open-Ended", "questions": questions}))
        if key != "test_dev":  # test questions are published without annotations
            paths[f"{key}_annotations"] = folder / f"v2_mscoco_{subtype}_annotations.json"
            paths[f"{key}_annotations"].write_text(json.dumps({**common, "annotations": annotations}))
    return paths


def _snli_row(rng: random.Random, flickr_id: str, facts: dict[str, str], k: int) -> dict:
    label = ("entailment", "neutral", "contradiction")[k % 3]
    hypothesis = rng.choice(SNLI_HYPOTHESES[label]).format(
        **facts, other_colour=_other(rng, COLOURS, facts["colour"]), other_shape=_other(rng, SHAPES, facts["shape"])
    )
    return {
        "Flickr30K_ID": flickr_id,
        "annotator_labels": [label],
        "captionID": f"{flickr_id}.jpg#{k % 5}",
        "gold_label": label,
        "pairID": f"{flickr_id}.jpg#{k % 5}r1{label[0]}",
        "sentence1": CAPTIONS[k % 5].format(**facts),
        "sentence2": hypothesis,
    }


def _write_snli_ve(folder: Path, n: int, rng: random.Random) -> dict[str, Path]:
    """`snli_ve_{train,dev,test}.jsonl` (SNLI rows plus `Flickr30K_ID`, keys sorted as the SNLI-VE generator writes
    them) and `flickr30k-images/{Flickr30K_ID}.jpg`; three hypotheses per image, one of each label."""
    n_train, n_eval = _split_sizes(n)
    paths: dict[str, Path] = {"image_folder": folder / "flickr30k-images"}
    flickr_id = 1000092795
    for split, count in (("train", n_train), ("dev", n_eval), ("test", n_eval)):
        lines = []
        for _ in range(count):
            flickr_id += rng.randint(1, 999)
            facts = random_facts(rng)
            _save(draw(facts, rng), paths["image_folder"] / f"{flickr_id}.jpg")
            lines += [json.dumps(_snli_row(rng, str(flickr_id), facts, k), sort_keys=True) for k in range(3)]
        paths[split] = folder / f"snli_ve_{split}.jsonl"
        paths[split].write_text("\n".join(lines) + "\n")
    return paths


def _nlvr2_sentence(rng: random.Random, left: dict[str, str], right: dict[str, str]) -> tuple[str, bool]:
    template = rng.choice(NLVR2_SENTENCES)
    if "Both" in template:
        shape = left["shape"] if rng.random() < 0.5 else rng.choice(SHAPES)
        return template.format(shape=shape), left["shape"] == shape == right["shape"]
    side = left if "left" in template else right
    colour = side["colour"] if rng.random() < 0.5 else _other(rng, COLOURS, side["colour"])
    return template.format(colour=colour), side["colour"] == colour


def _write_nlvr2(folder: Path, n: int, rng: random.Random) -> dict[str, Path]:
    """The lil-lab/nlvr layout: `nlvr2/data/{train,dev,test1}.json` (JSON lines; train rows carry `directory`),
    images `images/train/{directory}/{split}-{set}-{pair}-img{0,1}.png`, `dev/...png`, `test1/...png`; two
    sentences per image pair (identifier suffixes -0 and -1)."""
    n_train, n_eval = _split_sizes(n)
    paths: dict[str, Path] = {"root": folder}
    for split, count in (("train", n_train), ("dev", n_eval), ("test1", n_eval)):
        lines = []
        for i in range((count + 1) // 2):
            set_id, pair_id = 100 + i, rng.randint(0, 3)
            directory = set_id % 7
            stem = f"{split}-{set_id}-{pair_id}"
            where = folder / "images" / "train" / str(directory) if split == "train" else folder / split
            left, right = random_facts(rng), random_facts(rng)
            _save(draw(left, rng), where / f"{stem}-img0.png")
            _save(draw(right, rng), where / f"{stem}-img1.png")
            for sentence_id in range(2):
                sentence, truth = _nlvr2_sentence(rng, left, right)
                row = {
                    "validation": {"0": str(truth)},
                    "sentence": sentence,
                    "left_url": f"https://example.invalid/{stem}-0.jpg",
                    "writer": "0",
                    "label": str(truth),
                    "right_url": f"https://example.invalid/{stem}-1.jpg",
                    "synset": "shape",
                    "query": f"shapes{set_id}",
                    "identifier": f"{stem}-{sentence_id}",
                }
                if split == "train":
                    row["directory"] = directory
                else:
                    row["extra_validations"] = {"1": str(truth)}
                lines.append(json.dumps(row))
        paths[split] = folder / "nlvr2" / "data" / f"{split}.json"
        paths[split].parent.mkdir(parents=True, exist_ok=True)
        paths[split].write_text("\n".join(lines) + "\n")
    return paths


def _write_flickr30k(folder: Path, n: int, rng: random.Random) -> dict[str, Path]:
    """Karpathy's `karpathy/dataset_flickr30k.json` ({"images": [{"filename", "imgid", "split", "sentids",
    "sentences": [{"raw", "tokens", "imgid", "sentid"}] x5}], "dataset": "flickr30k"}) and `flickr30k-images/`."""
    n_train, n_eval = _split_sizes(n)
    images, sentid, flickr_id = [], 0, 1000092795
    for split, count in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        for _ in range(count):
            flickr_id += rng.randint(1, 999)
            facts = random_facts(rng)
            filename = f"{flickr_id}.jpg"
            _save(draw(facts, rng), folder / "flickr30k-images" / filename)
            imgid = len(images)
            sentences = []
            for template in CAPTIONS:
                raw = template.format(**facts)
                tokens = re.findall(r"[a-z]+", raw.lower())
                sentences.append({"tokens": tokens, "raw": raw, "imgid": imgid, "sentid": sentid})
                sentid += 1
            images.append(
                {
                    "sentids": [s["sentid"] for s in sentences],
                    "imgid": imgid,
                    "sentences": sentences,
                    "split": split,
                    "filename": filename,
                }
            )
    path = folder / "karpathy" / "dataset_flickr30k.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return {"annotations": path, "image_folder": folder / "flickr30k-images"}


WRITERS = {
    "pretrain": _write_pretrain,
    "vqav2": _write_vqav2,
    "snli_ve": _write_snli_ve,
    "nlvr2": _write_nlvr2,
    "flickr30k": _write_flickr30k,
}


def write_synthetic(folder: str | Path, task: str, n: int = 32, seed: int = 0) -> dict[str, Path]:
    """Write a synthetic `task` data set (one of `TASKS`) under `folder` in the task's published layout and return
    the paths the readers of `tower.data` take:

    - "pretrain": {"annotations": captions.json, "image_folder"} -> `read_image_captions(annotations, image_folder)`
    - "vqav2": {"root", "train_questions", "train_annotations", "val_questions", "val_annotations",
      "test_dev_questions"} -> `read_vqav2(questions, annotations, root)`; two questions per image
    - "snli_ve": {"image_folder", "train", "dev", "test"} -> `read_snli_ve(path, image_folder)`
    - "nlvr2": {"root", "train", "dev", "test1"} -> `read_nlvr2(path, root)`
    - "flickr30k": {"annotations", "image_folder"} -> `read_flickr30k_karpathy(annotations, image_folder, splits)`

    `n` is the number of training images (for NLVR2: of training sentences, two per image pair, rounded up to
    even); each evaluation split has max(4, n // 4). Deterministic for a given `seed`."""
    if task not in WRITERS:
        raise ValueError(f"unknown task {task!r}; one of {TASKS}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return WRITERS[task](folder, n, random.Random(f"{task}-{seed}"))
