"""LightningModules, one per task; they share the model and differ in steps, losses, metrics."""

from mammut_pl.tasks.pretrain import PretrainTask

TASKS = {"pretrain": PretrainTask}

__all__ = ["TASKS", "PretrainTask"]
