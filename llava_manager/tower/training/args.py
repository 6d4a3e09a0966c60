"""The recipes' arguments: the model, data and optimizer groups (`TowerModelArguments`, `TowerDataArguments`,
`TowerOptimArguments`) beside the `TrainingArguments`, and `parse`, which lays `COMMON`, the task's defaults (the
embedded default's when no model is given) and the command line over each other and derives the gradient
accumulation from `--total_batch_size` (see `tasks`)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser, TrainingArguments

from ...runtime import cpu_distributed
from .. import data as tower_data
from ..config import MANAGER_TYPES
from .tasks import COMMON, FINETUNE_TASKS, LABEL_NAMES, SPLITS, TASK_DEFAULTS, TASKS, TINY, TINY_COMMON


@dataclass
class TowerModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A ManagerTower save_pretrained directory (ours: pre-training or any task) or a transformers "
            "BridgeTower one (model_type bridgetower: warm-started into --manager_type). Default: the embedded "
            "tiny model built in code."
        },
    )
    manager_type: str | None = field(
        default=None,
        metadata={
            "help": "bridge (BridgeTower), sam, saum or aaum (ManagerTower). Default: the checkpoint's; aaum for a new "
            "model. A ManagerTower checkpoint keeps its own (a different value is an error).",
            "choices": list(MANAGER_TYPES),
        },
    )
    text_model: str | None = field(
        default=None,
        metadata={
            "help": "A RobertaModel directory (with its tokenizer): build the model from unimodal encoders "
            "(with --vision_model), as the official pre-training starts."
        },
    )
    vision_model: str | None = field(
        default=None,
        metadata={
            "help": "A CLIPVisionModel directory (QuickGELU, e.g. openai/clip-vit-base-patch16), with --text_model."
        },
    )
    num_managed_layers: int | None = field(
        default=None,
        metadata={
            "help": "N, the top unimodal layers each manager aggregates, for a new ManagerTower (from BridgeTower or "
            "unimodal encoders; official: 6). Default: 6, or the shallower tower's depth if less."
        },
    )
    num_cross_layers: int = field(
        default=6,
        metadata={"help": "Cross-modal layers of a model built from --text_model / --vision_model (official: 6)."},
    )
    processor_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A BridgeTowerProcessor directory. Default: --model_name_or_path's; from --text_model's tokenizer "
            "and CLIP's normalisation for a model built from unimodal encoders."
        },
    )
    head_hidden_scale: int | None = field(
        default=None,
        metadata={
            "help": "Task classifier width 2 D x scale (official: 2 for VQAv2 / SNLI-VE, 1 for NLVR2 / Flickr30K)."
        },
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Training / evaluation resolution (px, a multiple of the patch size and of 32). The model's "
            "position embeddings are interpolated to it (official adapt_position_encoding) and the processor "
            "resizes to it. Default: the task's (288 / 576 / 384); the embedded default keeps 32."
        },
    )


@dataclass
class TowerDataArguments:
    task: str | None = field(
        default=None,
        metadata={
            "help": "vqav2, snli_ve, nlvr2 or flickr30k (tower_finetune.py); pretrain (tower_pretrain.py).",
            "choices": list(TASKS),
        },
    )
    data_path: str | None = field(
        default=None,
        metadata={
            "help": "pretrain: image-caption JSON / JSONL; vqav2: the folder of the official v2_OpenEnded_mscoco_"
            "{split}_questions.json / v2_mscoco_{split}_annotations.json; snli_ve: the folder of snli_ve_{split}"
            ".jsonl; nlvr2: the folder of {split}.json (lil-lab nlvr2/data); flickr30k: Karpathy's "
            "dataset_flickr30k.json. Default: synthetic stand-ins written into output_dir."
        },
    )
    image_folder: str | None = field(
        default=None,
        metadata={
            "help": "pretrain: images the JSON paths are relative to; vqav2: the COCO root (train2014/, val2014/, "
            "test2015/); snli_ve, flickr30k: flickr30k-images/; nlvr2: the root of images/train/*, dev/, test1/."
        },
    )
    train_split: str | None = field(
        default=None,
        metadata={
            "help": "Comma list of training splits (vqav2 train2014; snli_ve, nlvr2 train; flickr30k train,val)."
        },
    )
    eval_split: str | None = field(
        default=None,
        metadata={
            "help": "Evaluation split (vqav2 val2014; snli_ve, nlvr2 dev; flickr30k test); 'none' skips evaluation."
        },
    )
    eval_data_path: str | None = field(
        default=None,
        metadata={
            "help": "pretrain only: an image-caption JSON to evaluate MLM / ITM on (default: none for real data)."
        },
    )
    eval_image_folder: str | None = field(
        default=None, metadata={"help": "pretrain only: the images of --eval_data_path (default: --image_folder)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N samples only."})
    max_text_len: int | None = field(default=None, metadata={"help": "Text tokens, truncated (official: 50)."})
    min_answer_count: int = field(
        default=9,
        metadata={
            "help": "vqav2: answers given at least this often over train + eval form the vocabulary (official: 9)."
        },
    )
    k_test: int = field(default=128, metadata={"help": "flickr30k: ITC top-k re-ranked by ITM (official: 128)."})
    check_images: str = field(
        default="open",
        metadata={
            "help": "How readers check images: exists, open (header), decode.",
            "choices": list(tower_data.CHECKS),
        },
    )
    strict_data: bool = field(
        default=False,
        metadata={"help": "Fail at the first image that does not decode in a batch instead of skipping it."},
    )
    synthetic_samples: int = field(default=256, metadata={"help": "Size of the synthetic default data set."})


@dataclass
class TowerOptimArguments:
    total_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "The batch of one optimizer step over all processes; sets the gradient accumulation (unless "
            "--gradient_accumulation_steps is given). Default: the task's (paper)."
        },
    )
    lr_mult_head: float | None = field(
        default=None,
        metadata={
            "help": "Task heads' lr = lr x this (official: VQAv2 50, SNLI-VE / NLVR2 10, Flickr30K / pre-train 5)."
        },
    )
    lr_mult_cross_modal: float | None = field(
        default=None,
        metadata={
            "help": "Cross-modal part's lr (transforms, cross-modal layers, poolers, managers, ITC projections) = "
            "lr x this (official: 5)."
        },
    )


@dataclass
class TowerArgs:
    """Everything `run` needs: the four argument groups, the task, whether it is the embedded default, and which
    flags the command line gave."""

    model: TowerModelArguments
    data: TowerDataArguments
    optim: TowerOptimArguments
    training: TrainingArguments
    task: str
    tiny: bool
    given: set[str]


def _given(argv: list[str]) -> set[str]:
    return {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}


def _world_size(argv: list[str]) -> int:
    """Processes (or DataParallel GPUs) that share one optimizer step, known before the TrainingArguments exist."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and torch.cuda.device_count() > 1 and not cpu_distributed.wants_deepspeed(argv):
        return torch.cuda.device_count()  # a plain `python` on several GPUs: the Trainer uses DataParallel
    return world


def parse(recipe: str, argv: list[str] | None = None) -> TowerArgs:
    """The arguments of `recipe` ("pretrain" or "finetune"): COMMON, then the task's defaults (the embedded
    default's when no model is given), then the command line."""
    if recipe not in ("pretrain", "finetune"):
        raise ValueError(f"recipe {recipe!r}: pretrain or finetune")
    argv = sys.argv[1:] if argv is None else list(argv)
    given = _given(argv)
    parser = HfArgumentParser((TowerModelArguments, TowerDataArguments, TowerOptimArguments, TrainingArguments))
    first, _ = parser.parse_known_args(argv)
    task = first.task
    if recipe == "pretrain":
        if task not in (None, "pretrain"):
            raise ValueError(f"--task {task}: tower_pretrain.py pre-trains; fine-tune with recipes/tower_finetune.py.")
        task = "pretrain"
    elif task is None:
        raise ValueError(f"--task is required: one of {', '.join(FINETUNE_TASKS)}.")
    elif task == "pretrain":
        raise ValueError("--task pretrain: use recipes/tower_pretrain.py.")
    if (first.text_model is None) != (first.vision_model is None):
        raise ValueError("--text_model and --vision_model go together (a RobertaModel and a CLIPVisionModel).")
    if first.text_model is not None and first.model_name_or_path is not None:
        raise ValueError("give either --model_name_or_path or --text_model / --vision_model, not both.")
    tiny = first.model_name_or_path is None and first.text_model is None
    train_split, eval_split = SPLITS[task]
    defaults = {
        **COMMON,
        **TASK_DEFAULTS[task],
        "task": task,
        "label_names": LABEL_NAMES[task],
        "train_split": train_split,
        "eval_split": eval_split,
        "output_dir": "runs/tower_pretrain" if task == "pretrain" else f"runs/tower_{task}",
    }
    if tiny:
        defaults.update(TINY_COMMON)
        defaults.update(TINY[task])
    defaults.update(cpu_distributed.prepare(argv))
    parser.set_defaults(**defaults)

    # the gradient accumulation that gives --total_batch_size
    second, _ = parser.parse_known_args(argv)
    total = second.total_batch_size
    if total is not None:
        per_step = second.per_device_train_batch_size * _world_size(argv)
        if "gradient_accumulation_steps" in given:
            if "total_batch_size" in given and per_step * second.gradient_accumulation_steps != total:
                raise ValueError(
                    f"--total_batch_size {total} disagrees with --gradient_accumulation_steps "
                    f"{second.gradient_accumulation_steps} x {per_step} (per-device batch x processes); "
                    f"give one of them."
                )
        elif total % per_step:
            raise ValueError(
                f"the total batch {total} is not a multiple of the per-device batch x processes = "
                f"{per_step}: choose --per_device_train_batch_size, --total_batch_size or "
                f"--gradient_accumulation_steps so that they agree."
            )
        else:
            parser.set_defaults(gradient_accumulation_steps=total // per_step)
    model_args, data_args, optim_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    data_args.task = task
    return TowerArgs(model_args, data_args, optim_args, training_args, task, tiny, given)
