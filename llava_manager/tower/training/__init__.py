"""ManagerTower's training recipes (`recipes/tower_pretrain.py`, `recipes/tower_finetune.py`): arguments with the
paper's defaults per task, optimizer groups with the official learning-rate multipliers, a `Trainer` with the
task's evaluation and strict checkpoint loading, and `run(argv)`, which trains, exports and evaluates.

Sources: the paper (Table IX: pre-training; Table XIV: fine-tuning) and the official code
(github.com/LooperXX/ManagerTower HEAD 86e2372: `scripts/*.sh`, `src/config.py`, `src/modules/meter_utils.py`
`set_schedule`), as summarised in `TASK_DEFAULTS` below.

Defaults (`TASK_DEFAULTS`; a flag on the command line wins). Every run: AdamW (eps 1e-8, betas (0.9, 0.98)), linear
warm-up then linear decay to 0, no gradient clipping (the official Lightning trainer sets none), fp32 (the official
`precision=32`; `--bf16 true` to change), no gradient checkpointing.
"total batch" is per-device batch x processes x gradient accumulation; the accumulation is derived from
`--total_batch_size` unless `--gradient_accumulation_steps` is given (the official `accumulate_grad_batches =
batch_size // (per_gpu_batchsize * gpus * nodes)`).

    task       schedule        total batch  lr      wd    warm-up    image  lr x head  lr x cross  head scale  text
    pretrain   100k steps      4096         1e-5    0.01  10k steps  288    5          5           -           50
    vqav2      10 epochs       576 (1)      9e-6    0.06  0.06 (1)   576    50         5           2           50
    snli_ve    4 epochs        64           3e-6    0.01  0.06       384    10         5           2           50
    nlvr2      5 epochs        256          1.4e-5  0.01  0.1        384    10         5           1           50
    flickr30k  20 epochs       512          6e-6    0.01  0.1        384    5          5           1           50 (2)

    (1) the paper's Table XIV; the official script ftfpt-base-vqa.sh ran batch 504 and warm-up 0.1.
    (2) the official Flickr30K config sets max_text_len 40 (`--max_text_len 40`); the paper says 50.

Per-device batch sizes are the official scripts' (8, 4, 8, 4, 8), so 8 GPUs give accumulation 64 (pre-training on 8
GPUs; the official ran 64), 18, 1, 8 and 8. Without `--model_name_or_path` (and without `--text_model` /
`--vision_model`) a recipe trains the embedded default instead: a tiny model built in code on synthetic data of the
task's layout, at the `TINY` settings (a random tiny model learns nothing at 1e-5 in a minute).

Parameter groups (`parameter_groups`; by module, never by substring):

- head (lr x `--lr_mult_head`): `mlm_score`, `itm_score`, `vqa_classifier`, `snli_classifier`, `nlvr2_classifier`.
- cross-modal (lr x `--lr_mult_cross_modal`): every backbone module named `cross_modal_*` (the text / image
  transforms, cross-modal layers, poolers, the managers, and for `bridge` the link towers and input LayerNorms), and
  the ITC projections `itc_text_head` / `itc_image_head` (the official `cross_modal_itc_*_head`).
- base (lr): the unimodal towers (`text_model`, `vision_model`), `token_type_embeddings`, `layer_embeddings_*` and
  the ITC `temperature`.

This is what the official substring rule (`"cross_modal" in name` -> cross-modal, the five head names -> head, the
rest -> base) gives; a module the rules do not know is an error rather than a silent base-rate member.

Weight decay: none on biases, on every LayerNorm's weight and bias, on the managers' own weights (`layer_scores`,
`layer_scores_cross`, `softmax_temperature*`: decay would pull the aggregation logits and temperatures to 0), the link
towers' own scalars (`bridge`) and the ITC `temperature`. Everything else, embeddings included, is decayed. The
official rule (meter_utils.py: no decay where the name contains `bias`, `LayerNorm.bias`, `LayerNorm.weight`,
`norm.*`, `norm1.*`, `norm2.*`) decays, by a substring quirk, the managers' `LayerNorm.{k}.weight`, CLIP's
`ln_1` / `ln_2` / `ln_pre` / `ln_post` weights, `layer_scores*` and both temperatures; we deviate there, on purpose.
The official rule's other quirk, a non-integer multiplier taken as an absolute learning rate, is not kept: the
multipliers always multiply.

`{output_dir}/optimizer_groups.json` lists the groups as the optimizer (or DeepSpeed's wrapper) holds them.

Evaluation after training (and at `--eval_strategy` points), written to `{output_dir}/metrics.json`, in percent:
pretrain `mlm_accuracy`, `itm_accuracy`; vqav2 `vqa_score` (VQAScore: the soft score of the argmax answer); snli_ve
and nlvr2 `accuracy`; flickr30k `ir_r1/5/10`, `tr_r1/5/10`, `r_mean` from `heads.retrieval_scores` (ITC top-k
re-ranked by the ITM logit, k = `--k_test` 128) and `metrics.retrieval_recall`.

Checkpoints: `--resume_from_checkpoint DIR` (or `last`) loads DIR's weights strictly (`core.checkpoint.
load_checkpoint_weights`: any missing or unexpected key raises `CheckpointMismatchError`; the Trainer's own loader
would only warn and go on from the fresh weights) and continues at DIR's step. Starting from `--model_name_or_path`
is strict as well: only the new task head may be missing, only other tasks' heads unexpected.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import _is_peft_model

from ..core.checkpoint import check_load, load_checkpoint_weights
from ..processing.images import open_image
from ..training import cpu_distributed
from . import data as tower_data
from .config import MANAGER_TYPES, ManagerTowerConfig
from .heads import (
    ManagerTowerForImageTextRetrieval,
    ManagerTowerForNLVR2,
    ManagerTowerForPreTraining,
    ManagerTowerForQuestionAnswering,
    ManagerTowerForVisualEntailment,
    retrieval_scores,
)
from .managers import AAUM, SAM, SAUM
from .metrics import accuracy, retrieval_recall, vqa_score
from .synthetic import tiny_tower_processor, write_synthetic

logger = logging.getLogger(__name__)

TASKS = ("pretrain", "vqav2", "snli_ve", "nlvr2", "flickr30k")
FINETUNE_TASKS = TASKS[1:]
TASK_MODELS = {
    "pretrain": ManagerTowerForPreTraining,
    "vqav2": ManagerTowerForQuestionAnswering,
    "snli_ve": ManagerTowerForVisualEntailment,
    "nlvr2": ManagerTowerForNLVR2,
    "flickr30k": ManagerTowerForImageTextRetrieval,
}
# The task heads: the keys a model may lack when it starts from another task's checkpoint.
TASK_HEADS = {
    "pretrain": ("mlm_score", "itm_score"),
    "vqav2": ("vqa_classifier",),
    "snli_ve": ("snli_classifier",),
    "nlvr2": ("nlvr2_classifier",),
    "flickr30k": ("itc_text_head", "itc_image_head", "temperature", "itm_score"),
}
# What the Trainer hands to compute_metrics as labels (it cannot guess them: find_labels gives "start_positions" to
# any class named *QuestionAnswering, and the pre-training collator's labels are mlm_labels + itm_labels).
LABEL_NAMES = {"pretrain": ["mlm_labels", "itm_labels"], "vqav2": ["labels"], "snli_ve": ["labels"],
               "nlvr2": ["labels"], "flickr30k": []}

# ---------------------------------------------------------------------------------------------------------------------
# Defaults

# The paper's numbers (Table IX: pre-training; Table XIV: fine-tuning), with the official scripts' per-GPU batch
# sizes and evaluation batch sizes (scripts/*.sh EXP_PGB / EXP_PGEB) and lr multipliers (EXP_LMH / EXP_LMC),
# head_hidden_scale (EXP_HHS). warmup_steps < 1 is a fraction of the training steps.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": dict(max_steps=100_000, total_batch_size=4096, learning_rate=1e-5, weight_decay=0.01,
                     warmup_steps=10_000, image_size=288, lr_mult_head=5.0, lr_mult_cross_modal=5.0,
                     head_hidden_scale=1, max_text_len=50, per_device_train_batch_size=8,
                     per_device_eval_batch_size=32),
    # Table XIV: batch 576, warm-up 0.06; the official ftfpt-base-vqa.sh ran batch 504, warm-up 0.1.
    "vqav2": dict(num_train_epochs=10, total_batch_size=576, learning_rate=9e-6, weight_decay=0.06,
                  warmup_steps=0.06, image_size=576, lr_mult_head=50.0, lr_mult_cross_modal=5.0,
                  head_hidden_scale=2, max_text_len=50, per_device_train_batch_size=4,
                  per_device_eval_batch_size=16),
    "snli_ve": dict(num_train_epochs=4, total_batch_size=64, learning_rate=3e-6, weight_decay=0.01,
                    warmup_steps=0.06, image_size=384, lr_mult_head=10.0, lr_mult_cross_modal=5.0,
                    head_hidden_scale=2, max_text_len=50, per_device_train_batch_size=8,
                    per_device_eval_batch_size=64),
    "nlvr2": dict(num_train_epochs=5, total_batch_size=256, learning_rate=1.4e-5, weight_decay=0.01,
                  warmup_steps=0.1, image_size=384, lr_mult_head=10.0, lr_mult_cross_modal=5.0,
                  head_hidden_scale=1, max_text_len=50, per_device_train_batch_size=4,
                  per_device_eval_batch_size=32),
    # The official Flickr30K task config sets max_text_len 40; the paper (Sec. IV-A) says 50 for every task.
    "flickr30k": dict(num_train_epochs=20, total_batch_size=512, learning_rate=6e-6, weight_decay=0.01,
                      warmup_steps=0.1, image_size=384, lr_mult_head=5.0, lr_mult_cross_modal=5.0,
                      head_hidden_scale=1, max_text_len=50, per_device_train_batch_size=8,
                      per_device_eval_batch_size=8),
}
# Splits: train on `train_split` (comma list), evaluate on `eval_split`. The official runs train VQAv2 on
# train2014 + val2014 and submit test-dev to eval.ai; here val2014 is the default evaluation split, so it is left
# out of training by default (`--train_split train2014,val2014 --eval_split ...` for the official mix). Flickr30K:
# train + val (as the official), evaluated on the Karpathy test split. SNLI-VE / NLVR2: dev (test / test1 also work).
SPLITS = {"pretrain": ("train", "eval"), "vqav2": ("train2014", "val2014"), "snli_ve": ("train", "dev"),
          "nlvr2": ("train", "dev"), "flickr30k": ("train,val", "test")}

COMMON: dict[str, Any] = dict(
    lr_scheduler_type="linear", optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.98, adam_epsilon=1e-8,
    max_grad_norm=0.0, logging_steps=50, save_strategy="steps", save_steps=2000, save_total_limit=2,
    eval_strategy="no", remove_unused_columns=False, dataloader_num_workers=4,
    dataloader_pin_memory=torch.cuda.is_available(), report_to="none",
)
# The embedded default: a tiny random model on synthetic shapes (see `tiny_config`), a minute or so on 2 CPU cores.
# Base lr 2e-4 (5e-4 for pre-training: MLM + ITM from scratch), with the task's multipliers; 10% warm-up, no gradient
# accumulation. What they reach (one run each, 2 CPU cores): pre-training MLM ~87% / ITM ~55% (chance 50: ITM needs
# more than a minute), VQA score ~80, SNLI-VE ~67% (chance 33), NLVR2 ~62%, Flickr30K R-mean ~45 (chance R@1 4%).
TINY_COMMON: dict[str, Any] = dict(
    total_batch_size=None, per_device_train_batch_size=16, per_device_eval_batch_size=32, learning_rate=2e-4,
    warmup_steps=0.1, max_steps=-1, image_size=None, logging_steps=10, save_steps=200, dataloader_num_workers=0,
    min_answer_count=1, max_grad_norm=1.0,
)
TINY: dict[str, dict[str, Any]] = {
    "pretrain": dict(num_train_epochs=8, synthetic_samples=512, learning_rate=5e-4),
    "vqav2": dict(num_train_epochs=10, synthetic_samples=192),
    "snli_ve": dict(num_train_epochs=8, synthetic_samples=128),
    "nlvr2": dict(num_train_epochs=10, synthetic_samples=192),
    "flickr30k": dict(num_train_epochs=6, synthetic_samples=96),
}


def tiny_config(processor, manager_type: str = "aaum", head_hidden_scale: int = 1) -> ManagerTowerConfig:
    """The embedded default's model: a RoBERTa-like text tower (4 layers, width 64, the tiny tokenizer's vocabulary)
    and a CLIP-like vision tower (4 layers, width 128, 8 px patches of 32 px images), 2 cross-modal layers of width
    64 whose managers aggregate the top 3 unimodal layers."""
    tokenizer = processor.tokenizer
    return ManagerTowerConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=4, num_attention_heads=2,
                         intermediate_size=128, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(hidden_size=128, num_hidden_layers=4, patch_size=8,
                           image_size=processor.image_processor.crop_size["shortest_edge"]),
        hidden_size=64, num_attention_heads=2, num_hidden_layers=2, num_managed_layers=3,
        manager_type=manager_type, head_hidden_scale=head_hidden_scale,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Arguments


@dataclass
class TowerModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "A ManagerTower save_pretrained directory (ours: pre-training or any task) or a transformers "
                "BridgeTower one (model_type bridgetower: warm-started into --manager_type). Default: the embedded "
                "tiny model built in code."})
    manager_type: str | None = field(default=None, metadata={
        "help": "bridge (BridgeTower), sam, saum or aaum (ManagerTower). Default: the checkpoint's; aaum for a new "
                "model. A ManagerTower checkpoint keeps its own (a different value is an error).",
        "choices": list(MANAGER_TYPES)})
    text_model: str | None = field(default=None, metadata={
        "help": "A RobertaModel directory (with its tokenizer): build the model from unimodal encoders "
                "(with --vision_model), as the official pre-training starts."})
    vision_model: str | None = field(default=None, metadata={
        "help": "A CLIPVisionModel directory (QuickGELU, e.g. openai/clip-vit-base-patch16), with --text_model."})
    num_managed_layers: int | None = field(default=None, metadata={
        "help": "N, the top unimodal layers each manager aggregates, for a new ManagerTower (from BridgeTower or "
                "unimodal encoders; official: 6). Default: 6, or the shallower tower's depth if less."})
    num_cross_layers: int = field(default=6, metadata={
        "help": "Cross-modal layers of a model built from --text_model / --vision_model (official: 6)."})
    processor_name_or_path: str | None = field(default=None, metadata={
        "help": "A BridgeTowerProcessor directory. Default: --model_name_or_path's; from --text_model's tokenizer "
                "and CLIP's normalisation for a model built from unimodal encoders."})
    head_hidden_scale: int | None = field(default=None, metadata={
        "help": "Task classifier width 2 D x scale (official: 2 for VQAv2 / SNLI-VE, 1 for NLVR2 / Flickr30K)."})
    image_size: int | None = field(default=None, metadata={
        "help": "Training / evaluation resolution (px, a multiple of the patch size and of 32). The model's "
                "position embeddings are interpolated to it (official adapt_position_encoding) and the processor "
                "resizes to it. Default: the task's (288 / 576 / 384); the embedded default keeps 32."})


@dataclass
class TowerDataArguments:
    task: str | None = field(default=None, metadata={
        "help": "vqav2, snli_ve, nlvr2 or flickr30k (tower_finetune.py); pretrain (tower_pretrain.py).",
        "choices": list(TASKS)})
    data_path: str | None = field(default=None, metadata={
        "help": "pretrain: image-caption JSON / JSONL; vqav2: the folder of the official v2_OpenEnded_mscoco_"
                "{split}_questions.json / v2_mscoco_{split}_annotations.json; snli_ve: the folder of snli_ve_{split}"
                ".jsonl; nlvr2: the folder of {split}.json (lil-lab nlvr2/data); flickr30k: Karpathy's "
                "dataset_flickr30k.json. Default: synthetic stand-ins written into output_dir."})
    image_folder: str | None = field(default=None, metadata={
        "help": "pretrain: images the JSON paths are relative to; vqav2: the COCO root (train2014/, val2014/, "
                "test2015/); snli_ve, flickr30k: flickr30k-images/; nlvr2: the root of images/train/*, dev/, test1/."})
    train_split: str | None = field(default=None, metadata={
        "help": "Comma list of training splits (vqav2 train2014; snli_ve, nlvr2 train; flickr30k train,val)."})
    eval_split: str | None = field(default=None, metadata={
        "help": "Evaluation split (vqav2 val2014; snli_ve, nlvr2 dev; flickr30k test); 'none' skips evaluation."})
    eval_data_path: str | None = field(default=None, metadata={
        "help": "pretrain only: an image-caption JSON to evaluate MLM / ITM on (default: none for real data)."})
    eval_image_folder: str | None = field(default=None, metadata={
        "help": "pretrain only: the images of --eval_data_path (default: --image_folder)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N samples only."})
    max_text_len: int | None = field(default=None, metadata={"help": "Text tokens, truncated (official: 50)."})
    min_answer_count: int = field(default=9, metadata={
        "help": "vqav2: answers given at least this often over train + eval form the vocabulary (official: 9)."})
    k_test: int = field(default=128, metadata={"help": "flickr30k: ITC top-k re-ranked by ITM (official: 128)."})
    check_images: str = field(default="open", metadata={
        "help": "How readers check images: exists, open (header), decode.", "choices": list(tower_data.CHECKS)})
    strict_data: bool = field(default=False, metadata={
        "help": "Fail at the first image that does not decode in a batch instead of skipping it."})
    synthetic_samples: int = field(default=256, metadata={"help": "Size of the synthetic default data set."})


@dataclass
class TowerOptimArguments:
    total_batch_size: int | None = field(default=None, metadata={
        "help": "The batch of one optimizer step over all processes; sets the gradient accumulation (unless "
                "--gradient_accumulation_steps is given). Default: the task's (paper)."})
    lr_mult_head: float | None = field(default=None, metadata={
        "help": "Task heads' lr = lr x this (official: VQAv2 50, SNLI-VE / NLVR2 10, Flickr30K / pre-train 5)."})
    lr_mult_cross_modal: float | None = field(default=None, metadata={
        "help": "Cross-modal part's lr (transforms, cross-modal layers, poolers, managers, ITC projections) = "
                "lr x this (official: 5)."})


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
    defaults = {**COMMON, **TASK_DEFAULTS[task], "task": task, "label_names": LABEL_NAMES[task],
                "train_split": train_split, "eval_split": eval_split,
                "output_dir": "runs/tower_pretrain" if task == "pretrain" else f"runs/tower_{task}"}
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
                raise ValueError(f"--total_batch_size {total} disagrees with --gradient_accumulation_steps "
                                 f"{second.gradient_accumulation_steps} x {per_step} (per-device batch x processes); "
                                 f"give one of them.")
        elif total % per_step:
            raise ValueError(f"the total batch {total} is not a multiple of the per-device batch x processes = "
                             f"{per_step}: choose --per_device_train_batch_size, --total_batch_size or "
                             f"--gradient_accumulation_steps so that they agree.")
        else:
            parser.set_defaults(gradient_accumulation_steps=total // per_step)
    model_args, data_args, optim_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    data_args.task = task
    return TowerArgs(model_args, data_args, optim_args, training_args, task, tiny, given)


# ---------------------------------------------------------------------------------------------------------------------
# Parameter groups


HEAD_MODULES = ("mlm_score", "itm_score", "vqa_classifier", "snli_classifier", "nlvr2_classifier")
CROSS_MODAL_HEADS = ("itc_text_head", "itc_image_head")  # the official cross_modal_itc_*_head
BASE_TOP_PARAMETERS = ("temperature",)  # the ITC temperature: base rate in the official rule
UNIMODAL_MODULES = ("text_model", "vision_model")
EMBEDDING_MODULES = ("token_type_embeddings", "layer_embeddings_text", "layer_embeddings_image")
GROUPS = ("base", "cross_modal", "head")


def module_parameters(model: nn.Module) -> dict[str, dict[str, nn.Parameter]]:
    """{"base" | "cross_modal" | "head": {name: parameter}} of a task model (backbone at `.managertower`), by
    module as the module docstring says. A module or parameter the rules do not know raises."""
    backbone = model.managertower
    parts: dict[str, dict[str, nn.Parameter]] = {g: {} for g in GROUPS}

    def add(group: str, prefix: str, module: nn.Module) -> None:
        for name, p in module.named_parameters(prefix=prefix):
            parts[group][name] = p

    for name, p in model.named_parameters(recurse=False):
        if name not in BASE_TOP_PARAMETERS:
            raise ValueError(f"parameter {name!r} of {type(model).__name__}: no learning-rate group for it")
        parts["base"][name] = p
    for child_name, child in model.named_children():
        if child is backbone:
            for name, p in backbone.named_parameters(recurse=False):
                raise ValueError(f"parameter managertower.{name}: no learning-rate group for it")
            for sub_name, sub in backbone.named_children():
                prefix = f"{child_name}.{sub_name}"
                if sub_name in UNIMODAL_MODULES or sub_name in EMBEDDING_MODULES:
                    add("base", prefix, sub)
                elif sub_name.startswith("cross_modal_"):
                    add("cross_modal", prefix, sub)
                elif any(True for _ in sub.parameters()):
                    raise ValueError(f"module {prefix}: no learning-rate group for it")
        elif child_name in HEAD_MODULES:
            add("head", child_name, child)
        elif child_name in CROSS_MODAL_HEADS:
            add("cross_modal", child_name, child)
        elif any(True for _ in child.parameters()):
            raise ValueError(f"module {child_name} of {type(model).__name__}: no learning-rate group for it")
    return parts


def no_decay_names(model: nn.Module) -> set[str]:
    """Parameters without weight decay: biases, LayerNorms, the managers' (and link towers') own weights and
    temperatures, and the model's own parameters (the ITC temperature)."""
    from transformers.models.bridgetower.modeling_bridgetower import BridgeTowerLinkTower

    names = {name for name, _ in model.named_parameters(recurse=False)}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, nn.LayerNorm):
            names |= {prefix + n for n, _ in module.named_parameters()}
        elif isinstance(module, (SAUM, AAUM, SAM, BridgeTowerLinkTower)):
            names |= {prefix + n for n, _ in module.named_parameters(recurse=False)}
    names |= {n for n, _ in model.named_parameters() if n.endswith("bias")}
    return names


def labelled_parameter_groups(model: nn.Module, lr: float, weight_decay: float, lr_mult_head: float,
                              lr_mult_cross_modal: float) -> list[tuple[str, dict]]:
    """(label, optimizer group) for (base, cross-modal, head) x (decay, no decay), trainable parameters only, labels
    "base/decay", "head/no_decay", ...; the first group is base, whose lr the Trainer logs."""
    lrs = {"base": lr, "cross_modal": lr * lr_mult_cross_modal, "head": lr * lr_mult_head}
    skip = no_decay_names(model)
    groups = []
    for group, params in module_parameters(model).items():
        trainable = [(n, p) for n, p in params.items() if p.requires_grad]
        decay = [p for n, p in trainable if n not in skip]
        no_decay = [p for n, p in trainable if n in skip]
        groups += [(f"{group}/{label}", {"params": ps, "lr": lrs[group], "weight_decay": wd})
                   for ps, wd, label in ((decay, weight_decay, "decay"), (no_decay, 0.0, "no_decay")) if ps]
    return groups


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, lr_mult_head: float,
                     lr_mult_cross_modal: float) -> list[dict]:
    """The optimizer groups of `labelled_parameter_groups`."""
    return [g for _, g in labelled_parameter_groups(model, lr, weight_decay, lr_mult_head, lr_mult_cross_modal)]


# ---------------------------------------------------------------------------------------------------------------------
# Trainer


def _argmax(logits):
    if isinstance(logits, (tuple, list)):
        return tuple(_argmax(x) for x in logits)
    return logits.argmax(dim=-1)


def compute_metrics_for(task: str):
    """`compute_metrics` of a classification-style task (percent); predictions are argmax indices
    (`_argmax` as `preprocess_logits_for_metrics`)."""

    def compute(prediction) -> dict[str, float]:
        preds, labels = prediction.predictions, prediction.label_ids
        if task == "pretrain":
            (mlm, itm), (mlm_labels, itm_labels) = preds, labels
            return {"mlm_accuracy": accuracy(torch.as_tensor(mlm), torch.as_tensor(mlm_labels), percent=True),
                    "itm_accuracy": accuracy(torch.as_tensor(itm), torch.as_tensor(itm_labels), percent=True)}
        if task == "vqav2":
            return {"vqa_score": vqa_score(torch.as_tensor(preds), torch.as_tensor(labels), percent=True)}
        return {"accuracy": accuracy(torch.as_tensor(preds), torch.as_tensor(labels), percent=True)}

    return compute


# Output fields that are no predictions (the Trainer would concatenate them with the logits).
EVAL_IGNORE_KEYS = {"pretrain": ["mlm_loss", "itm_loss"]}
LOGGED_LOSSES = ("mlm_loss", "itm_loss", "itc_loss")


class TowerTrainer(Trainer):
    """`Trainer` with the recipes' optimizer groups (`parameter_groups`), the components of the loss in the logs
    (`mlm_loss`, `itm_loss`, `itc_loss`, this process's mean since the last log), Flickr30K's retrieval evaluation
    (`retrieval`: {"images": paths, "texts", "text_to_image"}), and strict checkpoint loading on resume and for
    `load_best_model_at_end` (without DeepSpeed / FSDP, which read checkpoints of their own making)."""

    def __init__(self, *args, task: str, lr_mult_head: float = 1.0, lr_mult_cross_modal: float = 1.0,
                 retrieval: dict | None = None, k_test: int = 128, max_text_len: int = 50, **kwargs):
        super().__init__(*args, **kwargs)
        self.task, self.retrieval, self.k_test, self.max_text_len = task, retrieval, k_test, max_text_len
        self.lr_mult_head, self.lr_mult_cross_modal = lr_mult_head, lr_mult_cross_modal
        self._losses: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.group_labels: list[str] = []
        self.group_sizes: list[int] = []
        ds_config = getattr(self.args, "hf_deepspeed_config", None)
        if ds_config is not None and "optimizer" in ds_config.config:
            raise ValueError("The DeepSpeed config has an 'optimizer' section: DeepSpeed would build the optimizer "
                             "and the per-module learning rates (--lr_mult_head, --lr_mult_cross_modal) would be "
                             "lost. Remove that section (recipes/zero2.json has none).")

    # -- optimizer ---------------------------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = self.model if model is None else model
            labelled = labelled_parameter_groups(model, self.args.learning_rate, self.args.weight_decay,
                                                 self.lr_mult_head, self.lr_mult_cross_modal)
            self.group_labels = [label for label, _ in labelled]
            self.group_sizes = [sum(p.numel() for p in g["params"]) for _, g in labelled]
            groups = [g for _, g in labelled]
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            ds_config = getattr(self.args, "hf_deepspeed_config", None)
            if ds_config is not None and ds_config.is_offload():
                from deepspeed.ops.adam import DeepSpeedCPUAdam

                optimizer_cls = DeepSpeedCPUAdam
                kwargs = {k: v for k, v in kwargs.items() if k in ("lr", "betas", "eps")}
            self.optimizer = optimizer_cls(groups, **kwargs)
        return self.optimizer

    # -- strict checkpoints --------------------------------------------------------------------------------------
    def group_report(self) -> list[dict]:
        """The optimizer's groups as it holds them (DeepSpeed's wrapper included): label, parameters (elements),
        initial and current lr, weight decay."""
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        return [{"group": label, "parameters": size, "initial_lr": g.get("initial_lr", g["lr"]), "lr": g["lr"],
                 "weight_decay": g["weight_decay"]}
                for label, size, g in zip(self.group_labels, self.group_sizes, groups)]

    def _loads_own_checkpoints(self, model) -> bool:
        return self.is_deepspeed_enabled or self.is_fsdp_enabled or _is_peft_model(model)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = self.model if model is None else model
        if self._loads_own_checkpoints(model):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        logger.info("loading the model weights of %s (strictly)", resume_from_checkpoint)
        load_checkpoint_weights(model, resume_from_checkpoint)

    def _load_best_model(self):
        if self._loads_own_checkpoints(self.model):
            return super()._load_best_model()
        load_checkpoint_weights(self.model, self.state.best_model_checkpoint)

    def _issue_warnings_after_load(self, load_result):
        check_load(load_result.missing_keys, load_result.unexpected_keys, "the checkpoint")

    # -- losses in the logs ------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
        if model.training and isinstance(outputs, dict):
            for key in LOGGED_LOSSES:
                if outputs.get(key) is not None:
                    self._losses[key].append(outputs[key].detach().float())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self._losses:
            for key, values in self._losses.items():
                logs[key] = round(torch.stack(values).mean().item(), 4)
            self._losses.clear()
        super().log(logs, *args, **kwargs)

    # -- evaluation ----------------------------------------------------------------------------------------------
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if ignore_keys is None:
            ignore_keys = EVAL_IGNORE_KEYS.get(self.task, [])
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        if self.retrieval is None:
            return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        start = time.time()
        metrics = retrieval_metrics(self.model, self.processing_class, self.retrieval, k=self.k_test,
                                    batch_size=self.args.per_device_eval_batch_size, max_text_len=self.max_text_len,
                                    progress=not self.args.disable_tqdm)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - start, 4)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def retrieval_metrics(model, processor, retrieval: dict, k: int = 128, batch_size: int = 32,
                      max_text_len: int = 50, progress: bool = True) -> dict[str, float]:
    """TR@1/5/10, IR@1/5/10 (percent) of `retrieval` (`data.retrieval_set`) by the official evaluation
    (`heads.retrieval_scores`)."""
    images, texts = retrieval["images"], retrieval["texts"]

    def image_batches():
        for i in range(0, len(images), batch_size):
            yield tower_data.encode_images(processor, [open_image(p) for p in images[i:i + batch_size]])

    def text_batches():
        for i in range(0, len(texts), batch_size):
            yield tower_data.encode_texts(processor, texts[i:i + batch_size], max_text_len)

    scores = retrieval_scores(model, image_batches(), text_batches(), k=k, progress=progress)
    return retrieval_recall(scores.cpu(), retrieval["text_to_image"], percent=True)


# ---------------------------------------------------------------------------------------------------------------------
# Model


def _read_config(path: str) -> dict:
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"--model_name_or_path {path}: no config.json there (a save_pretrained directory "
                                f"of a ManagerTower or BridgeTower model is expected).")
    return json.loads(config_file.read_text())


def load_processor(args: TowerArgs):
    """The task's processor: the tiny one, the checkpoint's, or (unimodal start) the RoBERTa tokenizer with
    BridgeTower's CLIP-normalising image processor."""
    from transformers import AutoTokenizer, BridgeTowerImageProcessor, BridgeTowerProcessor

    m = args.model
    if args.tiny and m.processor_name_or_path is None:
        return tiny_tower_processor()
    source = m.processor_name_or_path or m.model_name_or_path
    if source is not None:
        return BridgeTowerProcessor.from_pretrained(source)
    size = m.image_size or 288
    return BridgeTowerProcessor(BridgeTowerImageProcessor(size={"shortest_edge": size},
                                                          crop_size={"shortest_edge": size}),
                                AutoTokenizer.from_pretrained(m.text_model))


def _task_config(config: ManagerTowerConfig, args: TowerArgs, label2ans: list[str] | None) -> ManagerTowerConfig:
    if args.model.head_hidden_scale is not None:
        config.head_hidden_scale = args.model.head_hidden_scale
    if label2ans is not None:
        config.num_labels = len(label2ans)
        config.id2label = dict(enumerate(label2ans))
        config.label2id = {a: i for i, a in enumerate(label2ans)}
    return config


def _check_start(task: str, info: dict, source: str) -> None:
    """Starting from another task's checkpoint: only this task's head may be new, only other heads left over."""
    heads = TASK_HEADS[task]
    missing = [k for k in info.get("missing_keys", ()) if k.split(".")[0] not in heads]
    unexpected = [k for k in info.get("unexpected_keys", ()) if k.startswith("managertower.")
                  or k.split(".")[0] in heads]
    mismatched = list(info.get("mismatched_keys", ()))
    if mismatched:
        raise ValueError(f"{source}: weights of another shape than the model's: {mismatched[:10]}")
    check_load(missing, unexpected, source)
    new = sorted({k.split(".")[0] for k in info.get("missing_keys", ())})
    if new:
        logger.info("new (initialised) heads: %s", new)


def set_image_size(model: nn.Module, processor, size: int) -> None:
    """Train and evaluate at `size` px: the vision position embeddings interpolated to the new patch grid (bicubic,
    class token kept: the official `adapt_position_encoding`), the config and the processor's resize and crop."""
    from .weights import interpolate_position_embedding

    vision_config = model.config.vision_config
    patch = vision_config.patch_size
    if size % patch or size % 32:
        raise ValueError(f"--image_size {size} must be a multiple of the patch size {patch} and of 32")
    embeddings = model.managertower.vision_model.visual.embeddings
    if embeddings.image_size != size:
        grid = size // patch
        old = embeddings.position_embedding.weight
        new = nn.Embedding(grid * grid + 1, old.shape[1], device=old.device, dtype=old.dtype)
        with torch.no_grad():
            new.weight.copy_(interpolate_position_embedding(old.detach(), grid))
        new.weight.requires_grad_(old.requires_grad)
        embeddings.position_embedding = new
        embeddings.register_buffer("position_ids", torch.arange(grid * grid + 1, device=old.device).expand((1, -1)),
                                   persistent=False)
        embeddings.image_size, embeddings.num_patches, embeddings.num_positions = size, grid * grid, grid * grid + 1
        logger.info("vision position embeddings interpolated from %d to %d px", vision_config.image_size, size)
        for config in {id(c): c for c in (vision_config, model.managertower.config.vision_config,
                                          embeddings.config)}.values():
            config.image_size = size
    image_processor = processor.image_processor
    image_processor.size = {"shortest_edge": size}
    image_processor.crop_size = {"shortest_edge": size}


def build_model(args: TowerArgs, processor, label2ans: list[str] | None = None):
    """The task model: the embedded tiny default, a checkpoint (ours, any task, loaded strictly; or a transformers
    BridgeTower, warm-started), or unimodal encoders (`weights.from_unimodal`)."""
    task, m = args.task, args.model
    cls = TASK_MODELS[task]
    set_seed(args.training.seed)
    if args.tiny:
        config = _task_config(tiny_config(processor, m.manager_type or "aaum", m.head_hidden_scale or 1),
                              args, label2ans)
        model = cls._from_config(config)
        logger.info("embedded default: a tiny %s %s model", config.manager_type, cls.__name__)
    elif m.text_model is not None:
        model = _from_unimodal(args, cls, label2ans)
    else:
        raw = _read_config(m.model_name_or_path)
        if raw.get("model_type") == "bridgetower":
            model = _from_bridgetower(args, cls, raw, label2ans)
        elif raw.get("model_type") == ManagerTowerConfig.model_type:
            config = ManagerTowerConfig.from_pretrained(m.model_name_or_path)
            if m.manager_type is not None and m.manager_type != config.manager_type:
                raise ValueError(f"--manager_type {m.manager_type}: {m.model_name_or_path} is a "
                                 f"{config.manager_type} model; drop the flag (a ManagerTower checkpoint keeps its "
                                 f"managers) or start from a BridgeTower / unimodal checkpoint.")
            same_task = cls.__name__ in (config.architectures or [])
            if same_task and "head_hidden_scale" not in args.given:
                m.head_hidden_scale = None  # keep the trained head's width
            if same_task and label2ans is not None and config.id2label and len(config.id2label) > 2:
                saved = [config.id2label[i] for i in range(len(config.id2label))]
                if saved != label2ans:
                    logger.info("VQA answer vocabulary: the checkpoint's %d answers (not the %d of the data)",
                                len(saved), len(label2ans))
                label2ans = saved
            config = _task_config(config, args, label2ans)
            model, info = cls.from_pretrained(m.model_name_or_path, config=config, output_loading_info=True)
            _check_start(task, info, m.model_name_or_path)
        else:
            raise ValueError(f"{m.model_name_or_path}: model_type {raw.get('model_type')!r}; a managertower or "
                             f"bridgetower checkpoint is expected.")
    if m.image_size is not None:
        set_image_size(model, processor, m.image_size)
    label2ans = [model.config.id2label[i] for i in range(model.config.num_labels)] if task == "vqav2" else None
    return model, label2ans


def _managed_layers(args: TowerArgs, text_layers: int, vision_layers: int) -> int:
    if args.model.num_managed_layers is not None:
        return args.model.num_managed_layers
    return min(6, text_layers, vision_layers)


def _from_bridgetower(args: TowerArgs, cls, raw: dict, label2ans):
    from .weights import warm_start_from_bridgetower

    keep = {k: v for k, v in raw.items() if k not in ("model_type", "architectures", "transformers_version",
                                                      "auto_map", "dtype", "torch_dtype")}
    n = _managed_layers(args, raw["text_config"]["num_hidden_layers"], raw["vision_config"]["num_hidden_layers"])
    config = _task_config(ManagerTowerConfig(**keep, manager_type=args.model.manager_type or "aaum",
                                             num_managed_layers=n), args, label2ans)
    model = cls._from_config(config)
    report = warm_start_from_bridgetower(model, args.model.model_name_or_path)
    logger.info("warm start from BridgeTower %s: %s", args.model.model_name_or_path, report.summary())
    return model


def _from_unimodal(args: TowerArgs, cls, label2ans):
    try:
        from .weights import from_unimodal
    except ImportError as error:  # pragma: no cover - the module is part of the package
        raise RuntimeError("--text_model / --vision_model need llava_manager.tower.weights.from_unimodal") from error
    from transformers import CLIPVisionModel, RobertaModel

    m = args.model
    text, vision = RobertaModel.from_pretrained(m.text_model), CLIPVisionModel.from_pretrained(m.vision_model)
    tc, vc = text.config, vision.config
    config = ManagerTowerConfig(
        text_config={k: getattr(tc, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                 "num_attention_heads", "intermediate_size", "hidden_act",
                                                 "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
                                                 "pad_token_id", "bos_token_id", "eos_token_id")},
        vision_config=dict(hidden_size=vc.hidden_size, num_hidden_layers=vc.num_hidden_layers,
                           num_channels=vc.num_channels, patch_size=vc.patch_size, image_size=vc.image_size,
                           layer_norm_eps=vc.layer_norm_eps),
        hidden_size=tc.hidden_size, num_attention_heads=tc.num_attention_heads,
        num_hidden_layers=m.num_cross_layers, manager_type=m.manager_type or "aaum",
        num_managed_layers=_managed_layers(args, tc.num_hidden_layers, vc.num_hidden_layers),
    )
    config = _task_config(config, args, label2ans)
    model, report = from_unimodal(config, text, vision, model_class=cls)
    logger.info("built from unimodal encoders %s + %s: %s", m.text_model, m.vision_model, report.summary())
    return model


# ---------------------------------------------------------------------------------------------------------------------
# Data


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
            held_out = write_synthetic(folder / "pretrain_eval", "pretrain", max(16, d.synthetic_samples // 8),
                                       seed=seed + 1)
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
                result = tower_data.read_image_captions(d.eval_data_path, d.eval_image_folder or d.image_folder,
                                                        d.check_images)
        elif task == "vqav2":
            questions = root / f"v2_OpenEnded_mscoco_{split}_questions.json"
            annotations = root / f"v2_mscoco_{split}_annotations.json"
            result = tower_data.read_vqav2(questions, annotations if annotations.is_file() else None,
                                           d.image_folder, d.check_images)
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
        raise ValueError(f"no usable {task} training sample in {d.data_path} ({d.train_split}); "
                         f"skipped: {train.skipped[:3]}")
    train_records, eval_records = train.records, held.records
    label2ans = None
    if task == "vqav2":
        label2ans = tower_data.build_answer_vocab(train_records + eval_records, d.min_answer_count)
        train_records = tower_data.answerable(train_records, label2ans)
        eval_records = tower_data.answerable(eval_records, label2ans)
        if not train_records:
            raise ValueError(f"VQAv2: no training question has an answer given at least --min_answer_count "
                             f"{d.min_answer_count} times ({len(label2ans)} answers qualify); lower it for a "
                             f"small data set.")
        logger.info("VQAv2: %d answers (given >= %d times), %d training and %d evaluation questions",
                    len(label2ans), d.min_answer_count, len(train_records), len(eval_records))
    if d.max_eval_samples is not None:
        eval_records = eval_records[: d.max_eval_samples]
    skipped = {"train": train.skipped, "eval": held.skipped}
    return TaskData(train=train_records, eval=eval_records if evaluate else None, train_collator=None,
                    eval_collator=None, label2ans=label2ans, skipped=skipped)


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


# ---------------------------------------------------------------------------------------------------------------------
# Run


def run(argv: list[str] | None = None, *, recipe: str = "finetune") -> TowerTrainer:
    """Train `recipe` ("pretrain" or "finetune" with --task) as the arguments say, export the model and processor
    to --output_dir, evaluate on the eval split and write `{output_dir}/metrics.json`."""
    args = parse(recipe, argv)
    t, d, m = args.training, args.data, args.model
    logging.basicConfig(level=logging.INFO if t.should_log else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    processor = load_processor(args)
    data = build_data(args, processor)
    model, label2ans = build_model(args, processor, data.label2ans)
    attach_collators(args, data, processor, label2ans)
    heads = TASK_DEFAULTS[args.task]
    optim = args.optim
    lr_mult_head = optim.lr_mult_head if optim.lr_mult_head is not None else heads["lr_mult_head"]
    lr_mult_cross = optim.lr_mult_cross_modal if optim.lr_mult_cross_modal is not None \
        else heads["lr_mult_cross_modal"]
    total = t.train_batch_size * t.gradient_accumulation_steps * max(1, t.world_size)
    logger.info("%s: %s model (%s), %d training samples, total batch %d (%d per device x %d processes x %d "
                "accumulation), lr %g (heads x%g, cross-modal x%g)", args.task, model.config.manager_type,
                "embedded default" if args.tiny else (m.model_name_or_path or f"{m.text_model} + {m.vision_model}"),
                len(data.train), total, t.train_batch_size, max(1, t.world_size),
                t.gradient_accumulation_steps, t.learning_rate, lr_mult_head, lr_mult_cross)

    trainer = TowerTrainer(
        model=model, args=t, train_dataset=data.train, eval_dataset=data.eval,
        data_collator=data.train_collator, processing_class=processor,
        compute_metrics=None if args.task == "flickr30k" else compute_metrics_for(args.task),
        preprocess_logits_for_metrics=lambda logits, labels: _argmax(logits),
        task=args.task, lr_mult_head=lr_mult_head, lr_mult_cross_modal=lr_mult_cross,
        retrieval=data.retrieval, k_test=d.k_test, max_text_len=d.max_text_len,
    )
    resume = t.resume_from_checkpoint
    train_result = trainer.train(resume_from_checkpoint=True if resume == "last" else resume)
    trainer.save_model()
    trainer.save_state()
    out = Path(t.output_dir)
    if trainer.is_world_process_zero():
        processor.save_pretrained(out)
        skipped = {**data.skipped, "decode": data.train.skipped + (data.eval.skipped if data.eval else [])}
        (out / "data_skipped.json").write_text(json.dumps(skipped, indent=1))
        (out / "optimizer_groups.json").write_text(json.dumps(trainer.group_report(), indent=1))

    metrics: dict[str, Any] = {}
    if data.eval is not None:
        metrics = trainer.evaluate()
    else:
        logger.warning("no evaluation split (%s); metrics.json holds the training metrics only",
                       "--eval_data_path not given" if args.task == "pretrain" else "--eval_split none")
    if trainer.is_world_process_zero():
        report = {"task": args.task, "eval_split": d.eval_split if data.eval is not None else None,
                  "model": "embedded default" if args.tiny else (m.model_name_or_path or
                                                                  f"{m.text_model} + {m.vision_model}"),
                  "manager_type": model.config.manager_type, "global_step": trainer.state.global_step,
                  "train": train_result.metrics, "eval": metrics}
        (out / "metrics.json").write_text(json.dumps(report, indent=1))
        shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in metrics.items()}
        print(f"\n{args.task} ({model.config.manager_type}) after {trainer.state.global_step} steps: {shown}\n"
              f"  model + processor: {out}\n  metrics:           {out / 'metrics.json'}\n", flush=True)
    return trainer


__all__ = [
    "TASKS",
    "FINETUNE_TASKS",
    "TASK_DEFAULTS",
    "TASK_MODELS",
    "TINY",
    "TowerTrainer",
    "module_parameters",
    "no_decay_names",
    "labelled_parameter_groups",
    "parameter_groups",
    "parse",
    "retrieval_metrics",
    "run",
    "set_image_size",
    "tiny_config",
]
