"""Pre-training image-caption pairs (MLM + ITM): `read_image_captions` reads a JSON list (or JSON lines) of
{"image", "caption"} rows, LLaVA-style caption rows and ViLT's [image, caption] pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .records import ReadResult, _json_lines, _Rows


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


def read_image_captions(annotations: str | Path, image_folder: str | Path, check_images: str = "open") -> ReadResult:
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
            out.records.append(
                {"id": str(row_id), "image": str(image_path), "caption": caption.replace("<image>", "").strip()}
            )
    return out.result()
