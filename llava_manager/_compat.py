"""The dependency versions this package is tested with, checked at import.

The tested ranges are the ones the installed distribution declares (pyproject.toml's `dependencies` and extras, which
CI installs at both ends). transformers outside 5.x is an error: the model layout (`model.model.language_model`,
`vision_tower`, `multi_modal_projector`) is 5.x's. Any other installed dependency outside its range is a warning that
names the tested range and the constraints file that pins the tested set.
"""

from __future__ import annotations

import warnings
from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import Requirement
from packaging.version import Version

DISTRIBUTION = "llava-manager"
TRANSFORMERS_MIN = "5.0.0"
TRANSFORMERS_MAX = "6.0.0"  # exclusive: the model layout this package patches is transformers 5.x's
# Ranges that hold only beside another package: filelock is capped for lmms-eval's sake alone.
ONLY_WITH = {"filelock": "lmms-eval"}


class UntestedVersionWarning(UserWarning):
    """An installed dependency is outside the range CI tests."""


def check_transformers() -> None:
    found = Version(version("transformers"))
    if not Version(TRANSFORMERS_MIN) <= found < Version(TRANSFORMERS_MAX):
        raise ImportError(
            f"llava_manager needs transformers >= {TRANSFORMERS_MIN}, < {TRANSFORMERS_MAX} (the 5.x layout "
            f"model.model.language_model / vision_tower / multi_modal_projector); found {found}. "
            f"Install the tested versions: pip install {_tested_range('transformers')!r}."
        )


def tested_ranges() -> dict[str, Requirement]:
    """Each dependency's tested range, as the installed distribution declares it (extras included)."""
    try:
        declared = requires(DISTRIBUTION) or []
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return {}
    ranges = {}
    for text in declared:
        requirement = Requirement(text)
        if requirement.name.replace("_", "-").lower() != DISTRIBUTION and requirement.specifier:
            ranges.setdefault(requirement.name.lower(), requirement)
    return ranges


def _format(specifier) -> str:
    """A range as people write it, lower bound first: `>=5.23,<5.26`."""
    return ",".join(str(s) for s in sorted(specifier, key=lambda s: (not s.operator.startswith(">"), str(s))))


def _tested_range(name: str) -> str:
    requirement = tested_ranges().get(name)
    if requirement is None:  # a source tree that was never installed
        return f"{name}>={TRANSFORMERS_MIN},<{TRANSFORMERS_MAX}"
    return f"{name}{_format(requirement.specifier)}"


def untested_versions() -> list[str]:
    """One line per installed dependency whose version is outside its tested range."""
    lines = []
    for name, requirement in tested_ranges().items():
        try:
            if name in ONLY_WITH:
                version(ONLY_WITH[name])
            found = version(name)
        except PackageNotFoundError:
            continue  # an optional dependency that is not installed
        if not requirement.specifier.contains(Version(found), prereleases=True):
            lines.append(f"{name} {found} (tested: {_format(requirement.specifier)})")
    return lines


def check_versions() -> None:
    check_transformers()
    lines = untested_versions()
    if lines:
        warnings.warn(
            "llava_manager is tested with other versions of: " + "; ".join(lines) + ". It may still work; "
            "the set CI proves is pinned in the repository's constraints/tested.txt "
            "(pip install -c constraints/tested.txt llava-manager).",
            UntestedVersionWarning,
            stacklevel=3,
        )
