"""The transformers versions this package is written against, checked at import."""

from __future__ import annotations

from importlib.metadata import version

from packaging.version import Version

TRANSFORMERS_MIN = "5.0.0"
TRANSFORMERS_MAX = "6.0.0"  # exclusive


def check_transformers() -> None:
    found = Version(version("transformers"))
    if not Version(TRANSFORMERS_MIN) <= found < Version(TRANSFORMERS_MAX):
        raise ImportError(
            f"llava_manager needs transformers >= {TRANSFORMERS_MIN}, < {TRANSFORMERS_MAX} (the 5.x layout "
            f"model.model.language_model / vision_tower / multi_modal_projector); found {found}. "
            f"Install a supported version: pip install 'transformers>={TRANSFORMERS_MIN},<{TRANSFORMERS_MAX}'."
        )
