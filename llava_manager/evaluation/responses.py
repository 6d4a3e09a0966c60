"""The response store of the lmms-eval models (`lmms_eval_model`): every answer (a generated text, or a
(negative log-likelihood, greedy) pair) is appended to disk as soon as it is made, so that an evaluation that died
part of the way, rerun with the same command, answers the documents it had finished from disk and runs the model on
the rest only.

Where: one JSON-lines file per model fingerprint and process rank, `<folder>/<fingerprint>.rank<r>.jsonl`
(`store_folder` says which folder). The fingerprint (`fingerprint`) covers the model, its files included (name, size
and modification time of every weight and config file in `pretrained` and `manager_path`: retraining into the same
folder gives another fingerprint; a Hub id is taken with its revision), and the settings that change an answer;
each line's key (`request_key`) covers the request: its kind, task, split, document, context and generation
arguments (or continuation). Batch size and process count are in neither: answers do not depend on them, and a
store reads the files of every rank of its fingerprint.

A line is `{"key", "kind", "task", "doc_id", "text"}` (generation) or `{"key", ..., "nll", "greedy"}`
(loglikelihood, `nll` written as `repr(float)` so that it reads back as the very same float, +inf included).
A crash can leave the last line of a file torn: it is dropped (and logged) when the store is opened.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from loguru import logger as eval_logger

ENV = "LLAVA_MANAGER_RESPONSE_CACHE"
DEFAULT_FOLDER = "~/.cache/llava_manager/lmms_eval_responses"
OFF = ("none", "false")
# The files of a model folder (top level) whose name, size and modification time make the fingerprint.
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".jinja", ".model", ".txt")


def store_folder(value: str | None) -> Path | None:
    """The folder of the `response_cache` model arg: "auto" (or None): $LLAVA_MANAGER_RESPONSE_CACHE, else
    ~/.cache/llava_manager/lmms_eval_responses; "none" / "false" (as the argument or the variable): no store (None);
    anything else: that folder."""
    value = "auto" if value is None else str(value).strip()
    if not value:
        raise ValueError(f"response_cache is empty: give a folder, 'auto' (${ENV} or {DEFAULT_FOLDER}) or 'none'.")
    if value.lower() == "auto":
        value = os.environ.get(ENV, "").strip() or DEFAULT_FOLDER
    if value.lower() in OFF:
        return None
    folder = Path(value).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"response_cache: {folder} is a file, not a folder; give a folder, 'auto' or 'none'.")
    return folder


def model_files(path: str | os.PathLike, revision: str | None = None) -> dict:
    """What identifies the model at `path`: a local folder's resolved path and, for each weight and config file in
    it, [name, size, mtime_ns]; a Hub id (not a local folder): the id and `revision`."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return {"hub": str(path), "revision": revision}
    folder = folder.resolve()
    files = []
    for file in sorted(folder.iterdir()):
        if file.suffix in MODEL_FILE_SUFFIXES and file.is_file():
            stat = file.stat()
            files.append([file.name, stat.st_size, stat.st_mtime_ns])
    return {"folder": str(folder), "files": files}


def fingerprint(
    pretrained: str | os.PathLike, manager_path: str | os.PathLike | None, revision: str | None, settings: dict
) -> str:
    """The name of a model's store files: a hash of its files (`model_files` of `pretrained`, and of `manager_path`
    when given) and of `settings` (dtype, device type, prompt format, ...: whatever changes an answer)."""
    identity = {
        "pretrained": model_files(pretrained, revision),
        "manager": model_files(manager_path) if manager_path else None,
        "settings": settings,
    }
    return _hash(identity)[:32]


def request_key(kind: str, task: str, split: str, doc_id: Any, context: str, request: Any, occurrence: int = 0) -> str:
    """The key of one request: `request` is the generation kwargs (generate_until) or the continuation
    (loglikelihood); `occurrence` tells apart identical requests of one call (lmms-eval's repeats)."""
    return _hash([kind, task, split, doc_id, context, request, occurrence])


def _hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


class ResponseStore:
    """The answers of one model fingerprint: those of every earlier run (all ranks' files) in `answers`; `add`
    appends new ones to this rank's file, flushed and fsynced."""

    def __init__(self, folder: str | os.PathLike, fingerprint: str, rank: int = 0) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OSError(
                f"response_cache: cannot create the response store folder {self.folder} ({error}); give another "
                f"folder, or response_cache=none to run without a store."
            ) from error
        self.path = self.folder / f"{fingerprint}.rank{rank}.jsonl"
        self.answers: dict[str, Any] = {}
        dropped = {}
        for file in sorted(self.folder.glob(f"{fingerprint}.*.jsonl")):
            dropped[file.name] = self._read(file, own=file == self.path)
        if any(dropped.values()):
            counts = ", ".join(f"{n} of {name}" for name, n in dropped.items() if n)
            eval_logger.warning(
                f"response store {self.folder}: dropped {sum(dropped.values())} unreadable line(s) ({counts}), a line "
                "torn by an interrupted run; their requests run again."
            )

    def _read(self, file: Path, own: bool) -> int:
        """Reads `file` into `answers`; returns how many lines could not be read. This rank's own file loses its torn
        tail (a last line without its newline), so that new lines start on a line of their own."""
        data = file.read_bytes()
        complete, _, tail = data.rpartition(b"\n")
        dropped = 1 if tail else 0
        if tail and own:
            with file.open("r+b") as handle:
                handle.truncate(len(data) - len(tail))
        for line in complete.split(b"\n") if complete else []:
            try:
                record = json.loads(line)
                self.answers[record["key"]] = (
                    (float(record["nll"]), bool(record["greedy"])) if "nll" in record else record["text"]
                )
            except (ValueError, KeyError, TypeError):
                dropped += 1
        return dropped

    def __contains__(self, key: str) -> bool:
        return key in self.answers

    def __getitem__(self, key: str) -> Any:
        return self.answers[key]

    def add(self, entries: list[tuple[str, dict, Any]]) -> None:
        """Appends (key, {"kind", "task", "doc_id"}, answer) entries, an answer being a text or an (nll, greedy)
        pair, in one write, then flushes and fsyncs the file."""
        if not entries:
            return
        lines = []
        for key, about, answer in entries:
            if isinstance(answer, str):
                record = {"key": key, **about, "text": answer}
            else:
                nll, greedy = answer
                record = {"key": key, **about, "nll": repr(float(nll)), "greedy": bool(greedy)}
            lines.append(json.dumps(record, ensure_ascii=False, allow_nan=False, default=str) + "\n")
            self.answers[key] = answer if isinstance(answer, str) else (float(answer[0]), bool(answer[1]))
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
