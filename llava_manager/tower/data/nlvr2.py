"""NLVR2: `read_nlvr2` reads the JSON lines of lil-lab/nlvr with the image pair of each row
(`nlvr2_image_paths`)."""

from __future__ import annotations

from pathlib import Path

from .records import ReadResult, _json_lines, _Rows


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
            out.records.append(
                {
                    "identifier": row["identifier"],
                    "images": [str(p) for p in images],
                    "sentence": row["sentence"],
                    "label": int(str(row["label"]) == "True"),
                }
            )
    return out.result()
