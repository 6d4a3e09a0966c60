"""The package as users install it: every module ships and imports, the entry points load, the version check follows
the declared ranges. With LLAVA_MANAGER_EXPECT_INSTALLED=1 (CI's wheel pass) the package under test must be an
installed, non-editable distribution, not a source tree."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import warnings
from importlib.metadata import distribution, entry_points
from pathlib import Path

import pytest
from packaging.version import Version
from support.helpers import subprocess_env

import llava_manager
from llava_manager import _compat

PACKAGE_DIR = Path(llava_manager.__file__).resolve().parent


def _module_names() -> list[str]:
    return sorted(
        ".".join(("llava_manager", *path.relative_to(PACKAGE_DIR).with_suffix("").parts)).removesuffix(".__init__")
        for path in PACKAGE_DIR.rglob("*.py")
    )


def test_every_folder_of_modules_is_a_regular_package():
    """A folder without __init__.py is a namespace package, which `packages.find` leaves out of the wheel."""
    folders = {path.parent for path in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in path.parts}
    missing = sorted(str(f.relative_to(PACKAGE_DIR.parent)) for f in folders if not (f / "__init__.py").exists())
    assert not missing, f"folders without __init__.py (left out of the wheel): {missing}"


@pytest.mark.parametrize("name", _module_names())
def test_every_module_imports(name):
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve().is_relative_to(PACKAGE_DIR)


def test_the_lmms_eval_entry_points_load():
    points = {p.name: p for p in entry_points(group="lmms_eval.models") if p.dist.name == "llava-manager"}
    assert set(points) == {"llava_manager", "llava_ov_manager"}
    for name, point in points.items():
        manifest = point.load()
        assert manifest.model_id == name
        module_name, class_name = manifest.simple_class_path.rsplit(".", 1)
        assert isinstance(getattr(importlib.import_module(module_name), class_name), type)


@pytest.mark.skipif(
    os.environ.get("LLAVA_MANAGER_EXPECT_INSTALLED") != "1",
    reason="only where the test run is meant to exercise an installed wheel (CI)",
)
def test_the_package_under_test_is_the_installed_wheel():
    dist = distribution("llava-manager")
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    assert not direct_url.get("dir_info", {}).get("editable"), "installed in editable mode"
    installed = {str(f) for f in dist.files if str(f).endswith(".py")}
    on_disk = {str(p.relative_to(PACKAGE_DIR.parent)) for p in PACKAGE_DIR.rglob("*.py")}
    assert on_disk <= installed, sorted(on_disk - installed)
    assert PACKAGE_DIR == Path(dist.locate_file("llava_manager")).resolve()
    assert "site-packages" in PACKAGE_DIR.parts
    # A subprocess started from another folder finds the same installation.
    out = subprocess.run(
        [sys.executable, "-c", "import llava_manager; print(llava_manager.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path.home(),
        env=subprocess_env(),
    )
    assert Path(out.stdout.strip()).resolve().parent == PACKAGE_DIR


def test_installed_versions_are_inside_the_declared_ranges():
    """The environment under test is inside the ranges it proves (CI installs both ends)."""
    ranges = _compat.tested_ranges()
    assert {"torch", "transformers", "accelerate", "deepspeed", "peft", "datasets", "lmms-eval", "filelock"} <= set(
        ranges
    )
    assert _compat.untested_versions() == []


def test_a_version_outside_its_range_is_named_with_the_tested_range(monkeypatch):
    real = _compat.version
    newer = str(Version(real("accelerate")).major + 1) + ".0.0"
    monkeypatch.setattr(_compat, "version", lambda name: newer if name == "accelerate" else real(name))
    expected = rf"accelerate {newer} \(tested: >=[0-9.]+,<[0-9.]+\)"
    with pytest.warns(_compat.UntestedVersionWarning, match=expected) as caught:
        _compat.check_versions()
    assert "constraints/tested.txt" in str(caught[0].message)
    monkeypatch.setattr(_compat, "version", lambda name: "6.0.0" if name == "transformers" else real(name))
    with pytest.raises(ImportError, match=r"found 6\.0\.0.*transformers>=5\.[0-9]+,<5\.[0-9]+"):
        _compat.check_transformers()


def test_inside_the_ranges_import_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error", _compat.UntestedVersionWarning)
        _compat.check_versions()
