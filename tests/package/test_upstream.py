"""The upstream internals `llava_manager.upstream` registers: each one as the installed releases have it, the checker's
messages on a broken one, the registry in step with our code, and no upstream private API used without an entry."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import llava_manager
from llava_manager import upstream
from llava_manager.upstream import REGISTRY, UpstreamAPI, check, check_all

# The package under test (the source tree, or an installed wheel) and the folder that holds it: `used_in` paths are
# relative to that folder.
PACKAGE = Path(llava_manager.__file__).resolve().parent
ROOT = PACKAGE.parent
UPSTREAM_ROOTS = frozenset(upstream.OWNERS.values())
OPTIONAL_ROOTS = frozenset({"deepspeed", "lmms_eval", "peft"})


# ---- (a) every registered API, as the installed releases have it -------------------------------------------------
@pytest.mark.parametrize("api", REGISTRY, ids=[api.dotted for api in REGISTRY])
def test_registered_api(api: UpstreamAPI) -> None:
    if upstream.installed_version(api.owner) is None:
        pytest.skip(f"{api.owner} is not installed (optional)")
    message = check(api)
    assert message is None, message


def test_registry_is_well_formed() -> None:
    dotted = [api.dotted for api in REGISTRY]
    assert len(dotted) == len(set(dotted)), sorted({d for d in dotted if dotted.count(d) > 1})
    for api in REGISTRY:
        assert api.owner in upstream.OWNERS, api
        assert api.kind in upstream.KINDS, api
        assert api.dotted.split(".")[0] == upstream.OWNERS[api.owner], f"{api.dotted} is not under {api.owner}"
        assert api.why.strip() and api.files, api
        assert 0 <= api.positional <= len(api.params), api
        assert not (api.params and api.kind in ("module", "attribute")), api


def test_check_all_is_clean() -> None:
    assert check_all() == []


# ---- (b) negative controls: a broken entry gives a message that names it ------------------------------------------
def _fabricated(dotted: str, kind: str = "method", **fields) -> UpstreamAPI:
    return UpstreamAPI(
        dotted.split(".")[0],
        dotted,
        kind,
        "llava_manager/core/checkpoint.py",
        "a fabricated entry of the negative control",
        **fields,
    )


def _assert_names(message: str | None, *parts: str) -> None:
    assert message is not None
    for part in (
        f"torch {upstream.installed_version('torch')}",
        "llava_manager/core/checkpoint.py",
        "a fabricated entry of the negative control",
        "the tested range is torch",
        *parts,
    ):
        assert part in message, f"{part!r} not in {message!r}"


def test_missing_attribute_is_named() -> None:
    message = check(_fabricated("torch.nn.Module._no_such_hook_xyz"))
    _assert_names(message, "torch.nn.Module._no_such_hook_xyz", "is gone", "'_no_such_hook_xyz'")


def test_missing_module_path_is_named() -> None:
    message = check(_fabricated("torch.no_such_module_xyz.Thing.method"))
    _assert_names(message, "torch.no_such_module_xyz.Thing.method", "is gone", "'no_such_module_xyz'")
    assert "is gone" in check(_fabricated("torch.no_such_module_xyz", kind="module"))


def test_missing_parameter_is_named() -> None:
    api = _fabricated("torch.nn.Module.register_forward_hook", kind="signature", params=("hook", "no_such_param_xyz"))
    _assert_names(check(api), "torch.nn.Module.register_forward_hook", "no_such_param_xyz")


def test_positional_order_is_checked() -> None:
    api = _fabricated(
        "torch.utils.flop_counter.sdpa_flop_count",
        kind="function",
        params=("key_shape", "query_shape", "value_shape"),
        positional=3,
    )
    _assert_names(check(api), "sdpa_flop_count", "['key_shape', 'query_shape', 'value_shape']")


def test_missing_instance_attribute_is_named() -> None:
    message = check(_fabricated("torch.nn.Module._no_such_buffer_xyz", kind="attribute"))
    _assert_names(message, "torch.nn.Module._no_such_buffer_xyz", "neither sets nor reads")


def test_caller_that_no_longer_calls_is_named() -> None:
    api = _fabricated("torch.nn.Module.register_forward_hook", callers=("torch.utils.flop_counter.sdpa_flop_count",))
    _assert_names(check(api), "is no longer used by torch.utils.flop_counter.sdpa_flop_count")
    api = _fabricated("torch.nn.Module.register_forward_hook", callers=("torch.no_such_caller_xyz",))
    _assert_names(check(api), "its upstream caller torch.no_such_caller_xyz")


def test_missing_mention_is_named() -> None:
    api = _fabricated("torch.utils.flop_counter.sdpa_flop_count", kind="function", mentions=("no_such_text_xyz",))
    _assert_names(check(api), "no longer contains ['no_such_text_xyz']")


def test_uninstalled_owner_is_skipped(monkeypatch) -> None:
    broken = _fabricated("torch.nn.Module._no_such_hook_xyz")
    monkeypatch.setattr(upstream, "REGISTRY", (broken,))
    assert check_all() and check_all(owners=["torch"]) and check_all(owners=["deepspeed"]) == []
    monkeypatch.setattr(upstream, "installed_version", lambda owner: None)
    assert check(broken) is None
    assert check_all() == []


def test_unknown_owner_is_refused() -> None:
    api = UpstreamAPI("torchvision", "torchvision.ops.nms", "function", "llava_manager/core/patch.py", "fabricated")
    assert "unknown owner 'torchvision'" in check(api)


# ---- (c) the registry in step with our code -------------------------------------------------------------------------
def test_used_in_files_mention_the_api() -> None:
    problems = []
    for api in REGISTRY:
        for file in api.files:
            path = ROOT / file
            if not path.is_file():
                problems.append(f"{api.dotted}: used_in {file} does not exist")
            elif not re.search(rf"\b{re.escape(api.name)}\b", path.read_text()):
                problems.append(f"{api.dotted}: {file} does not mention {api.name} any more (stale entry?)")
    assert not problems, "\n".join(problems)


# ---- (d) completeness: no upstream private API used or overridden without an entry ----------------------------------
SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "upstream.py")
_DUNDER = re.compile(r"^__\w+__$")
# `x._name` (an attribute access on anything), getattr / hasattr / setattr with a private name.
_ACCESS = re.compile(r"(?<=[\w)\]])\._([A-Za-z]\w*)")
_DYNAMIC = re.compile(r"\b(?:get|has|set|del)attr\(\s*[^,()]+,\s*[\"'](_[A-Za-z]\w*)[\"']")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _own_names() -> set[str]:
    """Every name our package defines: functions, classes, assignment targets, imports, module names."""
    names = {p.stem for p in PACKAGE.rglob("*.py")}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.alias):
                names.add((node.asname or node.name).split(".")[0])
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return names


def test_private_accesses_are_registered_or_our_own() -> None:
    registered = {api.name for api in REGISTRY}
    own = _own_names()
    problems = []
    for path in SOURCES:
        text = path.read_text()
        for name in {"_" + m for m in _ACCESS.findall(text)} | set(_DYNAMIC.findall(text)):
            if not _DUNDER.match(name) and name not in registered and name not in own:
                problems.append(
                    f"{path.relative_to(ROOT)} uses {name}, which is neither ours nor in "
                    f"llava_manager/upstream.py's REGISTRY"
                )
    assert not problems, "\n".join(sorted(problems))


def _private_members(cls_node: ast.ClassDef) -> set[str]:
    """Private names a class defines: methods, class attributes, and `self._x = ...` in its methods."""
    names = set()
    for node in cls_node.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, (ast.AnnAssign, ast.AugAssign))
            else []
        )
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    for node in ast.walk(cls_node):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        ):
            names.add(node.attr)
    return {n for n in names if n.startswith("_") and not _DUNDER.match(n)}


def _classes() -> dict[str, tuple[ast.ClassDef, bool]]:
    """ "module:qualname" -> (class node, reachable from its module by qualname) for every class of the package."""
    found = {}

    def visit(node, module, prefix, reachable):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                found[f"{module}:{prefix}{child.name}"] = (child, reachable)
                visit(child, module, f"{prefix}{child.name}.", reachable)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, module, f"{prefix}{child.name}.<locals>.", False)

    for path in SOURCES:
        visit(ast.parse(path.read_text()), _module_name(path), "", True)
    return found


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] in OPTIONAL_ROOTS:
            return None  # an optional dependency is missing: its subclasses cannot be checked here
        raise


def _upstream_bases(cls: type) -> list[type]:
    return [base for base in cls.__mro__ if base.__module__.split(".")[0] in UPSTREAM_ROOTS]


def _upstream_defines(bases: list[type], name: str) -> type | None:
    """The first upstream class that has `name` or whose source sets / reads it."""
    for base in bases:
        if name in vars(base) or upstream.refers_to(upstream.source_of(base), name):
            return base
    return None


def test_upstream_subclasses_register_their_private_overrides() -> None:
    """A private name defined in a subclass of an upstream class (or in a mixin of one) is either an override of an
    upstream member, which must be registered against a class of that MRO, or our own helper, which must be in
    OWN_PRIVATE_HELPERS and must not exist upstream (a release adding it would be overridden silently)."""
    classes = _classes()
    entries: dict[str, list[UpstreamAPI]] = {}
    for api in REGISTRY:
        entries.setdefault(api.name, []).append(api)
    problems, checked = [], {}
    for key, (node, reachable) in classes.items():
        module_name, qualname = key.split(":")
        if module_name.endswith("__main__"):
            continue
        if not reachable:
            if _private_members(node):
                problems.append(f"{key} is defined inside a function: its private members cannot be checked")
            continue
        module = _import(module_name)
        if module is None:
            continue
        cls = module
        for part in qualname.split("."):
            cls = getattr(cls, part)
        bases = _upstream_bases(cls)
        if not bases:
            continue
        for ours in cls.__mro__:
            ours_key = f"{ours.__module__}:{ours.__qualname__}"
            if ours_key in classes and ours_key not in checked:
                checked[ours_key] = bases
    for ours_key, bases in sorted(checked.items()):
        allowed = set(upstream.OWN_PRIVATE_HELPERS.get(ours_key, ()))
        members = _private_members(classes[ours_key][0])
        for name in sorted(members):
            base = _upstream_defines(bases, name)
            if base is None:
                if name not in allowed:
                    problems.append(
                        f"{ours_key} defines {name}: add it to OWN_PRIVATE_HELPERS (our own helper) or "
                        f"register the upstream member it relies on in REGISTRY"
                    )
                continue
            owners = []
            for api in entries.get(name, ()):
                try:
                    owners.append(upstream.resolve(api.dotted.rsplit(".", 1)[0]))
                except upstream._Problem:
                    pass
            mro = set(_upstream_bases(base)) | set(bases)
            if not any(owner in mro for owner in owners):
                where = f"{base.__module__}.{base.__qualname__}"
                problems.append(
                    f"{ours_key} defines {name}, which {where} also has or uses: register it in "
                    f"llava_manager/upstream.py (an override of an upstream private member)"
                    + (" rather than listing it in OWN_PRIVATE_HELPERS" if name in allowed else "")
                )
        for name in sorted(allowed - members):
            problems.append(f"OWN_PRIVATE_HELPERS[{ours_key!r}] lists {name}, which the class no longer defines")
    for key in sorted(set(upstream.OWN_PRIVATE_HELPERS) - set(checked)):
        if _import(key.split(":")[0]) is not None:
            problems.append(f"OWN_PRIVATE_HELPERS lists {key}, which is not a subclass of an upstream class")
    assert checked, "found no subclass of an upstream class: the scan is broken"
    assert not problems, "\n".join(problems)
