"""VQAv2: the reader of the official question / annotation JSON and COCO images (`read_vqav2`), the answer
normalisation (`normalize_word`), the per-answer soft score (`answer_score`), the answer vocabulary
(`build_answer_vocab`, `answerable`) and the soft-score targets of one question (`vqa_targets`).

Answer normalisation, per-answer soft score and the answer vocabulary as in ManagerTower's
src/utils/write_vqa.py with `fix_answer_normalization=True` (the "_fix" tables its VQAv2 fine-tuning reads,
src/datasets/vqav2_dataset.py), itself METER's / ViLT's vilt/utils/write_vqa.py with the annotators' answers
normalised as the most common answers are. `normalize_word` is src/utils/glossary.py of ManagerTower (identical to
ViLT's vilt/utils/glossary.py), the answer processing of the official VQA evaluation (vqaEval.py).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path

from .records import ReadResult, _Rows

logger = logging.getLogger(__name__)

# Contractions of the official VQA evaluation, as "written=normalised" (looked up after lower-casing, so the
# capitalised keys never match; kept as published).
CONTRACTIONS = dict(
    pair.split("=", 1)
    for pair in """
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
""".split()
)
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = ("a", "an", "the")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
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
        raise ValueError(
            f"{questions_file}: no data_subtype field, and the name is not "
            "v2_OpenEnded_mscoco_{subtype}_questions.json"
        )
    return match.group(1)


def vqa_image_path(image_root: str | Path, subtype: str, image_id: int) -> Path:
    """`{image_root}/{folder}/COCO_{folder}_{image_id:012d}.jpg`, folder = the subtype, test-dev2015 -> test2015
    (ViLT DATA.md; write_vqa.py reads test-dev questions' images from test2015)."""
    folder = "test2015" if subtype.startswith("test") else subtype
    return Path(image_root) / folder / f"COCO_{folder}_{image_id:012d}.jpg"


def read_vqav2(
    questions: str | Path,
    annotations: str | Path | None = None,
    image_root: str | Path = ".",
    check_images: str = "open",
) -> ReadResult:
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
        record = {
            "question_id": q["question_id"],
            "image_id": q["image_id"],
            "question": q["question"],
            "image": str(vqa_image_path(image_root, subtype, q["image_id"])),
            "split": subtype,
            "answers": None,
            "answer_counts": None,
            "multiple_choice_answer": None,
        }
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
    counts = Counter(
        normalize_word(r["multiple_choice_answer"]) for r in records if r.get("multiple_choice_answer") is not None
    )
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
        logger.info(
            "VQAv2: %d of %d questions have no answer in the %d-answer vocabulary; left out",
            len(records) - len(kept),
            len(records),
            len(label2ans),
        )
    return kept
