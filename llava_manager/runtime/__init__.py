"""What running a training job needs, shared by the LLaVA recipes (`llava_manager.training`) and ManagerTower's
(`llava_manager.tower.training`): the base trainer, checkpoint commit points, non-finite steps, preemption, the end of
a multi-process run, and DeepSpeed on machines without a GPU.

- `trainer.py`: `RunTrainer`, the Trainer both products subclass (per-module optimizer groups, DeepSpeed's CPU Adam
  under ZeRO-Offload, the guards below, committed checkpoints, strict checkpoint loading).
- `commits.py`: a checkpoint counts once everything it holds is on disk; resume `last` / `auto`; rotation.
- `nonfinite.py`: a step with a non-finite loss or gradient stops the run, or is skipped.
- `preemption.py`: SIGTERM / SIGUSR1 save at the next step boundary and exit with the requeue status.
- `processes.py`: every process ends together.
- `cpu_distributed.py`: DeepSpeed on a machine without a GPU.
"""
