"""ManagerTower's data: readers of the pre-training and fine-tuning formats as the tasks publish them, returning plain
records, and a torch `Dataset` with one collator per task that makes BridgeTower model inputs with a
`BridgeTowerProcessor`.

Readers (each returns `ReadResult(records, skipped)`; a row whose image is missing or unreadable, or that cannot be
used for another stated reason, is left out and listed in `skipped` as {"index", "id", "reason", "detail"}, and the
count is logged, never dropped silently):

- `read_image_captions(annotations, image_folder)`: pre-training image-caption JSON (`captions.py`).
- `read_vqav2(questions, annotations, image_root)`: the official VQAv2 question / annotation JSON and COCO images;
  with the answer normalisation and vocabulary (`vqav2.py`).
- `read_snli_ve(jsonl, image_folder)`: SNLI-VE JSON lines and Flickr30K images (`snli_ve.py`).
- `read_nlvr2(json_lines, root)`: NLVR2 JSON lines and the image-pair layout of the lil-lab/nlvr download
  (`nlvr2.py`).
- `read_flickr30k_karpathy(dataset_json, image_folder, splits)`: Karpathy's `dataset_flickr30k.json`
  (`flickr30k.py`).

What they share (`ReadResult`, the image checks) is in `records.py`.

The facts on each format come from the data-preparation scripts of ManagerTower (github.com/LooperXX/ManagerTower,
`src/utils/write_*.py`, which follow METER and ViLT's `vilt/utils/write_*.py`, github.com/dandelin/ViLT, with its
`DATA.md` for the folder layouts) and from the data sets' own repositories; each reader cites its sources.

Images are decoded by `processing.images.open_image` (EXIF orientation, any mode to RGB). A reader checks that each
image exists and that PIL can read its header (`check_images="open"`; "exists" only stats the file, "decode" decodes
it all); an image that still fails to decode when a batch is made is skipped by `TowerDataset` (logged, listed in
`dataset.skipped`), or raises with `strict=True` (`dataset.py`, with the text and image encoding).

Collators, one per task (`collators.py`, where each one's inputs and targets are listed): `PretrainCollator` (MLM +
ITM), `VQACollator`, `SNLIVECollator`, `NLVR2Collator`, `RetrievalCollator`. Model inputs: `input_ids`,
`attention_mask` from the tokenizer, at most `max_length` = 50 tokens, truncated; `pixel_values`, `pixel_mask` from
the image processor; the targets as the task's head takes them.

Processors and stand-ins (imported from their modules): `processor.py`, the processor of a tower checkpoint
(`load_tower_processor`, published BridgeTower layout or our saves); `synthetic.py`, the tiny offline processor
(`tiny_tower_processor`) and synthetic data sets in each task's published layout (`write_synthetic`).
"""

from .captions import _caption_of, read_image_captions
from .collators import (
    IGNORE_INDEX,
    NLVR2Collator,
    PretrainCollator,
    RetrievalCollator,
    SNLIVECollator,
    VQACollator,
    _TowerCollator,
    itm_pairs,
)
from .dataset import MAX_TEXT_LENGTH, TowerDataset, encode_images, encode_texts
from .flickr30k import caption_pairs, read_flickr30k_karpathy, retrieval_set
from .nlvr2 import nlvr2_image_paths, read_nlvr2
from .records import CHECKS, ReadResult, _json_lines, _Rows, image_problem
from .snli_ve import SNLI_VE_LABELS, read_snli_ve
from .vqav2 import (
    ARTICLES,
    COMMA_STRIP,
    CONTRACTIONS,
    NUMBER_WORDS,
    PERIOD_STRIP,
    PUNCTUATION,
    _vqa_subtype,
    answer_score,
    answerable,
    build_answer_vocab,
    normalize_word,
    read_vqav2,
    vqa_image_path,
    vqa_targets,
)

__all__ = [
    # records.py
    "CHECKS",
    "ReadResult",
    "image_problem",
    # the readers
    "read_image_captions",
    "read_vqav2",
    "read_snli_ve",
    "read_nlvr2",
    "read_flickr30k_karpathy",
    # vqav2.py
    "CONTRACTIONS",
    "NUMBER_WORDS",
    "ARTICLES",
    "PUNCTUATION",
    "PERIOD_STRIP",
    "COMMA_STRIP",
    "normalize_word",
    "answer_score",
    "vqa_image_path",
    "build_answer_vocab",
    "vqa_targets",
    "answerable",
    # snli_ve.py, nlvr2.py, flickr30k.py
    "SNLI_VE_LABELS",
    "nlvr2_image_paths",
    "caption_pairs",
    "retrieval_set",
    # dataset.py
    "MAX_TEXT_LENGTH",
    "TowerDataset",
    "encode_texts",
    "encode_images",
    # collators.py
    "IGNORE_INDEX",
    "itm_pairs",
    "PretrainCollator",
    "VQACollator",
    "SNLIVECollator",
    "NLVR2Collator",
    "RetrievalCollator",
]
