"""The recipes' `TowerTrainer`, the metrics of each task and Flickr30K's retrieval evaluation.

Evaluation after training (and at `--eval_strategy` points), written to `{output_dir}/metrics.json`, in percent:
pretrain `mlm_accuracy`, `itm_accuracy`; vqav2 `vqa_score` (VQAScore: the soft score of the argmax answer); snli_ve
and nlvr2 `accuracy`; flickr30k `ir_r1/5/10`, `tr_r1/5/10`, `r_mean` from `heads.retrieval_scores` (ITC top-k
re-ranked by the ITM logit, k = `--k_test` 128) and `metrics.retrieval_recall`.

`{output_dir}/optimizer_groups.json` lists the groups as the optimizer (or DeepSpeed's wrapper) holds them
(`TowerTrainer.group_report`).

Checkpoints: `--resume_from_checkpoint DIR` (or `last`) loads DIR's weights strictly (`core.checkpoint.
load_checkpoint_weights`: any missing or unexpected key raises `CheckpointMismatchError`; the Trainer's own loader
would only warn and go on from the fresh weights) and continues at DIR's step.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import torch

from ...processing.images import open_image
from ...runtime.trainer import RunTrainer
from .. import data as tower_data
from ..heads import retrieval_scores
from ..metrics import accuracy, retrieval_recall, vqa_score
from .optim import labelled_parameter_groups

logger = logging.getLogger(__name__)


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
            return {
                "mlm_accuracy": accuracy(torch.as_tensor(mlm), torch.as_tensor(mlm_labels), percent=True),
                "itm_accuracy": accuracy(torch.as_tensor(itm), torch.as_tensor(itm_labels), percent=True),
            }
        if task == "vqav2":
            return {"vqa_score": vqa_score(torch.as_tensor(preds), torch.as_tensor(labels), percent=True)}
        return {"accuracy": accuracy(torch.as_tensor(preds), torch.as_tensor(labels), percent=True)}

    return compute


# Output fields that are no predictions (the Trainer would concatenate them with the logits).
EVAL_IGNORE_KEYS = {"pretrain": ["mlm_loss", "itm_loss"]}
LOGGED_LOSSES = ("mlm_loss", "itm_loss", "itc_loss")


class TowerTrainer(RunTrainer):
    """`RunTrainer` (runtime/trainer.py: committed checkpoints, non-finite steps, preemption, strict checkpoint
    loading) with the recipes' optimizer groups (`labelled_parameter_groups`), the components of the loss in the logs
    (`mlm_loss`, `itm_loss`, `itc_loss`, this process's mean since the last log), Flickr30K's retrieval evaluation
    (`retrieval`: {"images": paths, "texts", "text_to_image"}), and strict checkpoint loading on resume and for
    `load_best_model_at_end` (without DeepSpeed / FSDP, which read checkpoints of their own making)."""

    lr_flags = "the per-module learning rates (--lr_mult_head, --lr_mult_cross_modal)"

    def __init__(
        self,
        *args,
        task: str,
        lr_mult_head: float = 1.0,
        lr_mult_cross_modal: float = 1.0,
        retrieval: dict | None = None,
        k_test: int = 128,
        max_text_len: int = 50,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.task, self.retrieval, self.k_test, self.max_text_len = task, retrieval, k_test, max_text_len
        self.lr_mult_head, self.lr_mult_cross_modal = lr_mult_head, lr_mult_cross_modal
        self._losses: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.group_labels: list[str] = []
        self.group_sizes: list[int] = []

    # -- optimizer ---------------------------------------------------------------------------------------------
    def optimizer_groups(self, model):
        labelled = labelled_parameter_groups(
            model, self.args.learning_rate, self.args.weight_decay, self.lr_mult_head, self.lr_mult_cross_modal
        )
        self.group_labels = [label for label, _ in labelled]
        self.group_sizes = [sum(p.numel() for p in g["params"]) for _, g in labelled]
        return [g for _, g in labelled]

    # -- strict checkpoints --------------------------------------------------------------------------------------
    def group_report(self) -> list[dict]:
        """The optimizer's groups as it holds them (DeepSpeed's wrapper included): label, parameters (elements),
        initial and current lr, weight decay."""
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        return [
            {
                "group": label,
                "parameters": size,
                "initial_lr": g.get("initial_lr", g["lr"]),
                "lr": g["lr"],
                "weight_decay": g["weight_decay"],
            }
            for label, size, g in zip(self.group_labels, self.group_sizes, groups)
        ]

    # -- losses in the logs ------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)  # watched by RunTrainer
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
        metrics = retrieval_metrics(
            self.model,
            self.processing_class,
            self.retrieval,
            k=self.k_test,
            batch_size=self.args.per_device_eval_batch_size,
            max_text_len=self.max_text_len,
            progress=not self.args.disable_tqdm,
        )
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - start, 4)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def retrieval_metrics(
    model, processor, retrieval: dict, k: int = 128, batch_size: int = 32, max_text_len: int = 50, progress: bool = True
) -> dict[str, float]:
    """TR@1/5/10, IR@1/5/10 (percent) of `retrieval` (`data.retrieval_set`) by the official evaluation
    (`heads.retrieval_scores`)."""
    images, texts = retrieval["images"], retrieval["texts"]

    def image_batches():
        for i in range(0, len(images), batch_size):
            yield tower_data.encode_images(processor, [open_image(p) for p in images[i : i + batch_size]])

    def text_batches():
        for i in range(0, len(texts), batch_size):
            yield tower_data.encode_texts(processor, texts[i : i + batch_size], max_text_len)

    scores = retrieval_scores(model, image_batches(), text_batches(), k=k, progress=progress)
    return retrieval_recall(scores.cpu(), retrieval["text_to_image"], percent=True)
