"""Score a checkpoint with an `evaluate` protocol (tasks/registry.py EvalSpec) and write the
report JSON; the command line is mammut_pl/evaluate.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import OmegaConf

from mammut_pl.checkpoint import (checkpoint_config, folder_config, load_image_text_model, read_checkpoint,
                                  task_from_folder, task_with_weights)
from mammut_pl.model.openmammut import is_openmammut_dir
from mammut_pl.config import Config, ConfigError
from mammut_pl.data.coco import KARPATHY_FILES
from mammut_pl.runtime import build_datamodule, prepare_data
from mammut_pl.tasks import EVAL_SPECS, check_config, eval_spec, task_spec
from mammut_pl.tasks.reporting import karpathy_description


def eval_config(stored: Config, own: dict[str, str], overrides: list[str]) -> Config:
    """The checkpoint's config, pointed at the data and split to evaluate."""
    spec = eval_spec(own["task"])
    if spec.own_data:
        return own_data_config(stored, own, overrides)
    cfg = stored
    given = {o.split("=", 1)[0] for o in overrides}
    cfg.task = spec.task
    d = cfg.data
    if d.name == "webdata" and "data.root" not in given:  # a pretraining run: its zero-shot COCO
        if not d.webdata.val_root:
            raise ConfigError("this checkpoint was trained on web shards without data.webdata.val_root: "
                              "give data.root=/path/to/coco (the folder with dataset_coco.json)")
        d.root = d.webdata.val_root
    elif d.name not in ("coco", "webdata") and "data.root" not in given:
        raise ConfigError(f"this checkpoint was trained on data.name={d.name}: give data=coco|flickr30k "
                          "and data.root=/path/to/it (the folder with the Karpathy split JSON)")
    keep_user_folder(cfg, given)
    d.name = "coco"
    if own.get("data"):
        d.coco.karpathy_file = KARPATHY_FILES[own["data"]]
    d.coco.test_split = own["split"]
    return cfg


def keep_user_folder(cfg: Config, given: set[str]) -> None:
    if "data.root" in given and "data.demo" not in given:
        cfg.data.demo = False  # never write the demo world into a folder the user named


def own_data_config(stored: Config, own: dict[str, str], overrides: list[str]) -> Config:
    """A checkpoint's own config (video, detection), its test split set to split=."""
    spec = eval_spec(own["task"])
    if stored.task != spec.task:
        image_model = task_spec(stored.task).image_model  # retrieval / captioning take any of these
        fits = [name for name, e in EVAL_SPECS.items() if e.task == stored.task or (image_model and not e.own_data)]
        hint = f" (evaluate it with task={'|'.join(fits)})" if fits else ""
        raise ConfigError(f"task={own['task']} scores a {spec.task} checkpoint (experiment={spec.own_data}), "
                          f"but {own['ckpt']} was trained with task={stored.task}{hint}")
    cfg = stored
    keep_user_folder(cfg, {o.split("=", 1)[0] for o in overrides})
    spec.set_split(cfg, own["split"])
    return cfg


def trainer_overrides(overrides: list[str]) -> dict[str, Any]:
    """Only the trainer.* keys given on the command line: the stored ones are the training run's
    (devices, strategy, max_time ...), not how to evaluate."""
    given = [o for o in overrides if o.startswith("trainer.")]
    return OmegaConf.to_container(OmegaConf.from_dotlist(given)).get("trainer", {}) if given else {}


def eval_trainer_kwargs(out_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """The scoring Trainer's arguments: one device, full precision, no logger, unless the
    command line says otherwise (logger / checkpointing / default_root_dir are refused by the
    config check, naming the key)."""
    return {"accelerator": "auto", "devices": 1, "precision": "32-true", "logger": False,
            "enable_checkpointing": False, "enable_model_summary": False,
            "default_root_dir": str(out_dir), **trainer_overrides(overrides)}


def default_out(ckpt: Path) -> Path:
    run_dir = ckpt.resolve().parent.parent if ckpt.parent.name == "checkpoints" else ckpt.resolve().parent
    return run_dir / "eval"


def describe_data(name: str, split: str, cfg: Config, datamodule: Any) -> dict[str, Any]:
    """What is scored: dataset, split, counts, subset limit. Reads the split's records, so a
    missing file fails here, named, before any model work."""
    describe = eval_spec(name).describe or karpathy_description
    return describe(split, cfg, datamodule)


def evaluate(own: dict[str, str], overrides: list[str]) -> dict[str, Any]:
    """Score one checkpoint; returns (and writes) the report: settings, counts, metrics. With
    trainer.devices=N each process scores its share and the task gathers them; rank 0 writes the
    report and the other ranks return {}."""
    name = own["task"]
    spec = eval_spec(name)
    if spec.run:
        return evaluate_model(own, overrides)
    ckpt_path = Path(own["ckpt"])
    if is_openmammut_dir(ckpt_path):  # a hub folder: defaults + its architecture and weights
        cfg = check_config(eval_config(folder_config(ckpt_path, overrides), own, overrides))
        out_dir = Path(own.get("out") or Path("outputs") / "eval" / ckpt_path.resolve().name)
        prepare_data(cfg)
        module, tokenizer = task_from_folder(cfg)
    else:
        ckpt = read_checkpoint(ckpt_path)
        cfg = check_config(eval_config(checkpoint_config(ckpt, ckpt_path, overrides), own, overrides))
        out_dir = Path(own.get("out") or default_out(ckpt_path))
        prepare_data(cfg)
        module, tokenizer = task_with_weights(cfg, ckpt, ckpt_path)
    datamodule = build_datamodule(cfg, tokenizer)
    data = describe_data(name, own["split"], cfg, datamodule)
    trainer = L.Trainer(**eval_trainer_kwargs(out_dir, overrides))
    tested = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    if not trainer.is_global_zero:  # several processes (trainer.devices=N): rank 0 writes and prints
        return {}
    report: dict[str, Any] = {"task": name, "ckpt": str(ckpt_path), **data,
                              "metrics": {k: float(tested[f"test/{k}"]) for k in spec.metrics
                                          if f"test/{k}" in tested}}
    if spec.decoding:
        e = cfg.eval
        report["decoding"] = {"num_beams": e.num_beams, "length_penalty": e.length_penalty,
                              "max_new_tokens": e.max_new_tokens}
    if spec.extra:
        report.update(spec.extra(datamodule))
    if getattr(module, "results_path", None):
        report["results_json"] = str(module.results_path)
    return write_report(report, out_dir)


def evaluate_model(own: dict[str, str], overrides: list[str]) -> dict[str, Any]:
    """A protocol that reads its own data (EvalSpec.run, e.g. zeroshot on an ImageFolder), on a
    suite checkpoint or an openMaMMUT folder. Default out=: RUN/eval/, or outputs/eval/FOLDER/."""
    spec = eval_spec(own["task"])
    ckpt_path = Path(own["ckpt"])
    cfg, model = load_image_text_model(ckpt_path, overrides, spec.task)
    given = {o.split("=", 1)[0] for o in overrides}
    scored = spec.run(model, cfg, own, given, trainer_overrides(overrides))
    if not scored:  # another rank
        return {}
    folder_out = Path("outputs") / "eval" / ckpt_path.resolve().name if ckpt_path.is_dir() else default_out(ckpt_path)
    return write_report({"task": own["task"], "ckpt": str(ckpt_path), **scored}, Path(own.get("out") or folder_out))


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """OUT/{task}_{data}_{split}.json; returns the report with its `path`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{report['task']}_{report['data']}_{report['split']}.json"
    path.write_text(json.dumps(report, indent=1))
    report["path"] = str(path)
    return report


def format_report(report: dict[str, Any]) -> str:
    """The printed table: what was scored, the protocol's lines, skipped inputs, files written."""
    spec = eval_spec(report["task"])
    counts = ", ".join(f"{report[k]} {k.replace('_', ' ')}" for k in
                       ("images", "classes", "videos", "questions", "captions", "annotations", "categories") if k in report)
    head = f"{report['task']} | {report['data']} {report['split']}: {counts} | {report['ckpt']}"
    if report.get("subset"):
        head += f"\n  (not the full protocol: {report['subset']} keeps the first ones only)"
    lines = [head, *spec.lines(report)]
    skipped = report["metrics"].get("skipped_videos")
    if skipped:  # counted per item: a question (VideoQA) or a video (captioning)
        lines.append(f"{skipped:.0f} {spec.skipped} could not be decoded (counted wrong)")
    if report.get("results_json"):
        lines.append(f"results JSON: {report['results_json']}")
    return "\n".join(lines + [f"written to {report['path']}"])
