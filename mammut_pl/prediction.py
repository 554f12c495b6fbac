"""Predictions from a checkpoint for `python -m mammut_pl.predict` (the command line): which
inputs a checkpoint takes and what it does with them come from its task's PredictSpec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mammut_pl import config as config_lib
from mammut_pl.checkpoint import checkpoint_config, read_checkpoint, task_with_weights
from mammut_pl.config import Config, ConfigError
from mammut_pl.evaluation import trainer_overrides
from mammut_pl.runtime import build_datamodule
from mammut_pl.tasks import TASK_SPECS, task_spec
from mammut_pl.tasks.inference import describe_inputs, image_files, video_files
from mammut_pl.tasks.registry import specs_where

# the keys `predict` reads itself (the rest override the checkpoint's config)
OWN_KEYS = ("ckpt", "image", "video", "question", "split", "out", "batch_size", "categories", "score_threshold")


def predict_split(task: Any, cfg: Config, split: str, out: Path, trainer_args: dict[str, Any] | None = None) -> Path:
    """The official results JSON for a whole split (VQA: [{"question_id", "answer"}]).
    trainer_args: the trainer.* keys of the command line (accelerator, devices, precision ...)."""
    import lightning as L

    write_split = task_spec(cfg.task).predict.write_split
    if write_split is None:
        offered = "|".join(name for name, spec in TASK_SPECS.items() if spec.predict.write_split)
        raise ConfigError(f"split={split}: split prediction is for task={offered} (this config has task={cfg.task}); "
                          "captions for images: image=PATH")
    cfg.data.vqav2.predict_split = split
    datamodule = build_datamodule(cfg, task.tokenizer)
    trainer = L.Trainer(**{"accelerator": "auto", "devices": 1, "logger": False, "enable_checkpointing": False,
                           "default_root_dir": str(out.parent), **(trainer_args or {})})
    trainer.predict(task, datamodule=datamodule, return_predictions=False)
    return write_split(task.results, out)


def check_inputs(own: dict[str, str], task: str) -> None:
    """The inputs given fit the checkpoint's task (its PredictSpec), before its weights are loaded."""
    ckpt, spec = own["ckpt"], task_spec(task).predict
    video_tasks = specs_where(inputs="video")
    if "video" in own and spec.inputs != "video":
        experiments = "|".join(TASK_SPECS[t].experiment for t in video_tasks)
        raise ConfigError(f"video=... needs a video checkpoint (task={'|'.join(video_tasks)}, experiment="
                          f"{experiments}); {ckpt} has task={task}: give image=PATH")
    if spec.inputs == "video" and "video" not in own:
        raise ConfigError(f"{ckpt} is a video checkpoint (task={task}): give video=PATH (a video or a folder)")
    if spec.question == "required" and not own.get("question"):
        raise ConfigError(f"{ckpt} {spec.question_hint} (task={task}): give question=\"...\"")
    given = [k for k in OWN_KEYS if k in own and k not in spec.keys
             and any(k in s.predict.keys for s in TASK_SPECS.values())]
    if given:
        owners = "|".join(name for name, s in TASK_SPECS.items() if set(given) <= set(s.predict.keys))
        raise ConfigError(f"{'= / '.join(given)}= are for a {owners} checkpoint (task={owners}); {ckpt} has "
                          f"task={task}")
    if spec.question == "refused" and "question" in own:
        raise ConfigError(f"question=... needs a VQA or video checkpoint; {ckpt} is a {task} one "
                          f"(task={task}): {spec.question_hint}")


def build_config(ckpt: dict[str, Any], path: str, experiment: str, overrides: list[str]) -> Config:
    """The checkpoint's config (+ overrides); with an experiment, that experiment's config
    around the checkpoint's model."""
    stored = checkpoint_config(ckpt, path, overrides)
    if not experiment or experiment == stored.experiment:
        return stored
    cfg = config_lib.load(experiment, [o for o in overrides if not o.startswith("model.")])
    cfg.model = stored.model
    cfg.data.tokenizer = stored.data.tokenizer  # the vocabulary the model was trained with
    return cfg


def predict(own: dict[str, str], experiment: str, overrides: list[str]) -> None:
    ckpt = read_checkpoint(own["ckpt"])
    cfg = build_config(ckpt, own["ckpt"], experiment, overrides)
    check_inputs(own, cfg.task)
    if "video" in own:  # before the weights: a missing path fails in a second
        paths = video_files(own["video"])
    elif "image" in own:
        paths = image_files(own["image"])
    task, _ = task_with_weights(cfg, ckpt, own["ckpt"])
    if "split" in own:
        out = Path(own.get("out") or Path(own["ckpt"]).resolve().parent.parent / f"vqa_{own['split']}_results.json")
        path = predict_split(task, cfg, own["split"], out, trainer_overrides(overrides))
        print(f"wrote {len(task.results)} answers to {path} (official VQA results format)")
        return
    run = task_spec(cfg.task).predict.run or describe_inputs
    rows, lines = run(task, cfg, paths, own, int(own.get("batch_size", 16)))
    for line in lines:
        print(line)
    if own.get("out"):
        Path(own["out"]).write_text(json.dumps(rows, indent=1))
        print(f"wrote {len(rows)} results to {own['out']}")
