"""The response store of the lmms-eval models (`llava_manager.evaluation.responses`) on its own: answers read back
exactly (+inf and "" included), a torn last line is dropped and logged, every rank's file is read, and the
fingerprint follows the model's files and settings; and `python -m llava_manager.evaluation`'s exit status when
lmms-eval reports no failure but wrote no results, in process (the command line runs are in test_lmms_eval.py)."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest

pytest.importorskip("lmms_eval")

from loguru import logger  # noqa: E402

from llava_manager.evaluation import responses  # noqa: E402
from llava_manager.evaluation.responses import ResponseStore, fingerprint, request_key, store_folder  # noqa: E402

ABOUT = {"kind": "loglikelihood", "task": "t", "doc_id": 0}
SETTINGS = {"dtype": "torch.float32", "device": "cpu", "prompt_format": "qwen_1_5"}


@pytest.fixture
def logged():
    """The messages loguru logs (lmms-eval's and our model's logger) during the test."""
    messages = []
    sink = logger.add(lambda message: messages.append(message.record["message"]), level="INFO")
    yield messages
    logger.remove(sink)


def test_answers_read_back_exactly(tmp_path):
    answers = {
        "a": (float("inf"), False),  # a refused document's choice
        "b": (0.1 + 0.2, True),  # not a short decimal
        "c": (5e-324, False),  # the smallest subnormal
        "d": (math.nextafter(3.0, 4.0), True),
        "e": "",  # a refused document's answer
        "f": 'red "quoted"\nline ü',
    }
    store = ResponseStore(tmp_path, "f" * 32)
    store.add([(key, ABOUT, answer) for key, answer in answers.items()])
    again = ResponseStore(tmp_path, "f" * 32)
    assert again.answers == answers
    assert [type(again[k][0]) for k in "abcd"] == [float] * 4 and again["a"][0] == math.inf
    # standard JSON: no Infinity / NaN tokens that other readers refuse
    for line in store.path.read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))


def test_a_torn_last_line_is_dropped_logged_and_cut_off(tmp_path, logged):
    store = ResponseStore(tmp_path, "a" * 32)
    store.add([("x", ABOUT, "red"), ("y", ABOUT, (1.5, True))])
    with store.path.open("a") as handle:
        handle.write('{"key": "z", "kind": "generate_until", "te')  # a crash in the middle of a write
    reopened = ResponseStore(tmp_path, "a" * 32)
    assert reopened.answers == {"x": "red", "y": (1.5, True)}
    assert any("dropped 1 unreadable line(s)" in m and store.path.name in m for m in logged)
    # the torn tail is cut off this rank's file, so the next answer gets a line of its own
    reopened.add([("z", ABOUT, "blue")])
    logged.clear()
    assert ResponseStore(tmp_path, "a" * 32).answers == {"x": "red", "y": (1.5, True), "z": "blue"}
    assert not any("dropped" in m for m in logged)


def test_every_ranks_file_of_the_fingerprint_is_read(tmp_path):
    ResponseStore(tmp_path, "b" * 32, rank=1).add([("from-rank-1", ABOUT, "red")])
    ResponseStore(tmp_path, "c" * 32, rank=0).add([("other-model", ABOUT, "blue")])
    store = ResponseStore(tmp_path, "b" * 32, rank=0)
    assert store.answers == {"from-rank-1": "red"}  # a rerun with fewer processes reuses rank 1's answers
    store.add([("from-rank-0", ABOUT, "green")])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{'b' * 32}.rank0.jsonl", f"{'b' * 32}.rank1.jsonl"] + [
        f"{'c' * 32}.rank0.jsonl"
    ]


def test_the_fingerprint_follows_the_model_files_and_settings(tmp_path):
    model, manager = tmp_path / "model", tmp_path / "manager"
    model.mkdir()
    manager.mkdir()
    (model / "model.safetensors").write_bytes(b"0" * 100)
    (model / "config.json").write_text("{}")
    (manager / "manager_model.safetensors").write_bytes(b"1" * 10)
    first = fingerprint(model, None, "main", SETTINGS)
    assert fingerprint(str(model) + "/", None, "main", dict(reversed(SETTINGS.items()))) == first
    (model / "README.md").write_text("notes")  # not a weight or config file
    assert fingerprint(model, None, "main", SETTINGS) == first

    seen = {first}

    def changed(value: str) -> None:
        assert value not in seen
        seen.add(value)

    stat = (model / "model.safetensors").stat()
    os.utime(model / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # retrained, same size
    changed(fingerprint(model, None, "main", SETTINGS))
    (model / "model.safetensors").write_bytes(b"0" * 101)
    changed(fingerprint(model, None, "main", SETTINGS))
    changed(fingerprint(model, manager, "main", SETTINGS))
    (manager / "manager_model.safetensors").write_bytes(b"2" * 11)
    changed(fingerprint(model, manager, "main", SETTINGS))
    changed(fingerprint(model, manager, "main", {**SETTINGS, "dtype": "torch.bfloat16"}))
    # a Hub id (not a local folder): the id and the revision
    changed(fingerprint("owner/name", None, "main", SETTINGS))
    changed(fingerprint("owner/name", None, "v2", SETTINGS))
    assert fingerprint("owner/name", None, "v2", SETTINGS) == fingerprint("owner/name", None, "v2", SETTINGS)


def test_request_keys():
    base = ("generate_until", "task", "test", 3, "What colour ?", {"max_new_tokens": 4, "until": ["."]})
    key = request_key(*base)
    assert request_key(*base[:5], {"until": ["."], "max_new_tokens": 4}) == key  # the kwargs' order does not count
    variants = [
        ("loglikelihood", *base[1:]),
        (base[0], "other", *base[2:]),
        (*base[:2], "val", *base[3:]),
        (*base[:3], 4, *base[4:]),
        (*base[:4], "What colour ? ", base[5]),
        (*base[:5], {"max_new_tokens": 5, "until": ["."]}),
    ]
    keys = {request_key(*v) for v in variants} | {request_key(*base, occurrence=1)}
    assert len(keys) == len(variants) + 1 and key not in keys


def test_store_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(responses.ENV, str(tmp_path / "env"))
    assert store_folder("auto") == store_folder(None) == tmp_path / "env"
    monkeypatch.setenv(responses.ENV, "none")  # the default store turned off for a whole environment (tests, CI)
    assert store_folder("auto") is None and store_folder(str(tmp_path / "mine")) == tmp_path / "mine"
    monkeypatch.delenv(responses.ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store_folder("auto") == tmp_path / "home" / ".cache" / "llava_manager" / "lmms_eval_responses"
    assert store_folder("none") is store_folder("False") is None
    assert store_folder(str(tmp_path / "mine")) == tmp_path / "mine"
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"response_cache: .*file is a file, not a folder; give a folder, 'auto'"):
        store_folder(str(tmp_path / "file"))
    with pytest.raises(ValueError, match="response_cache is empty"):
        store_folder("")


# ---- python -m llava_manager.evaluation: no exception, but no results file ------------------------------------------
def evaluate_in_process(monkeypatch, tmp_path, single) -> int:
    """`main` on a command line whose lmms-eval evaluation is `single` (in place of cli_evaluate_single)."""
    import lmms_eval.__main__ as cli

    from llava_manager.evaluation.__main__ import main

    monkeypatch.setattr(cli, "cli_evaluate_single", single)
    monkeypatch.setattr(sys, "argv", ["pytest"])
    status = main(["--model", "llava_manager", "--tasks", "shapes_gen", "--output_path", str(tmp_path / "out")])
    assert sys.argv == ["pytest"] and cli.cli_evaluate_single is single  # put back
    return status


def test_a_run_that_writes_no_results_fails(monkeypatch, tmp_path, capsys):
    earlier = tmp_path / "out" / "model" / "2025-01-01T00-00-00_results.json"  # an earlier run's: does not count
    earlier.parent.mkdir(parents=True)
    earlier.write_text("{}")
    assert evaluate_in_process(monkeypatch, tmp_path, lambda args: (None, None)) == 1
    [line] = [line for line in capsys.readouterr().err.splitlines() if "llava-manager-eval: error" in line]
    assert f"wrote no *_results.json under --output_path {tmp_path / 'out'}" in line


def test_a_run_that_writes_results_succeeds(monkeypatch, tmp_path, capsys):
    def single(args):
        folder = tmp_path / "out" / "model"
        folder.mkdir(parents=True)
        (folder / "2026-01-01T00-00-00_results.json").write_text("{}")
        return None, None

    assert evaluate_in_process(monkeypatch, tmp_path, single) == 0
    assert "llava-manager-eval: error" not in capsys.readouterr().err


def test_an_evaluation_that_raises_fails(monkeypatch, tmp_path, capsys):
    def single(args):
        raise RuntimeError("the model broke\n  on line two")

    assert evaluate_in_process(monkeypatch, tmp_path, single) == 1
    [line] = [line for line in capsys.readouterr().err.splitlines() if "llava-manager-eval: error" in line]
    assert line.endswith(
        "lmms-eval failed on --model llava_manager --tasks shapes_gen: RuntimeError: the model broke on line two"
    )
