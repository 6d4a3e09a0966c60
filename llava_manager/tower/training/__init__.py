"""ManagerTower's training recipes (`recipes/tower_pretrain.py`, `recipes/tower_finetune.py`): arguments with the
paper's defaults per task, optimizer groups with the official learning-rate multipliers, a `Trainer` with the
task's evaluation and strict checkpoint loading, and `run(argv)`, which trains, exports and evaluates.

Sources: the paper (Table IX: pre-training; Table XIV: fine-tuning) and the official code
(github.com/LooperXX/ManagerTower HEAD 86e2372: `scripts/*.sh`, `src/config.py`, `src/modules/meter_utils.py`
`set_schedule`), as summarised in `TASK_DEFAULTS` (`tasks.py`).

- `tasks.py`: the tasks, their models, heads, labels and splits, and the defaults per task (the table of them).
- `args.py`: the argument dataclasses and `parse` (defaults, command line, gradient accumulation).
- `optim.py`: the learning-rate groups by module and the weight-decay rule.
- `trainer.py`: `TowerTrainer`, the metrics per task, Flickr30K's retrieval evaluation, strict checkpoints.
- `model.py`: the processor and the task model (tiny default, checkpoint, BridgeTower, unimodal encoders).
- `data.py`: the task's data (synthetic default or the published splits), datasets and collators.
- `train.py`: `run`, which ties them together, and `main` (a recipe's command line: `run`, then the processes end).
"""

from __future__ import annotations

from .args import TowerArgs, TowerDataArguments, TowerModelArguments, TowerOptimArguments, parse
from .data import TaskData, attach_collators, build_data, read_split, synthetic_data
from .model import build_model, load_processor, set_image_size, tiny_config
from .optim import labelled_parameter_groups, module_parameters, no_decay_names, parameter_groups
from .tasks import (
    COMMON,
    FINETUNE_TASKS,
    LABEL_NAMES,
    SPLITS,
    TASK_DEFAULTS,
    TASK_HEADS,
    TASK_MODELS,
    TASKS,
    TINY,
    TINY_COMMON,
)
from .train import main, run
from .trainer import TowerTrainer, compute_metrics_for, retrieval_metrics

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
    "main",
    "run",
    "set_image_size",
    "tiny_config",
]
