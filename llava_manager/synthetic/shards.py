"""The embedded synthetic shard set: the shapes questions (`shapes/data.py`) as parquet shards with image bytes, in the
layout of the LLaVA-OneVision data release (`training/shards.py` describes it and its sources), next to the same
rows as LLaVA JSON + an image folder (what the release's card converts it to), with a few bad rows.

    folder/
      shapes(synthetic,llava_format)/train-00000-of-00002.parquet   one subset folder, as `CLEVR-Math(MathV360K)/`
      shapes(synthetic,llava_format)/train-00001-of-00002.parquet   rows: id, image {bytes, path}, conversations,
                                                                    data_source; row groups of ROW_GROUP rows
      llava/onevision.json, llava/images/                           the same rows as LLaVA JSON + image folder

Bad rows (`BAD_ROWS`, spread over the shards; in the JSON too, with their image files): undecodable image bytes and a
truncated PNG ("corrupt image"), a conversation that starts with the answer and an empty one ("malformed").
Text-only rows (every 16th shapes sample) have a null image, as in the release.
"""

from __future__ import annotations

import json
from pathlib import Path

from .data import write_shapes_dataset

SUBSET = "shapes(synthetic,llava_format)"  # a subset folder named like the release's, brackets and comma included
ROW_GROUP = 8  # rows per parquet row group: several pieces per shard for the streaming tests
WRITER_VERSION = 1
BAD_ROWS = ("bad-bytes", "bad-truncated", "bad-turns", "bad-empty")  # ids
BAD_REASONS = {
    "bad-bytes": "corrupt image",
    "bad-truncated": "corrupt image",
    "bad-turns": "malformed",
    "bad-empty": "malformed",
}


def _features():
    from datasets import Features, Image, Value

    return Features(
        {
            "id": Value("string"),
            "image": Image(),
            "conversations": [{"from": Value("string"), "value": Value("string")}],
            "data_source": Value("string"),
        }
    )


def _bad_rows(image_bytes: bytes) -> list[dict]:
    question = [{"from": "human", "value": "<image>\nWhat colour is the shape ?"}, {"from": "gpt", "value": "red ."}]
    return [
        {
            "id": "bad-bytes",
            "image": {"bytes": b"this is not an image", "path": "bad-bytes.png"},
            "conversations": question,
        },
        {
            "id": "bad-truncated",
            "image": {"bytes": image_bytes[: len(image_bytes) // 2], "path": "bad-truncated.png"},
            "conversations": question,
        },
        {"id": "bad-turns", "image": {"bytes": image_bytes, "path": "bad-turns.png"}, "conversations": question[1:]},
        {"id": "bad-empty", "image": None, "conversations": []},
    ]


def write_synthetic_shards(
    folder: str | Path, n: int = 64, shards: int = 2, seed: int = 0, bad_rows: bool = True
) -> dict:
    """Write `n` shapes samples (+ the 4 `BAD_ROWS` unless `bad_rows=False`) under `folder` as `shards` parquet files
    in the release's layout, and as LLaVA JSON + image folder. Returns {"folder", "subset" (the subset folder),
    "files" (the shards, in order), "json", "image_folder", "rows" (all rows: id, image {bytes, path} or None,
    conversations, data_source, in shard order)}. Deterministic; a folder written with the same arguments is
    reused."""
    from datasets import Dataset

    folder = Path(folder)
    subset = folder / SUBSET
    files = [subset / f"train-{k:05d}-of-{shards:05d}.parquet" for k in range(shards)]
    paths = {
        "folder": folder,
        "subset": subset,
        "files": files,
        "json": folder / "llava" / "onevision.json",
        "image_folder": folder / "llava" / "images",
    }
    source = write_shapes_dataset(folder / "llava", n, seed)
    records = json.loads(source["instruct"].read_text())
    rows = []
    for record in records:
        image = record.get("image")
        rows.append(
            {
                "id": record["id"],
                "conversations": record["conversations"],
                "data_source": SUBSET,
                "image": None
                if image is None
                else {"bytes": (source["image_folder"] / image).read_bytes(), "path": image},
            }
        )
    if bad_rows:
        sample = next(r["image"]["bytes"] for r in rows if r["image"] is not None)
        for k, bad in enumerate(_bad_rows(sample)):  # spread: 2nd row, then a quarter further each
            rows.insert(1 + k * (len(rows) // len(BAD_ROWS)), {**bad, "data_source": SUBSET})
    paths["rows"] = rows

    made_with = {"n": n, "shards": shards, "seed": seed, "bad_rows": bad_rows, "writer": WRITER_VERSION}
    stamp = folder / "shards_made_with.json"
    if (
        stamp.exists()
        and json.loads(stamp.read_text()) == made_with
        and all(f.exists() for f in files)
        and paths["json"].exists()
    ):
        return paths
    if shards < 1 or shards > len(rows):
        raise ValueError(f"shards={shards}: use 1 to {len(rows)} for {len(rows)} rows.")
    subset.mkdir(parents=True, exist_ok=True)
    for old in subset.glob("*.parquet"):
        old.unlink()
    bounds = [round(k * len(rows) / shards) for k in range(shards + 1)]
    for k, path in enumerate(files):
        part = rows[bounds[k] : bounds[k + 1]]
        columns = {name: [row[name] for row in part] for name in ("id", "image", "conversations", "data_source")}
        Dataset.from_dict(columns, features=_features()).to_parquet(str(path), batch_size=ROW_GROUP)

    twin = []  # the card's conversion: the image saved under its name, `image` left out for text-only rows
    for row in rows:
        record = {"id": row["id"], "conversations": row["conversations"], "data_source": row["data_source"]}
        if row["image"] is not None:
            record["image"] = row["image"]["path"]
            target = paths["image_folder"] / row["image"]["path"]
            if row["id"] in BAD_ROWS or not target.exists():  # the shapes images are there already
                target.write_bytes(row["image"]["bytes"])
        twin.append(record)
    paths["json"].write_text(json.dumps(twin, indent=1))
    stamp.write_text(json.dumps(made_with))
    return paths
