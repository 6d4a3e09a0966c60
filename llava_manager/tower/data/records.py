"""What the readers of `tower.data` share: `ReadResult`, the image checks (`CHECKS`, `image_problem`) and the
collector of one reader's records and skipped rows.

A row whose image is missing or unreadable, or that cannot be used for another stated reason, is left out and listed
in `skipped` as {"index", "id", "reason", "detail"}, and the count is logged, never dropped silently. Images are
checked with `processing.images.open_image`'s categories: "exists" only stats the file, "open" (the default) also
reads its header with PIL, "decode" decodes it all.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from ...processing.images import ImageError, open_image

logger = logging.getLogger(__name__)

CHECKS = ("exists", "open", "decode")


class ReadResult(NamedTuple):
    """What a reader returns: the usable records, and one {"index", "id", "reason", "detail"} per row left out."""

    records: list[dict]
    skipped: list[dict]


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
            logger.warning(
                "%s: skipped %d of %d rows (%s)",
                self.source,
                len(self.skipped),
                len(self.skipped) + len(self.records),
                dict(reasons),
            )
        return ReadResult(self.records, self.skipped)


def _json_lines(path: str | Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]
