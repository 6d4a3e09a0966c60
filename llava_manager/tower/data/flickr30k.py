"""Flickr30K retrieval on the Karpathy split: `read_flickr30k_karpathy` reads one record per image with its five
captions; `caption_pairs` turns them into training pairs and `retrieval_set` into an evaluation set."""

from __future__ import annotations

import json
from pathlib import Path

from .records import ReadResult, _Rows


def read_flickr30k_karpathy(
    dataset_json: str | Path,
    image_folder: str | Path,
    splits: tuple[str, ...] | list[str] | str = ("train",),
    check_images: str = "open",
) -> ReadResult:
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
            out.records.append(
                {
                    "image": str(image),
                    "filename": entry["filename"],
                    "imgid": entry.get("imgid", i),
                    "split": entry["split"],
                    "captions": [s["raw"] for s in entry["sentences"]],
                }
            )
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
