"""LightningModules, one per task; they share the model and differ in steps, losses, metrics.

Each task module registers a `TaskSpec` (and its `evaluate` protocols) in tasks/registry.py;
the import order below is the order tasks are listed in."""

from mammut_pl.tasks.pretrain import PretrainTask  # noqa: I001 - the registry order
from mammut_pl.tasks.captioning import CaptioningTask
from mammut_pl.tasks.vqa import VQATask
from mammut_pl.tasks.video import VideoCaptioningTask, VideoQATask
from mammut_pl.tasks.detection import DetectionTask
from mammut_pl.tasks.zeroshot import ZeroShotTask
from mammut_pl.tasks.registry import (EVAL_SPECS, TASK_SPECS, build_task, check_config, eval_spec, load_config,
                                      task_spec)

TASKS = {name: spec.module for name, spec in TASK_SPECS.items()}

__all__ = ["EVAL_SPECS", "TASKS", "TASK_SPECS", "CaptioningTask", "DetectionTask", "PretrainTask", "VQATask",
           "VideoCaptioningTask", "VideoQATask", "ZeroShotTask", "build_task", "check_config", "eval_spec", "load_config",
           "task_spec"]
