"""LightningModules, one per task; they share the model and differ in steps, losses, metrics."""

from mammut_pl.tasks.captioning import CaptioningTask
from mammut_pl.tasks.pretrain import PretrainTask
from mammut_pl.tasks.video import VideoCaptioningTask, VideoQATask
from mammut_pl.tasks.vqa import VQATask

TASKS = {"pretrain": PretrainTask, "captioning": CaptioningTask, "vqa": VQATask,
         "video_qa": VideoQATask, "video_captioning": VideoCaptioningTask}

__all__ = ["TASKS", "CaptioningTask", "PretrainTask", "VQATask", "VideoCaptioningTask", "VideoQATask"]
