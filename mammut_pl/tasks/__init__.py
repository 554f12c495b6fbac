"""LightningModules, one per task; they share the model and differ in steps, losses, metrics."""

from mammut_pl.tasks.captioning import CaptioningTask
from mammut_pl.tasks.detection import DetectionTask
from mammut_pl.tasks.pretrain import PretrainTask
from mammut_pl.tasks.video import VideoCaptioningTask, VideoQATask
from mammut_pl.tasks.vqa import VQATask

TASKS = {"pretrain": PretrainTask, "captioning": CaptioningTask, "vqa": VQATask,
         "video_qa": VideoQATask, "video_captioning": VideoCaptioningTask, "detection": DetectionTask}

__all__ = ["TASKS", "CaptioningTask", "DetectionTask", "PretrainTask", "VQATask", "VideoCaptioningTask", "VideoQATask"]
