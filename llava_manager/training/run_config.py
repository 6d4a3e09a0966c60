"""`RunConfig`: every setting a recipe derives from its arguments, resolved once, before anything is built.

`resolve(stage, model_args, manager_args, data_args, training_args)` checks the arguments against each other and
derives what the builders need: the checkpoint to resume from (complete, `runtime/commits.py`), the conversation
template (`--template`, else the checkpoint LLM's), the sample length (`--max_length`, lowered to the packed row
length with `--padding_free`), the data order (`sampling.SamplingOptions`) and the data seed. The model, collator,
data set and trainer are then built from it, and none of them changes another's arguments. The one setting it
completes in the `TrainingArguments` is accelerate's `dispatch_batches` (off with `--streaming`: each process reads
its own batches).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from transformers import AutoConfig

from ..families import family_of_config
from ..processing.templates import template_for_config
from ..runtime import commits
from .packing import row_length
from .sampling import SamplingOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """What `resolve` derived: `resume` (a complete checkpoint or None), `template`, `max_length` (tokens a sample
    may take), `packed_tokens` (a packed row's length with `--padding_free`: tokens, "longest" or "auto", see
    `packed_row_length`; None: padded batches), `sampling`, `data_seed`."""

    stage: str
    resume: str | None
    template: str
    max_length: int
    packed_tokens: int | str | None
    sampling: SamplingOptions
    data_seed: int


def choose_template(model_args, data_args) -> str:
    """`--template`, else (Stage-1.5 / Stage-2 from a model directory) the template of the checkpoint's LLM
    (`templates.LLM_TEMPLATES`: qwen2 -> qwen_1_5, llama -> vicuna_v1, mistral -> mistral_instruct); an LLM without
    one is an error naming --template. The embedded default's is set by `train_args.parse` (qwen_1_5)."""
    if data_args.template is not None:
        return data_args.template
    config = AutoConfig.from_pretrained(model_args.model_name_or_path)
    family_of_config(config)  # not a LLaVA family: that error first
    template = template_for_config(config)
    logger.info(
        "conversation template: %s (from %s's LLM; --template chooses another)", template, model_args.model_name_or_path
    )
    return template


def packed_row_length(data_args, training_args) -> tuple[int, int | str | None]:
    """(max_length, packed_tokens): with `--padding_free`, `--max_packed_tokens` checked (`packing.row_length`): a
    number of tokens, with `--max_length` lowered to that row length, so that a sample too long to pack is skipped
    (and reported) as over-length by the data set; `longest` (rows as long as each batch's longest sample); or `auto`
    when not given, which `packing.build_collator` resolves by the model's attention kernel (`default_row_length`:
    rows of the longest sample under SDPA / eager, one row of `--max_length` with flash-attention)."""
    if not data_args.padding_free:
        return data_args.max_length, None
    row = row_length(data_args.max_packed_tokens)
    if training_args.n_gpu > 1:
        raise ValueError(
            f"--padding_free with {training_args.n_gpu} GPUs in one process: torch's DataParallel would "
            f"split a packed batch's rows from their sample boundaries (cu_seq_lens). Launch one process "
            f"per GPU (torchrun, accelerate launch, deepspeed), or make one GPU visible."
        )
    if isinstance(row, int) and data_args.max_length > row:
        logger.info(
            "padding-free: --max_length %d lowered to the packed row length --max_packed_tokens %d (longer samples "
            "are skipped as over-length)",
            data_args.max_length,
            row,
        )
    return (min(data_args.max_length, row) if isinstance(row, int) else data_args.max_length), row


def check_streaming(data_args, training_args) -> None:
    """`--streaming` reads an endless stream, each process its own batches: a run without `--max_steps`, or batches
    dispatched from one process, are refused (the data orders that need a length: `SamplingOptions.from_args`);
    accelerate's `dispatch_batches` is turned off."""
    if not data_args.streaming:
        if data_args.skip_corrupt_data:
            raise ValueError(
                "--skip_corrupt_data skips unreadable pieces of a stream (--streaming); map-style data is read whole "
                "before training, and an unreadable file is an error naming it then: drop the flag or add "
                "--streaming."
            )
        return
    if training_args.max_steps is None or training_args.max_steps <= 0:
        raise ValueError("--streaming reads an endless stream: give the length of the run with --max_steps.")
    config = training_args.accelerator_config
    if getattr(config, "split_batches", False) or getattr(config, "dispatch_batches", None):
        raise ValueError(
            "--streaming: each process reads its own batches; drop split_batches / dispatch_batches "
            "from --accelerator_config."
        )
    config.dispatch_batches = False


def resolve(stage: str, model_args, manager_args, data_args, training_args) -> RunConfig:
    """The run's derived settings, checked before any weight loads (see the module doc)."""
    resume = commits.resolve(training_args.resume_from_checkpoint, training_args.output_dir)
    template = choose_template(model_args, data_args)  # an LLM without a default template fails here
    max_length, packed_tokens = packed_row_length(data_args, training_args)
    sampling = SamplingOptions.from_args(data_args, training_args)
    check_streaming(data_args, training_args)
    model_args.modules()  # --train_modules
    manager_args.config()  # the manager flags
    return RunConfig(
        stage=stage,
        resume=resume,
        template=template,
        max_length=max_length,
        packed_tokens=packed_tokens,
        sampling=sampling,
        data_seed=training_args.data_seed or training_args.seed,
    )
