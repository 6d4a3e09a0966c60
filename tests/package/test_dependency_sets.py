"""The declared ranges (pyproject.toml) and the two sets CI installs agree: constraints/oldest.txt pins every lower
bound, constraints/tested.txt pins a version inside every range, and the machine-learning stack's upper bounds stop
right after the minor that constraints/tested.txt tests."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
# The packages whose releases have broken this one: each capped at the next minor after the tested one.
CAPPED_AT_NEXT_MINOR = {
    "torch",
    "transformers",
    "accelerate",
    "huggingface-hub",
    "tokenizers",
    "safetensors",
    "deepspeed",
    "peft",
    "datasets",
    "lmms-eval",
    "filelock",
    "matplotlib",
    "pytest",
    "ruff",
    "numpy",
}


def _declared() -> dict[str, list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    declared: dict[str, list[Requirement]] = {}
    for text in texts:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name != "llava-manager":
            declared.setdefault(name, []).append(requirement)
    return declared


def _pins(name: str) -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints" / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"constraints/{name}: {line} is not an exact pin"
            pins[canonicalize_name(requirement.name)] = Version(spec.version)
    return pins


DECLARED = _declared()
BOUNDED = sorted(name for name, reqs in DECLARED.items() if any(r.specifier for r in reqs))


def test_every_declaration_of_a_package_says_the_same_range():
    for name, requirements in DECLARED.items():
        assert len({str(r.specifier) for r in requirements if r.specifier}) <= 1, name


@pytest.mark.parametrize("name", BOUNDED)
def test_oldest_set_pins_the_lower_bound(name):
    (specifier,) = {r.specifier for r in DECLARED[name] if r.specifier}
    lower = [Version(s.version) for s in specifier if s.operator == ">="]
    assert lower, f"{name}{specifier}: no lower bound"
    assert _pins("oldest.txt").get(name) == lower[0], f"constraints/oldest.txt must pin {name}=={lower[0]}"


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_tested_set_pins_a_version_inside_the_range(name):
    pinned = _pins("tested.txt")
    assert name in pinned, f"constraints/tested.txt has no pin for {name}"
    for requirement in DECLARED[name]:
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{name}=={pinned[name]} outside {requirement}"
        )


@pytest.mark.parametrize("name", sorted(CAPPED_AT_NEXT_MINOR))
def test_upper_bound_is_the_next_minor_after_the_tested_one(name):
    tested = _pins("tested.txt")[name]
    (specifier,) = {r.specifier for r in DECLARED[name] if r.specifier}
    upper = [Version(s.version) for s in specifier if s.operator == "<"]
    assert upper == [Version(f"{tested.major}.{tested.minor + 1}")], f"{name}{specifier}, tested {tested}"


def test_every_pin_of_the_oldest_set_is_declared():
    assert set(_pins("oldest.txt")) <= set(DECLARED)


def _readme_dependency_rows() -> dict[str, tuple[str, str, str]]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| package | tested range | tested set | oldest set |") :].split("\n\n")[0]
    rows = {}
    for line in table.splitlines()[2:]:
        name, declared, tested, oldest = (cell.strip() for cell in line.strip("|").split("|"))
        rows[canonicalize_name(name.split(" ")[0])] = tuple(
            c.split(" (")[0].replace(" ", "") for c in (declared, tested, oldest)
        )
    return rows


def test_the_readme_table_says_what_the_files_say():
    rows = _readme_dependency_rows()
    assert {"torch", "transformers", "lmms-eval", "filelock"} <= set(rows)
    tested, oldest = _pins("tested.txt"), _pins("oldest.txt")
    for name, (declared, tested_version, oldest_version) in rows.items():
        (specifier,) = {r.specifier for r in DECLARED[name] if r.specifier}
        assert SpecifierSet(declared) == specifier, name
        assert Version(tested_version) == tested[name] and Version(oldest_version) == oldest[name], name
