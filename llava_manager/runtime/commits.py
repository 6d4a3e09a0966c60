"""Checkpoint commit points: a checkpoint counts only once everything it holds is on disk.

After every process has written its part of `checkpoint-N` (weights, optimizer, scheduler, RNG, trainer state, and
DeepSpeed's or FSDP's own files), the main process writes `checkpoint_complete.json`, listing every file with its size,
through a temporary file that is fsynced and renamed. A folder without it is the torn leftover of a save that did not
finish. `--resume_from_checkpoint last` takes the newest complete checkpoint and names the incomplete ones it skips;
an explicit incomplete checkpoint is an error naming what is missing, raised before any weight is loaded; so is
`last` with no complete checkpoint (never a silent restart from step 0). `auto` is `last`, except that a run folder
without any checkpoint folder starts from step 0 (the first start of a job that requeues itself). Rotation
(`--save_total_limit`) counts complete checkpoints only, and a save removes the torn folders a crash left behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

MARKER = "checkpoint_complete.json"
_STEP = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class IncompleteCheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from exactly: torn, with files missing, or holding the model only."""


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (a full disk, a quota, a failing device); the message says where and what."""


def _is_disk_full(error: BaseException) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


_WRITING = "while writing "


@contextlib.contextmanager
def naming_failed_writes():
    """While it is active, an error of `torch.save` carries a note naming the file it was writing: torch's own
    (`basic_ios::clear: iostream error`, `unexpected pos`) names none. The Trainer, DeepSpeed and accelerate all save
    through `torch.save`; the original is back afterwards."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        try:
            return real(obj, f, *args, **kwargs)
        except (OSError, RuntimeError) as error:
            error.add_note(f"{_WRITING}{f}")
            raise

    torch.save = save
    try:
        yield
    finally:
        torch.save = real


def describe_write_failure(folder: Path, error: BaseException) -> str:
    """What failed while saving `folder`: the error, the file, the space left, and what counts now."""
    where = next(p for p in (folder, *folder.parents) if p.is_dir())
    free = shutil.disk_usage(where).free
    files = [note[len(_WRITING) :] for note in getattr(error, "__notes__", ()) if note.startswith(_WRITING)]
    cause = (
        "the disk is full (or the quota is reached)"
        if _is_disk_full(error)
        else "a write failed (a full disk, a quota or a failing device; torch reports all of them as "
        "`basic_ios::clear: iostream error` or `unexpected pos`)"
    )
    complete = [f.name for f in checkpoints(folder.parent) if f != folder and not problems(f, resuming=False)]
    return (
        f"saving {folder} failed: {type(error).__name__}: {error}. {cause[0].upper()}{cause[1:]}: "
        f"{free / 2**30:.2f} GiB free on the disk holding {where}"
        f"{f'; the file being written: {files[0]}' if files else ''}. "
        f"Nothing of this save counts: {folder.name} has no {MARKER}; `--resume_from_checkpoint last` skips it "
        f"(the newest complete checkpoint: {complete[-1] if complete else 'none'}) and the next save at that step "
        f"replaces it."
    )


def _files(folder: Path) -> dict[str, int]:
    return {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in (MARKER, MARKER + ".tmp")
    }


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def commit(folder: str | Path, *, model_only: bool = False) -> Path:
    """Marks `folder` complete: every file in it, with its size, in `MARKER`, written atomically (temp file, fsync,
    rename, fsync of the folder). Call it once every process has finished writing."""
    folder = Path(folder)
    files = _files(folder)
    for name in files:
        with open(folder / name, "rb") as handle:  # the data itself on disk before the marker says so
            os.fsync(handle.fileno())
    temporary = folder / (MARKER + ".tmp")
    with open(temporary, "w") as handle:
        json.dump({"files": files, "model_only": model_only}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, folder / MARKER)
    _fsync_dir(folder)
    return folder / MARKER


def problems(folder: str | Path, *, resuming: bool = True) -> list[str]:
    """What keeps `folder` from being a complete checkpoint (empty when it is one); with `resuming`, also what keeps
    a complete one from resuming a run exactly (it holds the model only)."""
    folder = Path(folder)
    marker = folder / MARKER
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    if not marker.is_file():
        return [f"no {MARKER}: the save did not finish (the process was stopped while writing, or the disk was full)"]
    saved = json.loads(marker.read_text())
    found = []
    for name, size in saved["files"].items():
        path = folder / name
        if not path.is_file():
            found.append(f"{name} is missing")
        elif path.stat().st_size != size:
            found.append(f"{name} has {path.stat().st_size} bytes, {size} when it was saved")
    if resuming and saved.get("model_only"):
        found.append(
            "it holds the model only (--save_only_model): no optimizer, scheduler or RNG state to resume; "
            "start a new run from its weights with --model_name_or_path instead"
        )
    return found


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The `checkpoint-N` folders of `run_dir`, by step."""
    run_dir = Path(run_dir)
    found = [p for p in run_dir.iterdir() if p.is_dir() and _STEP.match(p.name)] if run_dir.is_dir() else []
    return sorted(found, key=lambda p: int(_STEP.match(p.name).group(1)))


def _describe(folder: Path, found: list[str]) -> str:
    return f"{folder.name} ({'; '.join(found)})"


def resolve(setting, run_dir: str | Path) -> str | None:
    """The checkpoint `--resume_from_checkpoint setting` resumes from, checked complete before anything loads."""
    if setting in (None, False, "", "False", "false"):
        return None
    if setting == "auto" and not checkpoints(run_dir):  # a job's first start: no checkpoint folder at all yet
        logger.info("--resume_from_checkpoint auto: no checkpoint in %s, starting from step 0", run_dir)
        return None
    if setting in (True, "True", "true", "last", "auto"):
        name = "auto" if setting == "auto" else "last"
        found = [(folder, problems(folder)) for folder in checkpoints(run_dir)]
        complete = [folder for folder, issues in found if not issues]
        if not complete:
            listed = "; ".join(_describe(f, i) for f, i in found) or "none"
            raise IncompleteCheckpointError(
                f"--resume_from_checkpoint {name}: no complete checkpoint in {run_dir} (checkpoints: {listed}). "
                f"Nothing was resumed; to train from step 0, leave out --resume_from_checkpoint."
            )
        chosen = complete[-1]
        for folder, issues in found:
            if issues and folder.name != chosen.name:
                logger.warning(
                    "--resume_from_checkpoint %s: skipping the incomplete %s", name, _describe(folder, issues)
                )
        logger.info("--resume_from_checkpoint %s: resuming from %s", name, chosen)
        return str(chosen)
    folder = Path(setting)
    issues = problems(folder)
    if issues:
        others = [f.name for f in checkpoints(folder.parent) if not problems(f)]
        raise IncompleteCheckpointError(
            f"--resume_from_checkpoint {folder}: not a complete checkpoint: {'; '.join(issues)}. "
            f"Complete checkpoints beside it: {', '.join(others) or 'none'} (--resume_from_checkpoint last takes "
            f"the newest)."
        )
    return str(folder)


def remove_torn(folder: Path) -> None:
    """Removes `folder` if a crashed save left it incomplete, so the new save does not mix with its files."""
    found = problems(folder, resuming=False) if folder.is_dir() else []
    if found:
        logger.warning("removing %s, left incomplete by an earlier save", _describe(folder, found))
        shutil.rmtree(folder)


def rotate(run_dir: str | Path, limit: int | None, keep: str | None = None) -> list[Path]:
    """Removes the torn checkpoints of `run_dir` and, past `limit`, the oldest complete ones; never the newest
    complete one nor `keep` (the best model's). Returns what it removed."""
    found = checkpoints(run_dir)
    complete = [folder for folder in found if not problems(folder, resuming=False)]
    removed = [folder for folder in found if folder not in complete]
    if limit and len(complete) > limit:
        best = Path(keep).resolve() if keep else None
        candidates = [folder for folder in complete[:-1] if folder.resolve() != best]
        removed += candidates[: len(complete) - limit]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


class CommittedCheckpoints:
    """Trainer mixin: each checkpoint is committed (`commit`) once every process has written it; rotation counts
    complete checkpoints only (`rotate`); a torn folder at the same step is removed before the save. A subclass adds
    its own run state to the checkpoint, before the commit, with `save_run_state(folder)` (called on every process).
    """

    def save_run_state(self, folder: Path) -> None:
        """Writes what else the run needs to resume exactly (counters, reports) into `folder`; nothing here."""

    def _save_checkpoint(self, model, trial):
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            remove_torn(folder)
        self.accelerator.wait_for_everyone()
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # the Trainer's rotation counts torn folders; `rotate` below does not
        try:
            with naming_failed_writes():
                super()._save_checkpoint(model, trial)
                self.save_run_state(folder)
        except (OSError, RuntimeError, SafetensorError) as error:  # how torch, safetensors, DeepSpeed fail a write
            raise CheckpointWriteError(describe_write_failure(folder, error)) from error
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every process has written its part
        if self.args.should_save:
            commit(folder, model_only=bool(self.args.save_only_model))
            rotate(folder.parent, limit, keep=self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()
