"""One training stage end to end: arguments -> model + managers -> data -> Trainer -> exported model.

The recipes in `recipes/` call `run(stage)`; everything here is shared by the three stages.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, set_seed

from ..core.patch import apply_manager, has_manager, manager_config
from ..core.persistence import from_pretrained
from ..families import family_of_config, get_family
from ..processing.processors import load_processor
from ..runtime import processes
from ..synthetic import score as shapes_score
from ..synthetic.data import tiny_model_config, tiny_processor, write_shapes_dataset
from . import fsdp, run_config, threads, train_args
from .data import SupervisedDataset, load_records
from .liger import apply_liger
from .packing import build_collator
from .parts import set_trainable
from .run_config import RunConfig
from .trainer import ManagerTrainer, SkipReport

logger = logging.getLogger(__name__)


def checkpoint_family(model_args) -> str:
    """The family of `--model_name_or_path` (from its config); a `--family` that disagrees is an error."""
    config = AutoConfig.from_pretrained(model_args.model_name_or_path)
    family = family_of_config(config).name
    if model_args.family is not None and model_args.family != family:
        raise ValueError(
            f"--family {model_args.family} disagrees with {model_args.model_name_or_path}, a "
            f"{family} model (its config's model_type); the family of a model comes from its config, "
            f"so drop --family (it picks the embedded default's family when no model is given)."
        )
    return family


def init_zero_projector(model) -> list[str]:
    """A random model's projector weights that transformers initialises to zeros (Gemma 3's
    `mm_input_projection_weight`, a matmul a real checkpoint has trained) drawn like an ordinary linear layer's,
    normal(0, the LLM's initializer_range); otherwise its image tokens, and the managers' features, are all zero at
    the start and the vision tower gets no gradient until the projector moves. Only weights (2-D or more) that are
    all zero: biases and Gemma's (1 + weight) RMSNorm scales stay zero, and no other family's model changes (none
    has such a weight). Returns the names re-drawn."""
    from .parts import vision_parts

    params = [p for p in vision_parts(model.model)["projector"] if p.dim() >= 2]
    if not params:
        return []
    names = {id(p): n for n, p in model.named_parameters()}
    std = model.config.get_text_config().initializer_range  # its output is in the LLM's embedding space
    drawn = []
    gathered = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in params):  # ZeRO-3: the full weights; rank 0's draw is kept
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    with gathered, torch.no_grad():
        for p in params:
            if p.numel() and not p.any():
                p.normal_(0.0, std)
                drawn.append(names[id(p)])
    if drawn:
        logger.info("embedded default: zero-initialised projector weights drawn as normal(0, %g): %s", std, drawn)
    return drawn


def build_model(model_args, manager_args, training_args):
    """The model and its processor: the tiny default of `--family` built in code, or a checkpoint of any supported
    family (plain: the managers are applied; already patched: its managers are kept, and manager flags must agree
    with them)."""
    if model_args.model_name_or_path is None:
        family = model_args.tiny_family()
        processor = tiny_processor(family=family)
        set_seed(training_args.seed)
        # from_config, not the constructor: under ZeRO-3 it builds the weights inside deepspeed.zero.Init.
        model = AutoModelForImageTextToText.from_config(tiny_model_config(processor, family))
        init_zero_projector(model)
        logger.info("embedded default: a tiny %s model", get_family(family).title)
    else:
        checkpoint_family(model_args)
        processor = load_processor(model_args.model_name_or_path)
        # DeepSpeed keeps fp32 master weights, so bf16 weights are fine there; a plain torch optimizer needs fp32.
        dtype = torch.bfloat16 if training_args.bf16 and training_args.deepspeed else torch.float32
        kwargs = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
        model = from_pretrained(model_args.model_name_or_path, dtype=dtype, **kwargs)
    if has_manager(model):
        saved = manager_config(model).to_dict()
        clashes = {
            k: (v, saved[k])
            for k, v in manager_args.config().to_dict().items()
            if k in manager_args.given() and saved[k] != v
        }
        if clashes:
            raise ValueError(
                f"{model_args.model_name_or_path} already has managers; the flags disagree with them "
                f"(flag, saved): {clashes}. Drop those flags or start from a plain model."
            )
    else:
        apply_manager(model, manager_args.config())
    set_trainable(model, model_args.modules())
    apply_liger(model, model_args.use_liger)  # Liger's kernels on the LLM: CUDA + liger_kernel only
    model.config.use_cache = False  # training; generation turns it back on
    return model, processor


def build_dataset(config: RunConfig, data_args, training_args, processor, model_config=None):
    """The training data: the embedded synthetic set or `--data_path`, map-style or streamed (`--streaming`), with
    the run's template and length budget (`config`)."""
    if data_args.data_path is None:
        with training_args.main_process_first(desc="synthetic data"):
            paths = write_shapes_dataset(
                Path(training_args.output_dir) / "shapes_data", data_args.synthetic_samples, seed=config.data_seed
            )
        data_path = paths["captions" if config.template == "plain" else "instruct"]
        image_folder = paths["image_folder"]
    else:
        data_path, image_folder = data_args.data_path, data_args.image_folder
    if data_args.streaming:  # an endless IterableDataset over JSON / shards / a mixture (streaming.py)
        from .streaming import streaming_dataset

        return streaming_dataset(config, data_path, image_folder, data_args, training_args, processor, model_config)
    records = load_records(data_path, seed=config.data_seed)
    return SupervisedDataset(
        records,
        processor,
        image_folder,
        config.template,
        config.max_length,
        data_args.strict_data,
        model_config=model_config,
    )


def main(stage: str, argv: list[str] | None = None) -> None:
    """A recipe's command line: `run`, then every process ends together, a preempted run with the requeue status
    (runtime/processes.py)."""
    processes.finish(run(stage, argv))


def run(stage: str, argv: list[str] | None = None) -> ManagerTrainer:
    model_args, manager_args, data_args, training_args = train_args.parse(stage, argv)
    logging.basicConfig(
        level=logging.INFO if training_args.should_log else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    with threads.cpu_threads(model_args.cpu_threads, embedded_default=model_args.model_name_or_path is None):
        return _run(stage, model_args, manager_args, data_args, training_args)


def _run(stage, model_args, manager_args, data_args, training_args) -> ManagerTrainer:
    # every derived setting, checked before any weight loads (run_config.py); nothing below changes an argument
    config = run_config.resolve(stage, model_args, manager_args, data_args, training_args)
    model, processor = build_model(model_args, manager_args, training_args)
    trainer = ManagerTrainer(
        model=model,
        args=training_args,
        train_dataset=build_dataset(config, data_args, training_args, processor, model.config),
        data_collator=build_collator(model, processor, config.packed_tokens, config.max_length),
        processing_class=processor.tokenizer,
        vision_tower_lr=model_args.vision_tower_lr,
        manager_lr=model_args.manager_lr,
        peak_tflops=model_args.peak_tflops,
        skip_nonfinite_steps=model_args.skip_nonfinite_steps,
        sampling=config.sampling,
        stage=stage,
    )
    trainer.train(resume_from_checkpoint=config.resume)
    if trainer.preemption.stopped_at is not None:  # saved and logged (runtime/preemption.py); no final export
        return trainer

    skips = trainer.gather_skips()
    with fsdp.full_state_dict(trainer):  # FSDP: the full model, whatever the checkpoints' state-dict type
        trainer.save_model()  # under ZeRO-3 / FSDP this gathers the weights, managers included
    trainer.save_state()
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)
        (Path(training_args.output_dir) / SkipReport.FILE).write_text(json.dumps(skips, indent=1))
        trainer.nonfinite.save(training_args.output_dir)
        if skips["skipped"]:
            logger.warning(
                "data: %d samples skipped %s; see %s/%s",
                skips["skipped"],
                skips["by_reason"],
                training_args.output_dir,
                SkipReport.FILE,
            )
        else:
            logger.info("data: no sample skipped")
        logger.info("exported model: %s (load it with llava_manager.from_pretrained)", training_args.output_dir)
        if model_args.model_name_or_path is None and data_args.data_path is None:
            score_heldout(training_args, data_args)
    return trainer


def score_heldout(training_args, data_args) -> dict | None:
    """The embedded default proves itself: its export, scored on held-out shapes images (`shapes_score`), printed
    and written to `{output_dir}/shapes_score.json`. Skipped for a run cut short by `--max_steps` (tests, smoke
    runs; `python -m llava_manager.synthetic.score DIR` scores any export) and for Stage-1's caption format."""
    out = Path(training_args.output_dir)
    if data_args.template == "plain":
        return None
    if training_args.max_steps > 0:
        logger.info(
            "held-out score skipped: --max_steps %d cuts the run short; score the export with "
            "`python -m llava_manager.synthetic.score %s`",
            training_args.max_steps,
            out,
        )
        return None
    result = shapes_score.score_export(out)
    (out / "shapes_score.json").write_text(json.dumps(result, indent=1))
    print(f"\n{shapes_score.describe(result)}\n  written to       {out / 'shapes_score.json'}\n", flush=True)
    return result
