"""Arguments of the training recipes and the defaults of LLaVA-OneVision's three stages.

Sources of the stage defaults (LLaVA-NeXT's public OneVision scripts, and the Manager paper, App. C):
- Stage-1 (`scripts/train/pretrain_siglip.sh`): projector only, lr 1e-3, "plain" captions, batch 16 per GPU.
- Stage-1.5 / Stage-2 (`scripts/train/finetune_si.sh`, `finetune_ov.sh`): vision tower + projector + LLM, lr 1e-5,
  vision tower 2e-6, "qwen_1_5" chat format.
- All stages: 1 epoch, cosine schedule, warmup ratio 0.03, weight decay 0, bf16 (when the GPU has it), gradient
  checkpointing, anyres_max_9 (from the model's config), 4 data loader workers; max length 16,384 (the paper's;
  LLaVA-OneVision used 32,768).
- Managers (this package): trainable in every stage, at the stage's learning rate unless `--manager_lr` is given.
- Families: every supported family trains with these defaults; a model's family comes from its config, and
  `--family` picks the embedded default's (LLaVA-OneVision unless given).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser, TrainingArguments

from ..core.config import ManagerConfig
from ..families import FAMILIES
from ..processing.templates import TEMPLATES
from ..runtime import cpu_distributed
from . import fsdp

MODULES = ("vision_tower", "projector", "llm")
DEFAULT_FAMILY = "llava_onevision"  # the embedded default's family when --family is not given

COMMON = dict(
    num_train_epochs=1,
    lr_scheduler_type="cosine",
    warmup_steps=0.03,
    weight_decay=0.0,
    bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    logging_steps=1,
    save_strategy="steps",
    dataloader_pin_memory=torch.cuda.is_available(),
    save_steps=1000,
    save_total_limit=2,
    dataloader_num_workers=4,
    remove_unused_columns=False,  # the collator passes skip records the model does not take
    logging_nan_inf_filter=False,  # a non-finite step logs its real loss (runtime/nonfinite.py), not an average
)
# transformers 5.x renamed gradient checkpointing to activation checkpointing (the old flags still parse).
_CHECKPOINTING = (
    "activation_checkpointing"
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    else "gradient_checkpointing"
)
COMMON.update({_CHECKPOINTING: True, f"{_CHECKPOINTING}_kwargs": {"use_reentrant": False}})
STAGES = {
    "stage1": dict(
        learning_rate=1e-3,
        per_device_train_batch_size=16,
        train_modules="projector",
        template="plain",
        output_dir="runs/stage1",
    ),
    # template None: the chat template of the checkpoint's LLM (`templates.template_for_config`), chosen at run time.
    "stage1_5": dict(
        learning_rate=1e-5,
        vision_tower_lr=2e-6,
        train_modules="vision_tower,projector,llm",
        template=None,
        output_dir="runs/stage1_5",
    ),
    "stage2": dict(
        learning_rate=1e-5,
        vision_tower_lr=2e-6,
        train_modules="vision_tower,projector,llm",
        template=None,
        output_dir="runs/stage2",
    ),
}
# The embedded default (no --model_name_or_path): a random tiny model learns nothing at 1e-5 in a few minutes, and
# at 1e-3 and more its image path can break down before colour is learnt (the image tokens turn into a large,
# nearly constant vector, or the vision tower's activations blow up), on some seeds only: the old 3e-3 / vision
# tower 6e-4 answered one colour to every image. 7e-4 for every module (the vision tower starts from random too),
# held after the warmup: a cosine decay leaves a short --max_steps run almost no rate. 2,048 samples x 4 epochs.
# Checkpointing would cost half a step more for nothing on this model; data loading is ~2 ms a sample, so it stays
# in the main process instead of competing with torch's threads for the 2 cores.
TINY = dict(
    learning_rate=7e-4,
    vision_tower_lr=7e-4,
    lr_scheduler_type="constant_with_warmup",
    per_device_train_batch_size=8,
    num_train_epochs=4,
    synthetic_samples=2048,
    save_steps=256,
    logging_steps=16,
    dataloader_num_workers=0,
    **{_CHECKPOINTING: False},
)
# The embedded default's chat format (its word-level tokenizer is made for it): qwen_1_5 (ChatML) for every family
# but Gemma 3, whose tiny tokenizer has Gemma's turn tokens (`synthetic.data.tiny_template`); chosen after parsing.
TINY_TEMPLATE = "qwen_1_5"


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A directory or Hub id of any supported family (LLaVA-1.5, LLaVA-NeXT, LLaVA-NeXT-Video, "
            "LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5, InternVL, Gemma 3, Mistral3; plain or "
            "already patched); its config says the family. Default: a tiny model built in code (see --family)."
        },
    )
    family: str | None = field(
        default=None,
        metadata={
            "help": f"The embedded default's family (without --model_name_or_path): one of {', '.join(FAMILIES)}; "
            f"default {DEFAULT_FAMILY}. With a model it must agree with the model's config (or be left out).",
            "choices": list(FAMILIES),
        },
    )
    train_modules: str = field(
        default="vision_tower,projector,llm",
        metadata={"help": f"Comma list of {MODULES} to train; the managers always train."},
    )
    vision_tower_lr: float | None = field(default=None, metadata={"help": "Vision tower lr (default: the stage's lr)."})
    manager_lr: float | None = field(default=None, metadata={"help": "Managers' lr (default: the stage's lr)."})
    attn_implementation: str | None = field(default=None, metadata={"help": "e.g. sdpa, flash_attention_2, eager."})
    use_liger: str = field(
        default="auto",
        metadata={
            "help": "Liger's RMSNorm and SwiGLU kernels on the LLM (training/liger.py): auto (when liger_kernel is "
            "installed and a CUDA GPU is there), true (required), false.",
            "choices": ["auto", "true", "false"],
        },
    )
    cpu_threads: str = field(
        default="auto",
        metadata={
            "help": "torch's CPU threads (training/threads.py): auto (one for the embedded default on a machine "
            "without a GPU, where more only spin on a busy machine; torch's default otherwise) or a number."
        },
    )
    skip_nonfinite_steps: int = field(
        default=0,
        metadata={
            "help": "0: a step with a non-finite loss or gradient stops the run (before its optimizer step). N > 0: "
            "such steps are skipped (no parameter or optimizer state changes), counted (`nonfinite_skipped` in the "
            "logs) and the run stops when more than N come in a row. Not under DeepSpeed (runtime/nonfinite.py)."
        },
    )
    peak_tflops: float | None = field(
        default=None,
        metadata={
            "help": "Peak TFLOP/s of one GPU for the `mfu` log (default: the dense bf16 peak of a known GPU, "
            "training/throughput.py GPU_PEAK_TFLOPS; give it for another GPU or for fp32/TF32 training)."
        },
    )

    def tiny_family(self) -> str:
        """The family of the embedded default: `--family`, else LLaVA-OneVision."""
        return self.family or DEFAULT_FAMILY

    def modules(self) -> set[str]:
        chosen = {m.strip() for m in self.train_modules.split(",") if m.strip()}
        if not chosen <= set(MODULES):
            raise ValueError(f"--train_modules {self.train_modules!r}: use a comma list of {', '.join(MODULES)}.")
        return chosen


@dataclass
class ManagerArguments:
    manager_interval: int | None = field(
        default=None, metadata={"help": "A manager every N decoder layers (paper: 4)."}
    )
    manager_start: int | None = field(default=None, metadata={"help": "First managed decoder layer (paper: 0)."})
    manager_layers: str | None = field(default=None, metadata={"help": "Explicit comma list of decoder layers."})
    manager_vision_layers: str | None = field(
        default=None, metadata={"help": "top_half (paper), bottom_half, all, or a comma list of hidden_states indices."}
    )
    manager_manage: str | None = field(default=None, metadata={"help": "both (paper), base or grids."})
    manager_jitter: float | None = field(default=None, metadata={"help": "Training noise amount (paper: 0.02)."})

    def given(self) -> dict:
        """The ManagerConfig fields set on the command line."""
        ints = lambda text: [int(x) for x in text.split(",") if x.strip()]  # noqa: E731
        fields = dict(
            interval=self.manager_interval,
            start=self.manager_start,
            inject_layers=ints(self.manager_layers) if self.manager_layers else None,
            manage=self.manager_manage,
            jitter=self.manager_jitter,
        )
        if self.manager_vision_layers is not None:
            named = self.manager_vision_layers in ("top_half", "bottom_half", "all")
            fields["vision_layers"] = self.manager_vision_layers if named else ints(self.manager_vision_layers)
        return {k: v for k, v in fields.items() if v is not None}

    def config(self) -> ManagerConfig:
        return ManagerConfig(**self.given())


@dataclass
class DataArguments:
    data_path: str | None = field(
        default=None,
        metadata={
            "help": "LLaVA conversation JSON/JSONL, parquet / arrow shards with image bytes "
            "(a file, a folder of them or "
            "a glob: the LLaVA-OneVision data release's layout), or a data YAML mixture of both (json_path / "
            "data_files entries). Default: synthetic shapes data made offline. See "
            "llava_manager/training/shards.py."
        },
    )
    image_folder: str | None = field(
        default=None, metadata={"help": "Folder the samples' image paths are relative to."}
    )
    template: str | None = field(
        default=None,
        metadata={
            "help": "Conversation format: plain (Stage-1 captions), qwen_1_5 (ChatML: LLaVA-OneVision, Qwen-VL, "
            "InternVL), vicuna_v1 (LLaVA-1.5, Vicuna/Llama LLMs), mistral_instruct (LLaVA-NeXT Mistral), gemma "
            "(Gemma 3). Default: plain in Stage-1; later, the format of the model's LLM (qwen2, the Qwen-VL LLMs, "
            "llama, mistral, gemma3; others must choose); for the embedded default qwen_1_5, gemma for Gemma 3.",
            "choices": list(TEMPLATES),
        },
    )
    max_length: int = field(default=16384, metadata={"help": "Longer samples are skipped, never cut."})
    strict_data: bool = field(default=False, metadata={"help": "Stop at the first bad sample instead of skipping it."})
    skip_corrupt_data: bool = field(
        default=False,
        metadata={
            "help": "--streaming: skip a parquet row group or arrow file that cannot be read (reported in "
            "data_skipped.json) instead of stopping the run with an error naming it (training/streaming.py)."
        },
    )
    synthetic_samples: int = field(default=1024, metadata={"help": "Size of the synthetic default data set."})
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream the data (an endless IterableDataset; shards are read as they are, not converted into the "
            "datasets cache); needs --max_steps. Exactly resumable with the same world size, batch size and "
            "--dataloader_num_workers. See llava_manager/training/streaming.py."
        },
    )
    shuffle_buffer: int = field(
        default=1000,
        metadata={
            "help": "With --streaming: rows in each data reader's shuffle buffer (the pieces of the mixture are "
            "permuted each pass too); 0 reads the data in order, unshuffled."
        },
    )
    group_by_modality_length: bool = field(
        default=False,
        metadata={
            "help": "As LLaVA-NeXT: samples with images and text-only samples in separate length-sorted groups, so a "
            "batch (all ranks' batches of a step) holds one modality; one process: every sample once, one "
            "remainder batch an epoch may mix; several: each modality filled up to whole steps with repeats, "
            "so no rank lacks images while another has some (ZeRO-2 / DDP would fail). Seeded by --data_seed "
            "(else --seed), reshuffled each epoch, exactly resumable. See llava_manager/training/sampling.py."
        },
    )
    token_budget: int | None = field(
        default=None,
        metadata={
            "help": "Batches of varying size whose estimated tokens stay within this budget (per device; see "
            "--token_budget_mode); --per_device_train_batch_size is then unused. Per modality with "
            "--group_by_modality_length. Default: fixed-size batches."
        },
    )
    token_budget_mode: str | None = field(
        default=None,
        metadata={
            "help": "How a batch's tokens count against --token_budget: padded (batch size x longest sample) or packed "
            "(sum of the lengths). Default: packed with --padding_free, else padded.",
            "choices": ["padded", "packed"],
        },
    )
    image_token_estimate: int | None = field(
        default=None,
        metadata={
            "help": "Tokens counted an image in the length estimate of --group_by_modality_length / --token_budget "
            "(images are not opened). Default: what the processor writes for a square image at its largest "
            "grid pinpoint."
        },
    )
    padding_free: bool = field(
        default=False,
        metadata={
            "help": "Pack the samples of a batch into rows of at most --max_packed_tokens tokens "
            "(image tokens counted), "
            "no padding between them, positions restarting per sample, no attention across samples (flash "
            "attention's varlen kernel on a GPU, transformers' packed-sequence mask for SDPA / eager): the same "
            "per-token losses as padded batches, without computing padding. See "
            "llava_manager/training/packing.py."
        },
    )
    max_packed_tokens: str | None = field(
        default=None,
        metadata={
            "help": "Tokens a packed row may hold with --padding_free: a number (--max_length is lowered to it when "
            "larger, so that a sample that cannot be packed is skipped as over-length), or longest (each batch's "
            "rows as long as its longest sample). Default (auto): by the model's attention kernel, rows of the "
            "longest sample under SDPA / eager (they mask a whole row: W^2 for a row of W tokens), one row of "
            "--max_length with flash-attention (flash_attention_2/3, Hub flash kernels: varlen). See "
            "llava_manager/training/packing.py."
        },
    )


def parse(stage: str, argv: list[str] | None = None):
    """(model, manager, data, training) arguments for `stage`: stage defaults, overridden by the command line."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}: use one of {sorted(STAGES)}.")
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser((ModelArguments, ManagerArguments, DataArguments, TrainingArguments))
    defaults = {**COMMON, **STAGES[stage]}
    if not any(a == "--model_name_or_path" or a.startswith("--model_name_or_path=") for a in argv):
        defaults.update(TINY)
        if stage == "stage1":  # only the projector and managers train: they take a higher rate
            defaults.update(learning_rate=5e-3)
    defaults.update(cpu_distributed.prepare(argv))
    defaults.update(fsdp.prepare(argv))  # FSDP2: a world of one without a launcher; the CPU's gloo group
    parser.set_defaults(**defaults)
    model_args, manager_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if model_args.model_name_or_path is None and data_args.template is None:
        from ..synthetic.data import tiny_template

        data_args.template = tiny_template(model_args.tiny_family())
    model_args.modules()  # check early
    manager_args.config()
    return model_args, manager_args, data_args, training_args
