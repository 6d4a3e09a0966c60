"""`run(argv, recipe=...)`: parse the arguments, build the processor, data and model, train with `TowerTrainer`,
export the model and processor, evaluate and write `{output_dir}/metrics.json`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ...runtime import commits, processes
from .args import parse
from .data import attach_collators, build_data
from .model import build_model, load_processor
from .tasks import TASK_DEFAULTS
from .trainer import TowerTrainer, _argmax, compute_metrics_for

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None, *, recipe: str = "finetune") -> None:
    """A recipe's command line: `run`, then every process ends together, a preempted run with the requeue status
    (llava_manager/runtime/processes.py)."""
    processes.finish(run(argv, recipe=recipe))


def run(argv: list[str] | None = None, *, recipe: str = "finetune") -> TowerTrainer:
    """Train `recipe` ("pretrain" or "finetune" with --task) as the arguments say, export the model and processor
    to --output_dir, evaluate on the eval split and write `{output_dir}/metrics.json`."""
    args = parse(recipe, argv)
    t, d, m = args.training, args.data, args.model
    logging.basicConfig(
        level=logging.INFO if t.should_log else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    resume = commits.resolve(t.resume_from_checkpoint, t.output_dir)  # complete, checked before anything loads
    processor = load_processor(args)
    data = build_data(args, processor)
    model, label2ans = build_model(args, processor, data.label2ans)
    attach_collators(args, data, processor, label2ans)
    heads = TASK_DEFAULTS[args.task]
    optim = args.optim
    lr_mult_head = optim.lr_mult_head if optim.lr_mult_head is not None else heads["lr_mult_head"]
    lr_mult_cross = optim.lr_mult_cross_modal if optim.lr_mult_cross_modal is not None else heads["lr_mult_cross_modal"]
    total = t.train_batch_size * t.gradient_accumulation_steps * max(1, t.world_size)
    logger.info(
        "%s: %s model (%s), %d training samples, total batch %d (%d per device x %d processes x %d "
        "accumulation), lr %g (heads x%g, cross-modal x%g)",
        args.task,
        model.config.manager_type,
        "embedded default" if args.tiny else (m.model_name_or_path or f"{m.text_model} + {m.vision_model}"),
        len(data.train),
        total,
        t.train_batch_size,
        max(1, t.world_size),
        t.gradient_accumulation_steps,
        t.learning_rate,
        lr_mult_head,
        lr_mult_cross,
    )

    trainer = TowerTrainer(
        model=model,
        args=t,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=data.train_collator,
        processing_class=processor,
        compute_metrics=None if args.task == "flickr30k" else compute_metrics_for(args.task),
        preprocess_logits_for_metrics=lambda logits, labels: _argmax(logits),
        task=args.task,
        lr_mult_head=lr_mult_head,
        lr_mult_cross_modal=lr_mult_cross,
        retrieval=data.retrieval,
        k_test=d.k_test,
        max_text_len=d.max_text_len,
    )
    train_result = trainer.train(resume_from_checkpoint=resume)
    if trainer.preemption.stopped_at is not None:  # saved and logged (runtime/preemption.py); no export or evaluation
        return trainer
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
        logger.warning(
            "no evaluation split (%s); metrics.json holds the training metrics only",
            "--eval_data_path not given" if args.task == "pretrain" else "--eval_split none",
        )
    if trainer.is_world_process_zero():
        report = {
            "task": args.task,
            "eval_split": d.eval_split if data.eval is not None else None,
            "model": "embedded default"
            if args.tiny
            else (m.model_name_or_path or f"{m.text_model} + {m.vision_model}"),
            "manager_type": model.config.manager_type,
            "global_step": trainer.state.global_step,
            "train": train_result.metrics,
            "eval": metrics,
        }
        (out / "metrics.json").write_text(json.dumps(report, indent=1))
        shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in metrics.items()}
        print(
            f"\n{args.task} ({model.config.manager_type}) after {trainer.state.global_step} steps: {shown}\n"
            f"  model + processor: {out}\n  metrics:           {out / 'metrics.json'}\n",
            flush=True,
        )
    return trainer
