"""The data of a recipe: synthetic stand-ins of the task's layout for the embedded default, or the published splits
read from `--data_path` / `--image_folder` (`read_split`, `build_data`), then the task's datasets and collators
(`attach_collators`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import data as tower_data
from ..data.synthetic import write_synthetic
from .args import TowerArgs, TowerDataArguments

logger = logging.getLogger(__name__)


@dataclass
class TaskData:
    train: Any
    eval: Any | None
    train_collator: Any
    eval_collator: Any
    label2ans: list[str] | None = None
    retrieval: dict | None = None
    skipped: dict = field(default_factory=dict)


def synthetic_data(args: TowerArgs) -> None:
    """Point --data_path / --image_folder (and pretrain's eval set) at synthetic stand-ins written into
    `{output_dir}/synthetic_data` (main process first)."""
    d, t = args.data, args.training
    folder = Path(t.output_dir) / "synthetic_data"
    seed = t.data_seed if t.data_seed is not None else t.seed
    with t.main_process_first(desc="synthetic data"):
        paths = write_synthetic(folder / args.task, args.task, d.synthetic_samples, seed=seed)
        if args.task == "pretrain":
            held_out = write_synthetic(
                folder / "pretrain_eval", "pretrain", max(16, d.synthetic_samples // 8), seed=seed + 1
            )
    if args.task == "pretrain":
        d.data_path, d.image_folder = str(paths["annotations"]), str(paths["image_folder"])
        d.eval_data_path, d.eval_image_folder = str(held_out["annotations"]), str(held_out["image_folder"])
    elif args.task == "vqav2":
        d.data_path = d.image_folder = str(paths["root"])
    elif args.task == "snli_ve":
        d.data_path, d.image_folder = str(paths["train"].parent), str(paths["image_folder"])
    elif args.task == "nlvr2":
        d.data_path, d.image_folder = str(paths["train"].parent), str(paths["root"])
    else:
        d.data_path, d.image_folder = str(paths["annotations"]), str(paths["image_folder"])
    logger.info("synthetic %s data in %s", args.task, folder)


def read_split(task: str, d: TowerDataArguments, splits: str) -> tower_data.ReadResult:
    """The records of `splits` (comma list) of `task` from --data_path / --image_folder."""
    records, skipped = [], []
    for split in [s.strip() for s in splits.split(",") if s.strip()]:
        root = Path(d.data_path)
        if task == "pretrain":
            if split == "train":
                result = tower_data.read_image_captions(d.data_path, d.image_folder, d.check_images)
            else:
                result = tower_data.read_image_captions(
                    d.eval_data_path, d.eval_image_folder or d.image_folder, d.check_images
                )
        elif task == "vqav2":
            questions = root / f"v2_OpenEnded_mscoco_{split}_questions.json"
            annotations = root / f"v2_mscoco_{split}_annotations.json"
            result = tower_data.read_vqav2(
                questions, annotations if annotations.is_file() else None, d.image_folder, d.check_images
            )
        elif task == "snli_ve":
            result = tower_data.read_snli_ve(root / f"snli_ve_{split}.jsonl", d.image_folder, d.check_images)
        elif task == "nlvr2":
            result = tower_data.read_nlvr2(root / f"{split}.json", d.image_folder, d.check_images)
        else:
            result = tower_data.read_flickr30k_karpathy(d.data_path, d.image_folder, (split,), d.check_images)
        records += result.records
        skipped += [{**s, "split": split} for s in result.skipped]
    return tower_data.ReadResult(records, skipped)


def build_data(args: TowerArgs, processor) -> TaskData:
    task, d = args.task, args.data
    if d.data_path is None:
        synthetic_data(args)
    elif d.image_folder is None:
        raise ValueError("--data_path needs --image_folder (see --help for each task's layout).")
    evaluate = (d.eval_split or "none").lower() != "none" and (task != "pretrain" or d.eval_data_path is not None)
    train = read_split(task, d, d.train_split)
    held = read_split(task, d, d.eval_split) if evaluate else tower_data.ReadResult([], [])
    if not train.records:
        raise ValueError(
            f"no usable {task} training sample in {d.data_path} ({d.train_split}); skipped: {train.skipped[:3]}"
        )
    train_records, eval_records = train.records, held.records
    label2ans = None
    if task == "vqav2":
        label2ans = tower_data.build_answer_vocab(train_records + eval_records, d.min_answer_count)
        train_records = tower_data.answerable(train_records, label2ans)
        eval_records = tower_data.answerable(eval_records, label2ans)
        if not train_records:
            raise ValueError(
                f"VQAv2: no training question has an answer given at least --min_answer_count "
                f"{d.min_answer_count} times ({len(label2ans)} answers qualify); lower it for a "
                f"small data set."
            )
        logger.info(
            "VQAv2: %d answers (given >= %d times), %d training and %d evaluation questions",
            len(label2ans),
            d.min_answer_count,
            len(train_records),
            len(eval_records),
        )
    if d.max_eval_samples is not None:
        eval_records = eval_records[: d.max_eval_samples]
    skipped = {"train": train.skipped, "eval": held.skipped}
    return TaskData(
        train=train_records,
        eval=eval_records if evaluate else None,
        train_collator=None,
        eval_collator=None,
        label2ans=label2ans,
        skipped=skipped,
    )


def attach_collators(args: TowerArgs, data: TaskData, processor, label2ans: list[str] | None) -> None:
    """Datasets and collators of the task (after the model, whose answer vocabulary VQAv2 uses)."""
    task, d, t = args.task, args.data, args.training
    length = d.max_text_len
    seed = t.data_seed if t.data_seed is not None else t.seed
    if task == "pretrain":
        collator = tower_data.PretrainCollator(processor, max_length=length, seed=seed)
    elif task == "vqav2":
        collator = tower_data.VQACollator(processor, max_length=length, label2ans=label2ans)
    elif task == "snli_ve":
        collator = tower_data.SNLIVECollator(processor, max_length=length)
    elif task == "nlvr2":
        collator = tower_data.NLVR2Collator(processor, max_length=length)
    else:
        collator = tower_data.RetrievalCollator(processor, max_length=length, return_image_ids=True)
    train, held = data.train, data.eval
    if task == "flickr30k":
        if held is not None:
            data.retrieval = tower_data.retrieval_set(held)
            held = tower_data.caption_pairs(held)
        train = tower_data.caption_pairs(train)
    data.train = tower_data.TowerDataset(train, strict=d.strict_data)
    data.eval = None if held is None else tower_data.TowerDataset(held, strict=d.strict_data)
    data.train_collator = data.eval_collator = collator
    data.label2ans = label2ans
