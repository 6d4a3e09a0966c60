"""The tasks of ManagerTower's recipes and their defaults: the task models and heads, the labels the Trainer hands to
`compute_metrics`, the splits, and the hyper-parameters per task (`TASK_DEFAULTS`, `COMMON`; `TINY_COMMON` and
`TINY` for the embedded default).

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
"""

from __future__ import annotations

from typing import Any

import torch

from ..heads import (
    ManagerTowerForImageTextRetrieval,
    ManagerTowerForNLVR2,
    ManagerTowerForPreTraining,
    ManagerTowerForQuestionAnswering,
    ManagerTowerForVisualEntailment,
)

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
LABEL_NAMES = {
    "pretrain": ["mlm_labels", "itm_labels"],
    "vqav2": ["labels"],
    "snli_ve": ["labels"],
    "nlvr2": ["labels"],
    "flickr30k": [],
}

# ---------------------------------------------------------------------------------------------------------------------
# Defaults

# The paper's numbers (Table IX: pre-training; Table XIV: fine-tuning), with the official scripts' per-GPU batch
# sizes and evaluation batch sizes (scripts/*.sh EXP_PGB / EXP_PGEB) and lr multipliers (EXP_LMH / EXP_LMC),
# head_hidden_scale (EXP_HHS). warmup_steps < 1 is a fraction of the training steps.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": dict(
        max_steps=100_000,
        total_batch_size=4096,
        learning_rate=1e-5,
        weight_decay=0.01,
        warmup_steps=10_000,
        image_size=288,
        lr_mult_head=5.0,
        lr_mult_cross_modal=5.0,
        head_hidden_scale=1,
        max_text_len=50,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=32,
    ),
    # Table XIV: batch 576, warm-up 0.06; the official ftfpt-base-vqa.sh ran batch 504, warm-up 0.1.
    "vqav2": dict(
        num_train_epochs=10,
        total_batch_size=576,
        learning_rate=9e-6,
        weight_decay=0.06,
        warmup_steps=0.06,
        image_size=576,
        lr_mult_head=50.0,
        lr_mult_cross_modal=5.0,
        head_hidden_scale=2,
        max_text_len=50,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=16,
    ),
    "snli_ve": dict(
        num_train_epochs=4,
        total_batch_size=64,
        learning_rate=3e-6,
        weight_decay=0.01,
        warmup_steps=0.06,
        image_size=384,
        lr_mult_head=10.0,
        lr_mult_cross_modal=5.0,
        head_hidden_scale=2,
        max_text_len=50,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=64,
    ),
    "nlvr2": dict(
        num_train_epochs=5,
        total_batch_size=256,
        learning_rate=1.4e-5,
        weight_decay=0.01,
        warmup_steps=0.1,
        image_size=384,
        lr_mult_head=10.0,
        lr_mult_cross_modal=5.0,
        head_hidden_scale=1,
        max_text_len=50,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=32,
    ),
    # The official Flickr30K task config sets max_text_len 40; the paper (Sec. IV-A) says 50 for every task.
    "flickr30k": dict(
        num_train_epochs=20,
        total_batch_size=512,
        learning_rate=6e-6,
        weight_decay=0.01,
        warmup_steps=0.1,
        image_size=384,
        lr_mult_head=5.0,
        lr_mult_cross_modal=5.0,
        head_hidden_scale=1,
        max_text_len=50,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
    ),
}
# Splits: train on `train_split` (comma list), evaluate on `eval_split`. The official runs train VQAv2 on
# train2014 + val2014 and submit test-dev to eval.ai; here val2014 is the default evaluation split, so it is left
# out of training by default (`--train_split train2014,val2014 --eval_split ...` for the official mix). Flickr30K:
# train + val (as the official), evaluated on the Karpathy test split. SNLI-VE / NLVR2: dev (test / test1 also work).
SPLITS = {
    "pretrain": ("train", "eval"),
    "vqav2": ("train2014", "val2014"),
    "snli_ve": ("train", "dev"),
    "nlvr2": ("train", "dev"),
    "flickr30k": ("train,val", "test"),
}

COMMON: dict[str, Any] = dict(
    lr_scheduler_type="linear",
    optim="adamw_torch",
    adam_beta1=0.9,
    adam_beta2=0.98,
    adam_epsilon=1e-8,
    max_grad_norm=0.0,
    logging_steps=50,
    save_strategy="steps",
    save_steps=2000,
    save_total_limit=2,
    eval_strategy="no",
    remove_unused_columns=False,
    dataloader_num_workers=4,
    dataloader_pin_memory=torch.cuda.is_available(),
    report_to="none",
)
# The embedded default: a tiny random model on synthetic shapes (see `model.tiny_config`), a minute or so on 2 CPU
# cores.
# Base lr 2e-4 (5e-4 for pre-training: MLM + ITM from scratch), with the task's multipliers; 10% warm-up, no gradient
# accumulation. What they reach (one run each, 2 CPU cores): pre-training MLM ~87% / ITM ~55% (chance 50: ITM needs
# more than a minute), VQA score ~80, SNLI-VE ~67% (chance 33), NLVR2 ~62%, Flickr30K R-mean ~45 (chance R@1 4%).
TINY_COMMON: dict[str, Any] = dict(
    total_batch_size=None,
    per_device_train_batch_size=16,
    per_device_eval_batch_size=32,
    learning_rate=2e-4,
    warmup_steps=0.1,
    max_steps=-1,
    image_size=None,
    logging_steps=10,
    save_steps=200,
    dataloader_num_workers=0,
    min_answer_count=1,
    max_grad_norm=1.0,
)
TINY: dict[str, dict[str, Any]] = {
    "pretrain": dict(num_train_epochs=8, synthetic_samples=512, learning_rate=5e-4),
    "vqav2": dict(num_train_epochs=10, synthetic_samples=192),
    "snli_ve": dict(num_train_epochs=8, synthetic_samples=128),
    "nlvr2": dict(num_train_epochs=10, synthetic_samples=192),
    "flickr30k": dict(num_train_epochs=6, synthetic_samples=96),
}
