"""SNLI-VE: `read_snli_ve` reads the JSON lines of necla-ml/SNLI-VE with the Flickr30K images; labels as
`SNLI_VE_LABELS`."""

from __future__ import annotations

from pathlib import Path

from .records import ReadResult, _json_lines, _Rows

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
            out.records.append(
                {
                    "id": str(row_id),
                    "image": str(image),
                    "flickr30k_id": str(row["Flickr30K_ID"]),
                    "premise": row.get("sentence1"),
                    "hypothesis": row["sentence2"].strip(),
                    "label": SNLI_VE_LABELS[row["gold_label"]],
                    "gold_label": row["gold_label"],
                }
            )
    return out.result()
