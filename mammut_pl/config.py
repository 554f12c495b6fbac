"""Typed experiment config: defaults here, experiments/NAME.yaml holds only differences,
command-line `key=value` overrides last. Unknown keys and bad values stop the run
before any work starts, naming the key (and the closest valid one)."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from mammut_pl.detection_config import DetectionConfig
from mammut_pl.model.config import PRESETS, MaMMUTConfig
from mammut_pl.model.video_config import VideoConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS_DIR = PROJECT_ROOT / "experiments"
BASES_DIR = EXPERIMENTS_DIR / "base"  # shared settings an experiment includes with `base: NAME`


class ConfigError(ValueError):
    """A config problem the user can fix; the message names the key."""


@dataclass
class ModelSettings(MaMMUTConfig):
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

    def architecture(self) -> MaMMUTConfig:
        """The MaMMUTConfig part, without the suite-only fields."""
        names = {f.name for f in dataclasses.fields(MaMMUTConfig)}
        return MaMMUTConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


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
class MSRVTTFiles:
    """`data.msrvtt.*`: where the MSRVTT files are, relative to data.root."""

    video_dir: str = "videos"  # video{id}.mp4/.avi/.webm
    captions_file: str = "MSRVTT_data.json"  # or train_val_videodatainfo.json
    retrieval_csv: str = "MSRVTT_JSFUSION_test.csv"  # 1k-A test split (text -> video retrieval)


@dataclass
class LVISFiles:
    """`data.lvis.*`: the LVIS annotation files in data.root (v1 or v0.5)."""

    train_file: str = "lvis_v1_train.json"
    val_file: str = "lvis_v1_val.json"
    test_file: str = ""  # "" = val_file


@dataclass
class DataConfig:
    name: str = "webdata"  # webdata | coco | vqav2 | lvis (which LightningDataModule)
    root: str = "data/demo/webdata"  # the dataset, in its published layout
    demo: bool = False  # root is the embedded demo world: written there on first use
    tokenizer: str = "clip"  # "clip" (CLIP BPE from open_clip) or a tokenizer.json path
    batch_size: int = 32
    eval_batch_size: int = 64
    num_workers: int = 2
    augment: bool = True  # random resized crop in training (no flips: captions say left/right)
    crop_scale_min: float = 0.8
    # webdata: ALIGN-like img2dataset shards
    shards: str = ""  # brace pattern relative to root, e.g. "{00000..00127}.tar"; "" = every *.tar
    resampled: bool = False  # sample shards with replacement (needs steps_per_epoch)
    steps_per_epoch: int = 0
    shuffle_buffer: int = 1000
    val_root: str = ""  # a COCO root (Karpathy split) for zero-shot retrieval during pretraining
    # zero-shot classification at each validation (val/zeroshot_top1), as open_clip's --imagenet-val
    zeroshot_root: str = ""  # an ImageFolder (one sub-folder per class), e.g. ImageNet val; "" = off
    zeroshot_classnames: str = ""  # "" = ImageNet-1k names for WordNet-id folders, else folder names; or a FILE
    zeroshot_templates: str = "openai"  # openai | simple | a FILE of templates with {}
    # coco / flickr30k (Karpathy split JSON)
    karpathy_file: str = "dataset_coco.json"
    val_split: str = "val"
    test_split: str = "test"
    max_eval_images: int = 0  # 0 = all
    # vqav2 (official question/annotation JSON + COCO image folders)
    train_split: str = "train2014"  # vqav2: one split or several joined by "+", e.g. train2014+val2014
    predict_split: str = "test-dev2015"  # questions only: `python -m mammut_pl.predict` writes the results JSON
    vqa_prompt: str = "question: {question} answer:"  # the decoder's prompt; {question} is filled in
    max_answer_tokens: int = 8  # training answers are cut to this many tokens
    max_eval_questions: int = 0  # 0 = all
    msrvtt: MSRVTTFiles = field(default_factory=MSRVTTFiles)  # data.name=msrvtt (video tasks)
    lvis: LVISFiles = field(default_factory=LVISFiles)  # data.name=lvis (task=detection)
    # read by no datamodule; kept so that configs stored in older checkpoints still load
    extra: dict[str, Any] = field(default_factory=dict)


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
class VideoSettings(VideoConfig):
    """`video.*`: the encoder's switches (VideoConfig) and what a clip is (MSRVTT datamodule)."""

    num_frames: int = 32  # T frames per clip (TubeViT's clip length: its default tubes need >= 20)
    fps: float = 8.0  # sampled at this rate (a window of T / fps seconds); 0 = spread over the whole video
    sampling: str = "random"  # training: random window start + random point per segment; "uniform": centres
    answer_vocab_size: int = 1000  # VideoQA: top-K training answers; answers outside count as wrong
    cache_clips: bool = False  # keep every decoded frame in memory, per worker (small demo clips only)
    # learning-rate multiplier for what the video model adds to the image model (the tube
    # projections and the gate): they start from inflated / zero values and must learn the time axis
    new_params_lr_scale: float = 1.0

    def encoder(self) -> VideoConfig:
        names = {f.name for f in dataclasses.fields(VideoConfig)}
        return VideoConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


@dataclass
class Config:
    experiment: str = ""
    task: str = "pretrain"  # pretrain | captioning | vqa | detection
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


TASKS = ("pretrain", "captioning", "vqa", "video_qa", "video_captioning", "detection")
DATAMODULES = ("webdata", "coco", "vqav2", "msrvtt", "lvis")
TRAINER_DEFAULTS: dict[str, Any] = {
    "max_steps": 1000, "accelerator": "auto", "devices": 1, "precision": "32-true",
    "log_every_n_steps": 10, "val_check_interval": None, "check_val_every_n_epoch": 1,
    "num_sanity_val_steps": 0,
}


def list_experiments() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


def _experiment_file(name: str) -> Path:
    path = Path(name) if name.endswith((".yaml", ".yml")) else EXPERIMENTS_DIR / f"{name}.yaml"
    if not path.is_file():
        near = difflib.get_close_matches(name, list_experiments(), n=1)
        hint = f" Did you mean experiment={near[0]}?" if near else ""
        raise ConfigError(f"experiment={name}: no file {path}. Known: {', '.join(list_experiments())}.{hint}")
    return path


def _valid_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys += _valid_keys(node._get_node(k), f"{full}.")
    return keys


# Keys that moved, {"old.key": "new.key"}: an old key in a YAML or on the command line stops the
# run naming the new one; configs stored in older checkpoints are moved over (`migrate`).
RENAMED: dict[str, str] = {
    **{f"video.{k}": f"data.msrvtt.{k}" for k in ("video_dir", "captions_file", "retrieval_csv")},
    **{f"detection.{k}": f"data.lvis.{k}" for k in ("train_file", "val_file", "test_file")},
}


def migrate(stored: dict[str, Any]) -> dict[str, Any]:
    """A copy of a stored config dict with its RENAMED keys moved to their new place."""
    out = copy.deepcopy(stored)
    for old, new in RENAMED.items():
        *path, leaf = old.split(".")
        node: Any = out
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            *new_path, new_leaf = new.split(".")
            target = out
            for part in new_path:
                target = target.setdefault(part, {})
            target[new_leaf] = node.pop(leaf)
    return out


def _friendly(err: OmegaConfBaseException, base: DictConfig, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    if key in RENAMED:
        return ConfigError(f"`{key}` was renamed to `{RENAMED[key]}` ({source})")
    if isinstance(err, ConfigKeyError) or "not in" in str(err):
        near = difflib.get_close_matches(key, [*_valid_keys(base), "model.preset"], n=1, cutoff=0.5)
        hint = f" Did you mean `{near[0]}`?" if near else ""
        return ConfigError(f"unknown config key `{key}` ({source}).{hint}")
    msg = str(err).splitlines()[0]
    return ConfigError(f"bad value for `{key}` ({source}): {msg}")


def parse_overrides(args: list[str]) -> tuple[str, list[str]]:
    """Split `experiment=NAME` from the other `key=value` arguments."""
    experiment, rest = "", []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r}: expected key=value (see --help)")
        key, value = arg.split("=", 1)
        if key == "experiment":
            experiment = value
        else:
            rest.append(arg)
    return experiment, rest


def _read_yaml(path: Path) -> Any:
    try:
        return OmegaConf.load(path)
    except Exception as err:  # yaml syntax
        raise ConfigError(f"{path}: not valid YAML: {err}") from None


def _experiment_layers(path: Path) -> list[tuple[str, Any]]:
    """The experiment file, after the file its top-level `base: NAME` names (experiments/base/NAME.yaml,
    the settings that several experiments share); the experiment's own keys win."""
    layer = _read_yaml(path)
    if not isinstance(layer, DictConfig) or "base" not in layer:
        return [(str(path), layer)]
    name = str(layer.pop("base"))
    base_path = BASES_DIR / f"{name}.yaml"
    if not base_path.is_file():
        known = sorted(p.stem for p in BASES_DIR.glob("*.yaml"))
        raise ConfigError(f"`base` ({path}): no file {base_path}. Known: {', '.join(known)}")
    return [(str(base_path), _read_yaml(base_path)), (str(path), layer)]


def _apply_preset(merged: DictConfig, layer: DictConfig, source: str) -> DictConfig:
    """`model.preset: NAME` in a layer sets every architecture key to MaMMUTConfig.from_name(NAME)
    (litgpt-style); the layer's explicit model.* keys then override it. Pops the key from the layer."""
    model = layer.get("model")
    if not isinstance(model, DictConfig) or "preset" not in model:
        return merged
    name = str(model.pop("preset"))
    try:
        arch = dataclasses.asdict(MaMMUTConfig.from_name(name))
    except ValueError as err:
        near = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f" Did you mean `model.preset={near[0]}`?" if near else ""
        raise ConfigError(f"`model.preset` ({source}): {err}.{hint}") from None
    merged = OmegaConf.merge(merged, {"model": arch})
    merged.model.encoder_kwargs = arch["encoder_kwargs"]  # replaced, not merged: the preset's own ViT
    return merged


def load(experiment: str = "", overrides: list[str] | None = None) -> Config:
    """Typed defaults <- experiments/NAME.yaml <- overrides; validated before returning."""
    base = OmegaConf.structured(Config)
    layers: list[tuple[str, Any]] = []
    if experiment:
        layers += _experiment_layers(_experiment_file(experiment))
    if overrides:
        try:
            layers.append(("command line", OmegaConf.from_dotlist(overrides)))
        except Exception as err:
            raise ConfigError(f"command line: cannot parse overrides {overrides}: {err}") from None
    merged = base
    for source, layer in layers:
        if isinstance(layer, ListConfig):
            raise ConfigError(f"{source}: expected a mapping of config keys, got a list")
        try:
            merged = OmegaConf.merge(_apply_preset(merged, layer, source), layer)
        except OmegaConfBaseException as err:
            raise _friendly(err, base, source) from None
    if experiment:
        merged.experiment = Path(experiment).stem if experiment.endswith((".yaml", ".yml")) else experiment
    try:
        cfg: Config = OmegaConf.to_object(merged)  # runs the dataclasses' __post_init__ checks
    except OmegaConfBaseException as err:
        raise _friendly(err, base, "resolved config") from None
    except ValueError as err:
        raise ConfigError(str(err)) from None
    derive(cfg)
    validate(cfg)
    return cfg


def from_dict(d: dict[str, Any]) -> Config:
    """A typed Config from a plain dict (e.g. the one stored in a checkpoint)."""
    try:
        cfg: Config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), migrate(d)))
    except OmegaConfBaseException as err:
        raise _friendly(err, OmegaConf.structured(Config), "stored config") from None
    derive(cfg)
    validate(cfg)
    return cfg


def encoder_patch_size(model: MaMMUTConfig) -> int:
    """The ViT's patch size without building it: model.encoder_kwargs.patch_size, else the
    `patchN` in the timm name (vit_base_patch16_224 -> 16), else timm's ViT default 16."""
    patch = (model.encoder_kwargs or {}).get("patch_size")
    if patch:
        return int(patch[0] if isinstance(patch, (list, tuple)) else patch)
    found = re.search(r"patch(\d+)", model.encoder)
    return int(found.group(1)) if found else 16


def derive(cfg: Config) -> None:
    """Values that follow from others unless set: model.cpe_grid = 0 -> the detection grid
    (detection.image_size / patch size), where RO-ViT upsamples the pretraining positions to."""
    if cfg.model.cpe_grid == 0:
        cfg.model.cpe_grid = max(1, cfg.detection.image_size // encoder_patch_size(cfg.model))


def validate(cfg: Config) -> None:
    """Cross-field checks that the dataclasses cannot do alone."""
    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"`{key}`: {why}")

    need(cfg.task in TASKS, "task", f"{cfg.task!r} is not one of {TASKS}")
    need(cfg.data.name in DATAMODULES, "data.name", f"{cfg.data.name!r} is not one of {DATAMODULES}")
    need(cfg.loss.contrastive in ("focal", "sigmoid", "softmax"), "loss.contrastive", "expected focal, sigmoid or softmax")
    need(cfg.loss.contrastive_weight >= 0, "loss.contrastive_weight", "must be >= 0")
    need(cfg.loss.caption_weight >= 0, "loss.caption_weight", "must be >= 0")
    need(cfg.loss.focal_gamma >= 0, "loss.focal_gamma", "must be >= 0")
    need(0 <= cfg.loss.focal_alpha <= 1, "loss.focal_alpha", "must be in [0, 1]")
    need(cfg.loss.nonfinite in ("stop", "skip"), "loss.nonfinite", "expected stop or skip")
    if cfg.task == "pretrain":
        need(cfg.loss.contrastive_weight + cfg.loss.caption_weight > 0, "loss.caption_weight",
             "loss.contrastive_weight and loss.caption_weight cannot both be 0")
    need(cfg.model.cpe_grid > 0, "model.cpe_grid", "must be > 0 (0 = derived from detection.image_size / patch)")
    need(cfg.data.batch_size > 0, "data.batch_size", "must be positive")
    need(cfg.data.eval_batch_size > 0, "data.eval_batch_size", "must be positive")
    need(cfg.data.num_workers >= 0, "data.num_workers", "must be >= 0")
    need(0 < cfg.data.crop_scale_min <= 1, "data.crop_scale_min", "must be in (0, 1]")
    need(not cfg.data.resampled or cfg.data.steps_per_epoch > 0, "data.steps_per_epoch",
         "must be > 0 with data.resampled=true (resampled shards never end)")
    need(cfg.optim.lr > 0, "optim.lr", "must be positive")
    need(cfg.optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    need(0 <= cfg.optim.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
    need(cfg.eval.num_beams >= 1, "eval.num_beams", "must be >= 1")
    need(cfg.eval.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1")
    need(cfg.data.max_answer_tokens >= 1, "data.max_answer_tokens", "must be >= 1")
    need("{question}" in cfg.data.vqa_prompt, "data.vqa_prompt", "must contain {question}")
    if cfg.task == "vqa":
        need(cfg.data.name == "vqav2", "data.name", "task=vqa reads data.name=vqav2")
    if cfg.task.startswith("video_") or cfg.data.name == "msrvtt":
        _validate_video(cfg, need)
    if cfg.task == "detection":
        need(cfg.data.name == "lvis", "data.name", "task=detection reads data.name=lvis")
        patch = cfg.model.encoder_kwargs.get("patch_size")
        need(not patch or cfg.detection.image_size % int(patch) == 0, "detection.image_size",
             f"must be divisible by the encoder's patch size {patch}")
    _validate_trainer(cfg.trainer)


def _validate_video(cfg: Config, need: Any) -> None:
    v = cfg.video
    need(cfg.task.startswith("video_") and cfg.data.name == "msrvtt", "data.name",
         f"task={cfg.task} with data.name={cfg.data.name}: video tasks (video_qa, video_captioning) read data.name=msrvtt")
    need(v.num_frames >= 1, "video.num_frames", "must be >= 1")
    need(v.fps >= 0, "video.fps", "must be >= 0 (0 = spread the frames over the whole video)")
    need(v.sampling in ("uniform", "random"), "video.sampling", "expected uniform or random")
    need(v.answer_vocab_size >= 1, "video.answer_vocab_size", "must be >= 1")
    need(v.new_params_lr_scale > 0, "video.new_params_lr_scale", "must be > 0")
    patch = (cfg.model.encoder_kwargs or {}).get("patch_size")
    try:
        v.check_clip(v.num_frames, cfg.model.image_size, patch or 16)
    except ValueError as err:
        raise ConfigError(f"`video`: {err}") from None


def _validate_trainer(trainer: dict[str, Any]) -> None:
    import lightning as L

    params = inspect.signature(L.Trainer.__init__).parameters
    managed = {"logger", "callbacks", "default_root_dir", "enable_checkpointing", "plugins"}
    for key in trainer:
        if key in managed:
            raise ConfigError(f"`trainer.{key}` is set by mammut_pl itself; use the mlflow.* / output_dir keys")
        if key not in params:
            near = difflib.get_close_matches(key, list(params), n=1)
            hint = f" Did you mean `trainer.{near[0]}`?" if near else ""
            raise ConfigError(f"unknown config key `trainer.{key}` (not a lightning.Trainer argument).{hint}")


def trainer_kwargs(cfg: Config) -> dict[str, Any]:
    return {**TRAINER_DEFAULTS, **cfg.trainer}


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'width': 8}} -> {'model.width': 8}, for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def tracking_uri(cfg: Config) -> str:
    return cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"
