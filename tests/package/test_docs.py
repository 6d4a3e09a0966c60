"""The README and the pages under docs/ say only true things about the repository: every relative link and image
resolves to a file (and its #anchor to a heading), every repository path and `python -m llava_manager...` module they
name exists, the README stays a front door, and it links every page of docs/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import llava_manager

ROOT = Path(__file__).resolve().parents[2]
# Where the package's files are: the checkout, or (CI: tests run from a copy without llava_manager/) the wheel.
PACKAGE_PARENT = Path(llava_manager.__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 260

# A token naming something under one of these is a repository path, wherever it stands.
REPO_ROOTS = ("llava_manager/", "recipes/", "benchmarks/", "eval/", "tests/", "constraints/", "docs/", ".ci/")
# Elsewhere, a token with a slash is taken for a repository path when it ends like a file of the repository.
FILE_SUFFIXES = (".py", ".json", ".yaml", ".yml", ".txt", ".md", ".png", ".toml", ".cfg")
# Outputs of runs and user-side paths, which no checkout holds.
OUTPUT_PREFIXES = ("runs/", "results/", "reports/", "analysis/", "~", "/", "http://", "https://")
PLACEHOLDER_MARKS = ("*", "{", "}", "<", ">", "...")

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
MODULE = re.compile(r"python3?\s+-m\s+(llava_manager[\w.]*)")


def fenced_blocks(text: str) -> list[str]:
    return [m.group(0) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text without fenced code blocks and HTML comments (links there are not links)."""
    return re.sub(r"<!--.*?-->", "", FENCE.sub("", text), flags=re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a page's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    for match in HEADING.finditer(FENCE.sub("", text)):
        base = slug(match.group(2))
        name, n = base, 0
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def exists(root: Path, relative: str) -> bool:
    """Whether the repository path exists: in `root`, or for the package's own files in the installed package."""
    if (root / relative).exists():
        return True
    return root.resolve() == ROOT and relative.startswith("llava_manager") and (PACKAGE_PARENT / relative).exists()


def link_problems(page: Path, text: str, root: Path = ROOT) -> list[str]:
    """Every relative link and image of `text` (the content of `page`) that does not resolve."""
    problems, root = [], root.resolve()
    body = CODE_SPAN.sub("", prose(text))
    for target in LINK.findall(body):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page.resolve()
        if path_part and not resolved.is_relative_to(root):
            problems.append(f"{target}: outside the repository")
        elif not exists(root, resolved.relative_to(root).as_posix()):
            problems.append(f"{target}: no such file ({resolved.relative_to(root)})")
        elif anchor and resolved.suffix == ".md":
            if anchor not in anchors(resolved.read_text() if path_part else text):
                problems.append(f"{target}: no heading #{anchor} in {resolved.relative_to(root)}")
    return problems


def path_tokens(text: str) -> set[str]:
    """The repository paths `text` names in code spans and code blocks. In a code block only a token that starts at a
    repository folder counts; in a code span also one with a slash that ends like a file."""
    spans = [(m.group(2), True) for m in CODE_SPAN.finditer(prose(text))]
    blocks = [(block, False) for block in fenced_blocks(text)]
    candidates: set[str] = set()
    for chunk, in_span in spans + blocks:
        for raw in chunk.split():
            token = raw.strip("`'\",;:()[]").rstrip(".")
            looks_like_file = in_span and "/" in token and token.endswith(FILE_SUFFIXES)
            if not (token.startswith(REPO_ROOTS) or looks_like_file):
                continue
            if token.startswith(OUTPUT_PREFIXES) or any(mark in token for mark in PLACEHOLDER_MARKS):
                continue
            candidates.add(token)
    return candidates


def path_problems(text: str, root: Path = ROOT) -> list[str]:
    problems = [f"`{token}`: no such file or folder" for token in sorted(path_tokens(text)) if not exists(root, token)]
    for module in sorted(set(MODULE.findall(text))):
        base = module.replace(".", "/")
        if not (exists(root, base + ".py") or exists(root, base + "/__main__.py")):
            problems.append(f"python -m {module}: no such module")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_images_resolve(page):
    problems = link_problems(page, page.read_text())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_paths_and_modules_exist(page):
    problems = path_problems(page.read_text())
    assert not problems, "\n".join(problems)


def test_readme_is_a_front_door():
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move details to docs/"


def test_readme_links_every_docs_page():
    targets = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(prose(README.read_text()))}
    assert len(PAGES) > 1
    unlinked = [p.name for p in PAGES[1:] if p.resolve() not in targets]
    assert not unlinked, f"README.md does not link {unlinked}"


def test_the_file_map_lists_every_module():
    """docs/development.md's file map names every module of the package: by its path, by its name in its folder's
    row, or as part of a subpackage folder listed whole (package `__init__.py` files need no row)."""
    rows = [line for line in (DOCS / "development.md").read_text().splitlines() if line.startswith("| `")]
    named = {n for row in rows for n in re.findall(r"`(llava_manager/[\w/]+\.py)`", row)}
    whole = {f for row in rows for f in re.findall(r"^\| `(llava_manager/\w+/\w+/)`", row)}

    def listed(module: str) -> bool:
        folder, _, name = module.rpartition("/")
        in_row = any(f"`{folder}/`" in row and f"`{name}`" in row for row in rows)
        return module in named or in_row or any(module.startswith(f) for f in whole)

    package = PACKAGE_PARENT / "llava_manager"
    modules = sorted(p.relative_to(PACKAGE_PARENT).as_posix() for p in package.rglob("*.py"))
    unlisted = [m for m in modules if not m.endswith("/__init__.py") and not listed(m)]
    assert not unlisted, f"docs/development.md's file map leaves out {unlisted}"


def test_the_checks_catch_what_is_wrong(tmp_path):
    """The checks fail on a broken link, a missing anchor, a wrong path and a wrong module, against the filesystem."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "llava_manager").mkdir()
    (tmp_path / "llava_manager" / "real.py").write_text("")
    page = tmp_path / "docs" / "page.md"
    text = (
        "# Page\n\n## A `code` heading\n\n[ok](#a-code-heading) [self](page.md#page) [gone](#nowhere)\n"
        "[up](../llava_manager/real.py) [missing](../llava_manager/missing.py) ![img](figure.png)\n\n"
        "`llava_manager/real.py`, `llava_manager/moved.py`, `runs/stage2/checkpoint-*`, `{output_dir}/x.json`\n\n"
        "```bash\npython -m llava_manager.real && python -m llava_manager.gone && python recipes/absent.py\n```\n"
    )
    page.write_text(text)
    links = link_problems(page, text, root=tmp_path)
    assert [p.split(":")[0] for p in links] == ["#nowhere", "../llava_manager/missing.py", "figure.png"]
    paths = path_problems(text, root=tmp_path)
    assert paths == [
        "`llava_manager/moved.py`: no such file or folder",
        "`recipes/absent.py`: no such file or folder",
        "python -m llava_manager.gone: no such module",
    ]
