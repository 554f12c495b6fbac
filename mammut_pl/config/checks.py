"""Cross-field checks and derived values of the typed config, run by `load` / `from_dict` after the
dataclasses have checked their own fields. They know no task: a task's own checks (the datasets it
reads, its cross-field rules) are its TaskSpec's, applied by `tasks.check_config`."""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable
from typing import Any

from mammut_pl.config.tree import DATAMODULES, Config, ConfigError
from mammut_pl.model.config import MaMMUTConfig

Need = Callable[[bool, str, str], None]


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


def _need(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"`{key}`: {why}")


def validate(cfg: Config) -> None:
    """Cross-field checks that the dataclasses cannot do alone."""
    need = _need
    need(cfg.data.name in DATAMODULES, "data.name", f"{cfg.data.name!r} is not one of {DATAMODULES}")
    _validate_loss(cfg, need)
    need(cfg.model.cpe_grid > 0, "model.cpe_grid", "must be > 0 (0 = derived from detection.image_size / patch)")
    _validate_data(cfg, need)
    need(cfg.optim.lr > 0, "optim.lr", "must be positive")
    need(cfg.optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    need(0 <= cfg.optim.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
    need(cfg.eval.num_beams >= 1, "eval.num_beams", "must be >= 1")
    need(cfg.eval.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1")
    _validate_trainer(cfg.trainer)


def _validate_loss(cfg: Config, need: Need) -> None:
    loss = cfg.loss
    need(loss.contrastive in ("focal", "sigmoid", "softmax"), "loss.contrastive", "expected focal, sigmoid or softmax")
    need(loss.contrastive_weight >= 0, "loss.contrastive_weight", "must be >= 0")
    need(loss.caption_weight >= 0, "loss.caption_weight", "must be >= 0")
    need(loss.focal_gamma >= 0, "loss.focal_gamma", "must be >= 0")
    need(0 <= loss.focal_alpha <= 1, "loss.focal_alpha", "must be in [0, 1]")
    need(loss.nonfinite in ("stop", "skip"), "loss.nonfinite", "expected stop or skip")


def _validate_data(cfg: Config, need: Need) -> None:
    d = cfg.data
    need(d.batch_size > 0, "data.batch_size", "must be positive")
    need(d.eval_batch_size > 0, "data.eval_batch_size", "must be positive")
    need(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    need(0 < d.crop_scale_min <= 1, "data.crop_scale_min", "must be in (0, 1]")
    need(not d.webdata.resampled or d.webdata.steps_per_epoch > 0, "data.webdata.steps_per_epoch",
         "must be > 0 with data.webdata.resampled=true (resampled shards never end)")
    for name in ("vqav2", "msrvtt"):  # the question-answering datasets
        qa = getattr(d, name)
        need(qa.max_answer_tokens >= 1, f"data.{name}.max_answer_tokens", "must be >= 1")
        need("{question}" in qa.prompt, f"data.{name}.prompt", "must contain {question}")


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
