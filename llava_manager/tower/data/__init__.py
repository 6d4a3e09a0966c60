"""ManagerTower's data: readers of the pre-training and fine-tuning formats as the tasks publish them, returning plain
records, and a torch `Dataset` with one collator per task that makes BridgeTower model inputs with a
`BridgeTowerProcessor`.

Readers (each returns `ReadResult(records, skipped)`; a row whose image is missing or unreadable, or that cannot be
used for another stated reason, is left out and listed in `skipped` as {"index", "id", "reason", "detail"}, and the
count is logged, never dropped silently):

- `read_image_captions(annotations, image_folder)`: pre-training image-caption JSON.
- `read_vqav2(questions, annotations, image_root)`: the official VQAv2 question / annotation JSON and COCO images.
- `read_snli_ve(jsonl, image_folder)`: SNLI-VE JSON lines and Flickr30K images.
- `read_nlvr2(json_lines, root)`: NLVR2 JSON lines and the image-pair layout of the lil-lab/nlvr download.
- `read_flickr30k_karpathy(dataset_json, image_folder, splits)`: Karpathy's `dataset_flickr30k.json`.

The facts on each format come from the data-preparation scripts of ManagerTower (github.com/LooperXX/ManagerTower,
`src/utils/write_*.py`, which follow METER and ViLT's `vilt/utils/write_*.py`, github.com/dandelin/ViLT, with its
`DATA.md` for the folder layouts) and from the data sets' own repositories; each reader cites its sources.

Images are decoded by `processing.images.open_image` (EXIF orientation, any mode to RGB). A reader checks that each
image exists and that PIL can read its header (`check_images="open"`; "exists" only stats the file, "decode" decodes
it all); an image that still fails to decode when a batch is made is skipped by `TowerDataset` (logged, listed in
`dataset.skipped`), or raises with `strict=True`.

Collators (model inputs: `input_ids`, `attention_mask` from the tokenizer, at most `max_length` = 50 tokens,
truncated; `pixel_values`, `pixel_mask` from the image processor):

- `PretrainCollator`: the caption and its image, + `mlm_input_ids` / `mlm_labels` (masked-language-modelling
  inputs and targets) and `itm_pixel_values` / `itm_pixel_mask` / `itm_labels` (1 = the caption's own image,
  0 = another sample's image).
- `VQACollator`: + `labels`, float soft scores over the answer vocabulary (BCE targets); none for test questions.
- `SNLIVECollator`: + `labels` (contradiction 0, neutral 1, entailment 2).
- `NLVR2Collator`: the left image as `pixel_values` / `pixel_mask`, the right as `pixel_values_2` / `pixel_mask_2`,
  + `labels` (1 = True).
- `RetrievalCollator`: image-caption pairs only (+ `image_ids` on request).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..processing.images import ImageError, open_image

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
MAX_TEXT_LENGTH = 50  # ManagerTower's fine-tuning configs use max_text_len 50 (src/config.py; 40 for some tasks)
CHECKS = ("exists", "open", "decode")


class ReadResult(NamedTuple):
    """What a reader returns: the usable records, and one {"index", "id", "reason", "detail"} per row left out."""

    records: list[dict]
    skipped: list[dict]


# ---------------------------------------------------------------------------------------------------------------------
# Shared helpers of the readers


def image_problem(path: str | Path, check: str = "open") -> tuple[str, str] | None:
    """None if the image at `path` is usable as far as `check` tells ("exists": the file is there; "open": and PIL
    reads its header; "decode": and it decodes), else (reason, detail) with reason "missing image",
    "corrupt image" or "unsupported image" (the categories of `processing.images.open_image`)."""
    if check not in CHECKS:
        raise ValueError(f"check_images must be one of {CHECKS}, got {check!r}")
    path = Path(path)
    if not path.is_file():
        return "missing image", str(path)
    try:
        if check == "decode":
            open_image(path)
        elif check == "open":
            with Image.open(path):
                pass
    except ImageError as error:
        return error.reason, error.detail
    except Exception as error:  # PIL raises many types for a file that is not an image
        return "corrupt image", f"{path}: {error}"
    return None


class _Rows:
    """Collects records and skipped rows of one reader, checking each image once."""

    def __init__(self, source: str | Path, check_images: str) -> None:
        self.source, self.check = str(source), check_images
        self.records: list[dict] = []
        self.skipped: list[dict] = []
        self._checked: dict[Path, tuple[str, str] | None] = {}

    def skip(self, index: int, row_id: Any, reason: str, detail: str) -> None:
        self.skipped.append({"index": index, "id": str(row_id), "reason": reason, "detail": detail})

    def images_ok(self, index: int, row_id: Any, paths: list[Path]) -> bool:
        """True if every image in `paths` is usable; else the row is recorded as skipped."""
        for path in paths:
            if path not in self._checked:
                self._checked[path] = image_problem(path, self.check)
            if self._checked[path] is not None:
                self.skip(index, row_id, *self._checked[path])
                return False
        return True

    def result(self) -> ReadResult:
        if self.skipped:
            reasons = Counter(s["reason"] for s in self.skipped)
            logger.warning("%s: skipped %d of %d rows (%s)", self.source, len(self.skipped),
                           len(self.skipped) + len(self.records), dict(reasons))
        return ReadResult(self.records, self.skipped)


def _json_lines(path: str | Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------------------------------------------------
# Pre-training: image-caption JSON


def _caption_of(row: Any) -> tuple[str | None, str | None]:
    """(image, caption) of one pre-training row: {"image", "caption"}; a LLaVA caption row {"image",
    "conversations"} (the first "gpt" turn, as LLaVA's own caption data has it); or an [image, caption] pair (the
    `(image_file_path, caption)` tuples of ViLT's GCC / SBU `*_annot.json`, ViLT DATA.md)."""
    if isinstance(row, (list, tuple)) and len(row) == 2:
        return row[0], row[1]
    if not isinstance(row, dict):
        return None, None
    if "caption" in row:
        return row.get("image"), row["caption"]
    turns = [t.get("value") for t in row.get("conversations") or () if t.get("from") in ("gpt", "assistant")]
    return row.get("image"), (turns[0] if turns else None)


def read_image_captions(annotations: str | Path, image_folder: str | Path,
                        check_images: str = "open") -> ReadResult:
    """Image-caption pairs for pre-training (MLM + ITM) from a JSON list (or JSON lines) of {"image": path relative
    to `image_folder`, "caption": str}; LLaVA-style {"image", "conversations"} rows and [image, caption] pairs are
    read too (see `_caption_of`). Records: {"id", "image" (absolute path), "caption"}."""
    path = Path(annotations)
    rows = _json_lines(path) if path.suffix == ".jsonl" else json.loads(path.read_text())
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of image-caption rows, got {type(rows).__name__}")
    out = _Rows(path, check_images)
    for i, row in enumerate(rows):
        image, caption = _caption_of(row)
        row_id = row.get("id", i) if isinstance(row, dict) else i
        if not image or not isinstance(caption, str) or not caption.replace("<image>", "").strip():
            out.skip(i, row_id, "malformed row", "no image or no caption")
            continue
        image_path = Path(image_folder) / image
        if out.images_ok(i, row_id, [image_path]):
            out.records.append({"id": str(row_id), "image": str(image_path),
                                "caption": caption.replace("<image>", "").strip()})
    return out.result()


# ---------------------------------------------------------------------------------------------------------------------
# VQAv2
#
# Answer normalisation, per-answer soft score and the answer vocabulary as in ManagerTower's
# src/utils/write_vqa.py with `fix_answer_normalization=True` (the "_fix" tables its VQAv2 fine-tuning reads,
# src/datasets/vqav2_dataset.py), itself METER's / ViLT's vilt/utils/write_vqa.py with the annotators' answers
# normalised as the most common answers are. `normalize_word` is src/utils/glossary.py of ManagerTower (identical to
# ViLT's vilt/utils/glossary.py), the answer processing of the official VQA evaluation (vqaEval.py).

# Contractions of the official VQA evaluation, as "written=normalised" (looked up after lower-casing, so the
# capitalised keys never match; kept as published).
CONTRACTIONS = dict(pair.split("=", 1) for pair in """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've hadn'tve=hadn't've
hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd howll=how'll hows=how's
Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd itd've=it'd've it'dve=it'd've itll=it'll
let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've mightn'tve=mightn't've mightve=might've
mustnt=mustn't mustve=must've neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at
'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's
someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll someones=someone's
somethingd=something'd somethingd've=something'd've something'dve=something'd've somethingll=something'll
thats=that's thered=there'd thered've=there'd've there'dve=there'd've therere=there're theres=there's
theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas
wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll whatre=what're whats=what's
whatve=what've whens=when's whered=where'd wheres=where's whereve=where've whod=who'd whod've=who'd've
who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're whys=why's wont=won't
wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll
y'allll=y'all'll yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
you'dve=you'd've youll=you'll youre=you're youve=you've
""".split())
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
               "!")
# As published: "(?!<=\d)" is a negative look-ahead (a typo for a look-behind), so a period is dropped unless a
# digit follows it; `re.sub` gets re.UNICODE (32) as its count argument there, i.e. at most 32 periods go.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalize_word(answer: str) -> str:
    """A VQA answer normalised as ViLT / METER / ManagerTower's `glossary.normalize_word` (the official VQA
    evaluation's processing): punctuation removed (next to a space, or anywhere when a digit-comma-digit occurs) or
    replaced by a space; periods not followed by a digit removed; lower-cased; number words to digits; articles
    dropped; contractions given their apostrophes; commas removed."""
    text = answer
    for p in PUNCTUATION:
        if p + " " in answer or " " + p in answer or COMMA_STRIP.search(answer) is not None:
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    text = PERIOD_STRIP.sub("", text, count=re.UNICODE)
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words).replace(",", "")


def answer_score(count: int) -> float:
    """Soft score of an answer given by `count` of the 10 annotators: write_vqa.py's `get_score`,
    0 -> 0.0, 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1.0."""
    return {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9}.get(count, 1.0)


def _vqa_subtype(questions_file: Path, payload: dict) -> str:
    """The questions file's data subtype ("train2014", "val2014", "test2015", "test-dev2015"): its "data_subtype"
    field, else the name `v2_OpenEnded_mscoco_{subtype}_questions.json`."""
    if payload.get("data_subtype"):
        return payload["data_subtype"]
    match = re.match(r"v2_OpenEnded_mscoco_(.+)_questions\.json$", questions_file.name)
    if not match:
        raise ValueError(f"{questions_file}: no data_subtype field, and the name is not "
                         "v2_OpenEnded_mscoco_{subtype}_questions.json")
    return match.group(1)


def vqa_image_path(image_root: str | Path, subtype: str, image_id: int) -> Path:
    """`{image_root}/{folder}/COCO_{folder}_{image_id:012d}.jpg`, folder = the subtype, test-dev2015 -> test2015
    (ViLT DATA.md; write_vqa.py reads test-dev questions' images from test2015)."""
    folder = "test2015" if subtype.startswith("test") else subtype
    return Path(image_root) / folder / f"COCO_{folder}_{image_id:012d}.jpg"


def read_vqav2(questions: str | Path, annotations: str | Path | None = None, image_root: str | Path = ".",
               check_images: str = "open") -> ReadResult:
    """VQAv2 from the official files (visualqa.org): `v2_OpenEnded_mscoco_{subtype}_questions.json`
    ({"data_subtype", "questions": [{"image_id", "question", "question_id"}]}) and, except for test / test-dev,
    `v2_mscoco_{subtype}_annotations.json` ({"annotations": [{"question_id", "image_id", "answers": [{"answer",
    "answer_confidence", "answer_id"}] x10, "multiple_choice_answer", ...}]}); images as `vqa_image_path`.

    Records: {"question_id", "image_id", "image", "question", "split" (the subtype), "answers" (the 10 raw answers),
    "answer_counts" ({normalised answer: count}, in first-seen order), "multiple_choice_answer" (raw)}; the last
    three are None without annotations. A question without an annotation, when annotations are given, is skipped."""
    questions = Path(questions)
    payload = json.loads(questions.read_text())
    subtype = _vqa_subtype(questions, payload)
    by_qid = None
    if annotations is not None:
        by_qid = {a["question_id"]: a for a in json.loads(Path(annotations).read_text())["annotations"]}
    out = _Rows(questions, check_images)
    for i, q in enumerate(payload["questions"]):
        record = {"question_id": q["question_id"], "image_id": q["image_id"], "question": q["question"],
                  "image": str(vqa_image_path(image_root, subtype, q["image_id"])), "split": subtype,
                  "answers": None, "answer_counts": None, "multiple_choice_answer": None}
        if by_qid is not None:
            annotation = by_qid.get(q["question_id"])
            if annotation is None:
                out.skip(i, q["question_id"], "no annotation", f"question {q['question_id']} not in {annotations}")
                continue
            record["answers"] = [a["answer"] for a in annotation["answers"]]
            record["answer_counts"] = dict(Counter(normalize_word(a) for a in record["answers"]))
            record["multiple_choice_answer"] = annotation["multiple_choice_answer"]
        if out.images_ok(i, q["question_id"], [Path(record["image"])]):
            out.records.append(record)
    return out.result()


def build_answer_vocab(records: list[dict], min_count: int = 9) -> list[str]:
    """`label2ans`: the normalised `multiple_choice_answer`s given at least `min_count` times over `records`, in
    the order each first occurs (write_vqa.py: `Counter` over train then val answers, >= 9, giving 3,129 classes on
    the full VQAv2 train2014 + val2014; pass the records in that order to reproduce its label ids). Records without
    annotations are ignored."""
    counts = Counter(normalize_word(r["multiple_choice_answer"]) for r in records
                     if r.get("multiple_choice_answer") is not None)
    return [answer for answer, count in counts.items() if count >= min_count]


def vqa_targets(record: dict, ans2label: dict[str, int]) -> tuple[list[int], list[float]]:
    """(labels, scores) of a VQA record: each normalised answer in the vocabulary with `answer_score` of its count
    (answers outside the vocabulary are dropped, as write_vqa.py does)."""
    labels, scores = [], []
    for answer, count in (record.get("answer_counts") or {}).items():
        if answer in ans2label:
            labels.append(ans2label[answer])
            scores.append(answer_score(count))
    return labels, scores


def answerable(records: list[dict], label2ans: list[str]) -> list[dict]:
    """The records with at least one answer in the vocabulary: write_vqa.py keeps only those in train and val (a
    question with none would have an all-zero target). Test records (no annotations) are all kept."""
    ans2label = {a: i for i, a in enumerate(label2ans)}
    kept = [r for r in records if r.get("answer_counts") is None or vqa_targets(r, ans2label)[0]]
    if len(kept) < len(records):
        logger.info("VQAv2: %d of %d questions have no answer in the %d-answer vocabulary; left out",
                    len(records) - len(kept), len(records), len(label2ans))
    return kept


# ---------------------------------------------------------------------------------------------------------------------
# SNLI-VE

# ManagerTower src/utils/write_snli.py (METER's): label2id = {'contradiction': 0, 'neutral': 1, 'entailment': 2}.
SNLI_VE_LABELS = {"contradiction": 0, "neutral": 1, "entailment": 2}


def read_snli_ve(jsonl: str | Path, image_folder: str | Path, check_images: str = "open") -> ReadResult:
    """SNLI-VE from `snli_ve_{train,dev,test}.jsonl` (github.com/necla-ml/SNLI-VE: SNLI rows, keys sorted, with
    "Flickr30K_ID" added by its generator; "gold_label" in entailment / neutral / contradiction) and the Flickr30K
    images `{image_folder}/{Flickr30K_ID}.jpg` (write_snli.py reads `flickr30k-images/{imgid}.jpg`).

    Records: {"id" (pairID), "image", "flickr30k_id", "premise" (sentence1, the Flickr30K caption), "hypothesis"
    (sentence2, stripped: the text the model reads, ManagerTower's base_dataset.py takes `t[1].strip()`), "label"
    (`SNLI_VE_LABELS`), "gold_label"}. A row with another gold label (SNLI's "-") is skipped."""
    out = _Rows(jsonl, check_images)
    for i, row in enumerate(_json_lines(jsonl)):
        row_id = row.get("pairID", i)
        if row.get("gold_label") not in SNLI_VE_LABELS:
            out.skip(i, row_id, "unknown label", f"gold_label {row.get('gold_label')!r}")
            continue
        image = Path(image_folder) / f"{row['Flickr30K_ID']}.jpg"
        if out.images_ok(i, row_id, [image]):
            out.records.append({"id": str(row_id), "image": str(image), "flickr30k_id": str(row["Flickr30K_ID"]),
                                "premise": row.get("sentence1"), "hypothesis": row["sentence2"].strip(),
                                "label": SNLI_VE_LABELS[row["gold_label"]], "gold_label": row["gold_label"]})
    return out.result()


# ---------------------------------------------------------------------------------------------------------------------
# NLVR2


def nlvr2_image_paths(root: str | Path, row: dict) -> tuple[Path, Path]:
    """The left and right images of an NLVR2 row: identifier `split-set_id-pair_id-sentence_id` names them
    `split-set_id-pair_id-img0.png` / `-img1.png` (lil-lab/nlvr nlvr2/README.md); train images lie in
    `{root}/images/train/{directory}/` (the row's "directory" field), dev / test1 in `{root}/{split}/`
    (ManagerTower / ViLT write_nlvr2.py `process`, ViLT DATA.md)."""
    stem = row["identifier"].rsplit("-", 1)[0]
    split = stem.split("-")[0]
    if split == "train":
        folder = Path(root) / "images" / "train" / str(row["directory"])
    else:
        folder = Path(root) / split
    return folder / f"{stem}-img0.png", folder / f"{stem}-img1.png"


def read_nlvr2(json_lines: str | Path, root: str | Path, check_images: str = "open") -> ReadResult:
    """NLVR2 from `nlvr2/data/{train,dev,test1}.json` (JSON lines: "identifier", "sentence", "label" "True" /
    "False", train rows with "directory"; lil-lab/nlvr) and the images under `root` (`nlvr2_image_paths`).

    Records: {"identifier", "images" ([left, right] paths), "sentence", "label" (1 for "True", else 0: ManagerTower
    nlvr2_dataset.py `answers == "True"`)}."""
    out = _Rows(json_lines, check_images)
    for i, row in enumerate(_json_lines(json_lines)):
        row_id = row.get("identifier", i)
        try:
            images = nlvr2_image_paths(root, row)
        except KeyError as error:
            out.skip(i, row_id, "malformed row", f"no {error} field")
            continue
        if out.images_ok(i, row_id, list(images)):
            out.records.append({"identifier": row["identifier"], "images": [str(p) for p in images],
                                "sentence": row["sentence"], "label": int(str(row["label"]) == "True")})
    return out.result()


# ---------------------------------------------------------------------------------------------------------------------
# Flickr30K (Karpathy split)


def read_flickr30k_karpathy(dataset_json: str | Path, image_folder: str | Path,
                            splits: tuple[str, ...] | list[str] | str = ("train",),
                            check_images: str = "open") -> ReadResult:
    """Flickr30K images of the Karpathy split from `dataset_flickr30k.json` ({"images": [{"filename", "imgid",
    "split" (train / val / test; "restval" in the COCO file), "sentences": [{"raw", "tokens", ...}] x5}]}; ViLT /
    ManagerTower write_f30k_karpathy.py read `karpathy/dataset_flickr30k.json`, the images from
    `flickr30k-images/`), the images of `splits` only.

    Records, one per image: {"image", "filename", "imgid", "split", "captions" (the "raw" sentences)}. ManagerTower
    fine-tunes on train + val and evaluates on test (src/datasets/f30k_caption_karpathy_dataset.py)."""
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    out = _Rows(dataset_json, check_images)
    for i, entry in enumerate(json.loads(Path(dataset_json).read_text())["images"]):
        if entry["split"] not in splits:
            continue
        image = Path(image_folder) / entry["filename"]
        if out.images_ok(i, entry["filename"], [image]):
            out.records.append({"image": str(image), "filename": entry["filename"], "imgid": entry.get("imgid", i),
                                "split": entry["split"], "captions": [s["raw"] for s in entry["sentences"]]})
    return out.result()


def caption_pairs(records: list[dict]) -> list[dict]:
    """Training pairs of retrieval records: one {"image", "caption", "image_index"} per caption, `image_index`
    the image's position in `records`."""
    return [{"image": r["image"], "caption": c, "image_index": i} for i, r in enumerate(records) for c in r["captions"]]


def retrieval_set(records: list[dict]) -> dict[str, list]:
    """An evaluation set of retrieval records: {"images": the image paths, "texts": every caption, "text_to_image":
    the index in "images" of each text's image} (5 texts per Flickr30K image), for `metrics.retrieval_recall`."""
    texts, text_to_image = [], []
    for i, r in enumerate(records):
        texts += r["captions"]
        text_to_image += [i] * len(r["captions"])
    return {"images": [r["image"] for r in records], "texts": texts, "text_to_image": text_to_image}


# ---------------------------------------------------------------------------------------------------------------------
# Dataset


class TowerDataset(Dataset):
    """Records of any reader above with their images decoded: item = {"record": the record, "images": [PIL RGB
    image, ...]} (the record's "images" list, or its one "image"). An image that fails to decode is skipped: the
    next usable record is returned in its place (so batch sizes stay the same), the skip is logged and kept in
    `self.skipped` (of this process); with `strict=True` it raises `ImageError` instead."""

    def __init__(self, records: list[dict], strict: bool = False) -> None:
        self.records, self.strict = records, strict
        self.skipped: list[dict] = []

    def __len__(self) -> int:
        return len(self.records)

    @staticmethod
    def image_paths(record: dict) -> list[str]:
        return list(record["images"]) if "images" in record else [record["image"]]

    def __getitem__(self, index: int) -> dict[str, Any]:
        for offset in range(len(self.records)):
            i = (index + offset) % len(self.records)
            try:
                images = [open_image(p) for p in self.image_paths(self.records[i])]
            except ImageError as error:
                if self.strict:
                    raise
                self.skipped.append({"index": i, "reason": error.reason, "detail": error.detail})
                logger.warning("skipping sample %d: %s", i, error)
                continue
            return {"record": self.records[i], "images": images}
        raise RuntimeError(f"no usable sample in the whole data set; the first problems: {self.skipped[:3]}")


# ---------------------------------------------------------------------------------------------------------------------
# Encoding and collators


def encode_texts(processor, texts: list[str], max_length: int = MAX_TEXT_LENGTH, padding: str | bool = "longest",
                 special_tokens_mask: bool = False) -> dict[str, torch.Tensor]:
    """`input_ids`, `attention_mask` (and `special_tokens_mask` on request) of `texts` by the processor's tokenizer:
    `<s> text </s>`, truncated to `max_length` tokens, padded to the longest (or `padding="max_length"`, as
    ManagerTower's datasets do)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    encoded = tokenizer(list(texts), padding=padding, truncation=True, max_length=max_length,
                        return_special_tokens_mask=special_tokens_mask, return_tensors="pt")
    return dict(encoded)


def encode_images(processor, images: list[Image.Image]) -> dict[str, torch.Tensor]:
    """`pixel_values` and `pixel_mask` of `images` by the processor's image processor (resize, centre crop,
    normalise, pad to the largest with the mask)."""
    image_processor = getattr(processor, "image_processor", processor)
    encoded = image_processor(list(images), return_tensors="pt")
    return {"pixel_values": encoded["pixel_values"], "pixel_mask": encoded["pixel_mask"]}


@dataclass
class _TowerCollator:
    """Text of `record[text_key]` and the first image of each item (`TowerDataset` items)."""

    processor: Any
    max_length: int = MAX_TEXT_LENGTH
    padding: str | bool = "longest"
    text_key = "text"

    def texts(self, items: list[dict]) -> list[str]:
        return [item["record"][self.text_key] for item in items]

    def encode(self, items: list[dict], images: list[Image.Image] | None = None) -> dict[str, torch.Tensor]:
        batch = encode_texts(self.processor, self.texts(items), self.max_length, self.padding)
        batch.update(encode_images(self.processor, images or [item["images"][0] for item in items]))
        return batch


def itm_pairs(image_keys: list[Any], generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[int]]:
    """Image-text matching in a batch: (itm_labels, image_order). As ManagerTower's `compute_itm`
    (src/modules/objectives.py), half the batch (B - B // 2 samples, chosen at random) gets another sample's image,
    label 0, the rest keep their own, label 1; here the other image comes from the batch, drawn among the samples
    whose image (`image_keys`) differs, and a sample with none stays matched. Sample i is shown image
    `image_order[i]`."""
    size = len(image_keys)
    labels, order = torch.ones(size, dtype=torch.long), list(range(size))
    for i in torch.randperm(size, generator=generator)[: size - size // 2].tolist():
        others = [j for j in range(size) if image_keys[j] != image_keys[i]]
        if others:
            order[i] = others[int(torch.randint(len(others), (1,), generator=generator))]
            labels[i] = 0
    return labels, order


@dataclass
class PretrainCollator(_TowerCollator):
    """Masked language modelling + image-text matching on image-caption records (`read_image_captions`), in the
    two passes of ManagerTower's objectives.py: MLM on the masked caption with its own image, ITM on the unmasked
    caption with an image that is another sample's for half the batch.

    - `input_ids`, `attention_mask`, `pixel_values`, `pixel_mask`: the caption, unmasked, and its own image;
    - `mlm_input_ids`, `mlm_labels`: transformers' `DataCollatorForLanguageModeling` masking (as ManagerTower's
      datamodule_base.py): each text token with probability `mlm_probability` (0.15; never `<s>`, `</s>` or
      padding) becomes a target; of those 80% are replaced by `<mask>`, 10% by a random token, 10% kept;
      `mlm_labels` is -100 elsewhere;
    - `itm_pixel_values`, `itm_pixel_mask`, `itm_labels`: the images of `itm_pairs` (1 = the caption's own image).
      `itm=False` leaves the ITM keys out.

    Reproducible: the masking generator of the transformers collator is seeded with `seed` (+ the DataLoader
    worker id in a worker) and drives the ITM draws too; `seed=None` uses torch's global generator."""

    mlm_probability: float = 0.15
    itm: bool = True
    seed: int | None = 0
    masker: Any = field(init=False, repr=False)
    text_key = "caption"

    def __post_init__(self) -> None:
        from transformers import DataCollatorForLanguageModeling

        self.masker = DataCollatorForLanguageModeling(
            tokenizer=self.processor.tokenizer, mlm=True, mlm_probability=self.mlm_probability, seed=self.seed,
            return_tensors="pt")

    def generator(self) -> torch.Generator | None:
        if self.masker.seed is not None and self.masker.generator is None:
            self.masker.create_rng()
        return self.masker.generator

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        generator = self.generator()
        batch = encode_texts(self.processor, self.texts(items), self.max_length, self.padding,
                             special_tokens_mask=True)
        batch["mlm_input_ids"], batch["mlm_labels"] = self.masker.torch_mask_tokens(
            batch["input_ids"].clone(), special_tokens_mask=batch.pop("special_tokens_mask"))
        images = [item["images"][0] for item in items]
        batch.update(encode_images(self.processor, images))
        if self.itm:
            itm_labels, order = itm_pairs([item["record"]["image"] for item in items], generator)
            swapped = encode_images(self.processor, [images[j] for j in order])
            batch["itm_pixel_values"], batch["itm_pixel_mask"] = swapped["pixel_values"], swapped["pixel_mask"]
            batch["itm_labels"] = itm_labels
        return batch


@dataclass
class VQACollator(_TowerCollator):
    """VQAv2 questions (`read_vqav2` records) with `labels` = [batch, len(label2ans)] float soft scores
    (`vqa_targets`; zero for answers outside the vocabulary), the BCE targets of ManagerTower's `compute_vqa`. A
    batch of test questions (no annotations) has no `labels`."""

    label2ans: list[str] = field(default_factory=list)
    text_key = "question"

    def __post_init__(self) -> None:
        self.ans2label = {answer: i for i, answer in enumerate(self.label2ans)}

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.encode(items)
        annotated = [item["record"].get("answer_counts") is not None for item in items]
        if any(annotated) and not all(annotated):
            raise ValueError("a VQA batch mixes annotated and test questions")
        if all(annotated):
            labels = torch.zeros(len(items), len(self.label2ans))
            for row, item in enumerate(items):
                indices, scores = vqa_targets(item["record"], self.ans2label)
                labels[row, indices] = torch.tensor(scores)
            batch["labels"] = labels
        return batch


@dataclass
class SNLIVECollator(_TowerCollator):
    """SNLI-VE (`read_snli_ve` records): the hypothesis with the premise image; `labels` long (`SNLI_VE_LABELS`)."""

    text_key = "hypothesis"

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.encode(items)
        batch["labels"] = torch.tensor([item["record"]["label"] for item in items], dtype=torch.long)
        return batch


@dataclass
class NLVR2Collator(_TowerCollator):
    """NLVR2 (`read_nlvr2` records): the sentence with the left image (`pixel_values`, `pixel_mask`) and with the
    right image (`pixel_values_2`, `pixel_mask_2`), as ManagerTower's `compute_nlvr2` runs the pair (sentence,
    image) twice; `labels` long, 1 = True."""

    text_key = "sentence"

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.encode(items)
        right = encode_images(self.processor, [item["images"][1] for item in items])
        batch["pixel_values_2"], batch["pixel_mask_2"] = right["pixel_values"], right["pixel_mask"]
        batch["labels"] = torch.tensor([item["record"]["label"] for item in items], dtype=torch.long)
        return batch


@dataclass
class RetrievalCollator(_TowerCollator):
    """Image-caption pairs for retrieval fine-tuning (`caption_pairs` records); with `return_image_ids`, also
    `image_ids` (the pairs' `image_index`, to tell captions of the same image apart when drawing negatives; not a
    model input)."""

    return_image_ids: bool = False
    text_key = "caption"

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.encode(items)
        if self.return_image_ids:
            batch["image_ids"] = torch.tensor([item["record"]["image_index"] for item in items], dtype=torch.long)
        return batch
