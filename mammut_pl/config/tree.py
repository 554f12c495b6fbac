"""The typed config tree: one dataclass per top-level section, defaults here. The architecture
configs (MaMMUTConfig, VideoConfig) live torch-free beside the model; `model.*` and `video.*` add
the suite's own keys to them and give them back with `.architecture()`."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mammut_pl.config.data import DataConfig
from mammut_pl.model.detection_config import DetectionConfig
from mammut_pl.model.config import MaMMUTConfig
from mammut_pl.model.video_config import VideoConfig

DATAMODULES = ("webdata", "coco", "vqav2", "msrvtt", "lvis")
TRAINER_DEFAULTS: dict[str, Any] = {
    "max_steps": 1000, "accelerator": "auto", "devices": 1, "precision": "32-true",
    "log_every_n_steps": 10, "val_check_interval": None, "check_val_every_n_epoch": 1,
    "num_sanity_val_steps": 0,
}


class ConfigError(ValueError):
    """A config problem the user can fix; the message names the key."""


class ExtendsArchitecture:
    """A section that extends an architecture dataclass (its first dataclass base) with suite keys."""

    def architecture(self) -> Any:
        """The architecture config alone (MaMMUTConfig for model.*, VideoConfig for video.*)."""
        base = next(c for c in type(self).__mro__[1:] if dataclasses.is_dataclass(c))
        return base(**{f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(base)})


@dataclass
class ModelSettings(MaMMUTConfig, ExtendsArchitecture):
    init_from: str = ""  # a checkpoint (.ckpt of this suite, or a state_dict .pt) to start from
    compile: bool = False  # torch.compile the model
    # a pretrained image tower (timm ViT state_dict, or an open_clip/OpenAI CLIP checkpoint: its
    # visual.* incl. proj); model.encoder must be the matching timm ViT, e.g. vit_base_patch32_clip_224
    encoder_weights: str = ""
    freeze_encoder: bool = False  # LiT: lock the image tower (no gradients, not optimised, eval mode)
    freeze_encoder_unlocked_blocks: int = 0  # with freeze_encoder: the last K blocks (+ final norm) still train
    grad_checkpointing: bool = False  # recompute ViT blocks and decoder layers in backward (less memory)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.freeze_encoder_unlocked_blocks < 0:
            raise ValueError(f"model.freeze_encoder_unlocked_blocks={self.freeze_encoder_unlocked_blocks}: "
                             "must be >= 0")
        if self.freeze_encoder_unlocked_blocks and not self.freeze_encoder:
            raise ValueError(f"model.freeze_encoder_unlocked_blocks={self.freeze_encoder_unlocked_blocks}: "
                             "only means something with model.freeze_encoder=true")


@dataclass
class VideoSettings(VideoConfig, ExtendsArchitecture):
    """`video.*`: the encoder's switches (VideoConfig) and what a clip is (MSRVTT datamodule)."""

    num_frames: int = 32  # T frames per clip (TubeViT's clip length: its default tubes need >= 20)
    fps: float = 8.0  # sampled at this rate (a window of T / fps seconds); 0 = spread over the whole video
    sampling: str = "random"  # training: random window start + random point per segment; "uniform": centres
    answer_vocab_size: int = 1000  # VideoQA: top-K training answers; answers outside count as wrong
    cache_clips: bool = False  # keep every decoded frame in memory, per worker (small demo clips only)
    # learning-rate multiplier for what the video model adds to the image model (the tube
    # projections and the gate): they start from inflated / zero values and must learn the time axis
    new_params_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_frames < 1:
            raise ValueError(f"video.num_frames={self.num_frames}: must be >= 1")
        if self.fps < 0:
            raise ValueError(f"video.fps={self.fps}: must be >= 0 (0 = spread the frames over the whole video)")
        if self.sampling not in ("uniform", "random"):
            raise ValueError(f"video.sampling={self.sampling!r}: expected uniform or random")
        if self.answer_vocab_size < 1:
            raise ValueError(f"video.answer_vocab_size={self.answer_vocab_size}: must be >= 1")
        if self.new_params_lr_scale <= 0:
            raise ValueError(f"video.new_params_lr_scale={self.new_params_lr_scale}: must be > 0")


@dataclass
class LossConfig:
    contrastive: str = "focal"  # focal | sigmoid | softmax
    # focal contrastive loss, RO-ViT's reference defaults (compute_focal_contrastive_loss): gamma 1,
    # alpha 0.5 with the reference's x2, so matching and non-matching pairs both weigh 1
    focal_gamma: float = 1.0
    focal_alpha: float = 0.5  # the matching pair weighs 2 * alpha, the others 2 * (1 - alpha)
    contrastive_weight: float = 1.0  # 0 skips the contrastive pass (captioner baseline)
    caption_weight: float = 1.0  # 0 skips the generative pass (CLIP/ALIGN baseline)
    label_smoothing: float = 0.0
    nonfinite: str = "stop"  # non-finite loss: "stop" the run or "skip" the step


@dataclass
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # 0 = off


@dataclass
class MLflowConfig:
    enabled: bool = True
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI or sqlite:///mlflow.db in the project
    experiment_name: str = "mammut_pl"
    run_name: str = ""  # "" = experiment name + time
    parent_run_id: str = ""  # nest this run under another (sweeps: the trial's run)
    tags: dict[str, str] = field(default_factory=dict)  # extra tags on the run


@dataclass
class EvalConfig:
    max_new_tokens: int = 20
    num_beams: int = 1
    length_penalty: float = 1.0
    num_examples: int = 5  # captions printed next to their references after training


@dataclass
class Config:
    experiment: str = ""
    task: str = "pretrain"  # a registered task (mammut_pl/tasks: pretrain, captioning, vqa, video_qa, ...)
    seed: int = 0
    ckpt_path: str = ""  # "" = fresh run; "last" = resume this experiment's latest run; or a path
    output_dir: str = "outputs"  # runs go to output_dir/experiment/TIMESTAMP
    checkpoint_every_n_steps: int = 0  # last.ckpt every N steps (0 = at each validation/epoch end)
    print_config: bool = False
    model: ModelSettings = field(default_factory=ModelSettings)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: dict[str, Any] = field(default_factory=dict)  # passed to lightning.Trainer
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    video: VideoSettings = field(default_factory=VideoSettings)
    detection: DetectionConfig = field(default_factory=DetectionConfig)  # task=detection (LVIS)
