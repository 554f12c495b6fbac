"""python -m mammut_pl.fit experiment=NAME key=value ...

Train a MaMMUT task: config -> datamodule -> LightningModule -> MLflow."""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mammut_pl import config as config_lib
from mammut_pl.config import Config, ConfigError
from mammut_pl.data.tokenizer import Tokenizer, build_tokenizer
from mammut_pl.resume import AtomicCheckpointIO, ResumeState, check_resume_checkpoint, remove_stale_temporaries
from mammut_pl.scale import resolve_strategy
from mammut_pl.tasks import TASKS
from mammut_pl.tasks.base import NonFiniteLossError
from mammut_pl.tracking import check_tracking_server, log_run_start, make_logger

log = logging.getLogger("mammut_pl")


# --- building blocks (also used by evaluate / predict / sweep) -------------------------
def prepare_data(cfg: Config) -> None:
    """Write the embedded demo world if this experiment runs on it and it is missing."""
    if cfg.data.demo and not Path(cfg.data.root).exists():
        from mammut_pl.data.demo import write_demo

        world = Path(cfg.data.root).parent
        log.info("writing the embedded demo data to %s", world)
        write_demo(world)


def build_tokenizer_for(cfg: Config) -> Tokenizer:
    """The tokenizer decides the model's vocabulary and special token ids."""
    tok = build_tokenizer(cfg.data.tokenizer)
    ids = dict(vocab_size=tok.vocab_size, pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id)
    changed = {k: v for k, v in ids.items() if getattr(cfg.model, k) != v}
    if changed:
        log.info("model.%s set from data.tokenizer=%s", ", model.".join(f"{k}={v}" for k, v in changed.items()),
                 cfg.data.tokenizer)
        cfg.model = dataclasses.replace(cfg.model, **ids)
    return tok


def build_datamodule(cfg: Config, tokenizer: Tokenizer) -> L.LightningDataModule:
    d, m = cfg.data, cfg.model
    common = dict(tokenizer=tokenizer, image_size=m.image_size, context_length=m.context_length,
                  batch_size=d.batch_size, num_workers=d.num_workers, augment=d.augment,
                  crop_scale_min=d.crop_scale_min)
    if d.name == "coco":
        from mammut_pl.data.coco import CocoCaptionsDataModule

        return CocoCaptionsDataModule(d.root, eval_batch_size=d.eval_batch_size, karpathy_file=d.karpathy_file,
                                      val_split=d.val_split, test_split=d.test_split,
                                      max_eval_images=d.max_eval_images, seed=cfg.seed, **common)
    if d.name == "vqav2":
        from mammut_pl.data.vqav2 import VQAv2DataModule

        return VQAv2DataModule(d.root, eval_batch_size=d.eval_batch_size, train_split=d.train_split,
                               val_split=d.val_split, test_split=d.test_split, predict_split=d.predict_split,
                               prompt=d.vqa_prompt, max_answer_tokens=d.max_answer_tokens,
                               max_eval_questions=d.max_eval_questions, seed=cfg.seed, **common)
    if d.name == "msrvtt":
        from mammut_pl.data.msrvtt import MSRVTTDataModule

        v = cfg.video
        return MSRVTTDataModule(d.root, task="qa" if cfg.task == "video_qa" else "caption",
                                eval_batch_size=d.eval_batch_size, num_frames=v.num_frames, fps=v.fps,
                                sampling=v.sampling, video_dir=v.video_dir, answer_vocab_size=v.answer_vocab_size,
                                prompt=d.vqa_prompt, max_answer_tokens=d.max_answer_tokens,
                                max_eval_questions=d.max_eval_questions, captions_file=v.captions_file,
                                retrieval_csv=v.retrieval_csv, cache_clips=v.cache_clips, test_split=d.test_split,
                                seed=cfg.seed, **common)
    if d.name == "webdata":
        from mammut_pl.data.coco import CocoCaptionsDataModule
        from mammut_pl.data.webdata import WebDataModule

        val = None
        if d.val_root:
            val = CocoCaptionsDataModule(d.val_root, eval_batch_size=d.eval_batch_size, karpathy_file=d.karpathy_file,
                                         val_split=d.val_split, test_split=d.test_split,
                                         max_eval_images=d.max_eval_images, **common)
        return WebDataModule(d.root, shards=d.shards, resampled=d.resampled, steps_per_epoch=d.steps_per_epoch,
                             shuffle_buffer=d.shuffle_buffer, seed=cfg.seed, val=val, **common)
    if d.name == "lvis":
        from mammut_pl.data.lvis import LVISDataModule

        t = cfg.detection
        return LVISDataModule(d.root, image_size=t.image_size, train_file=t.train_file, val_file=t.val_file,
                              test_file=t.test_file, base_only=t.base_only, jitter=(t.jitter_min, t.jitter_max),
                              batch_size=d.batch_size, eval_batch_size=d.eval_batch_size, num_workers=d.num_workers,
                              max_eval_images=t.max_eval_images, seed=cfg.seed)
    raise ConfigError(f"`data.name`: {d.name!r} has no datamodule for task {cfg.task!r}")


def build_task(cfg: Config, tokenizer: Tokenizer) -> L.LightningModule:
    return TASKS[cfg.task](config_lib.to_dict(cfg), tokenizer)


# --- run directories and resuming -----------------------------------------------------------
def resolve_run(cfg: Config) -> tuple[Path, str | None]:
    """(run dir, checkpoint to resume from). `ckpt_path=last` = this experiment's latest run."""
    exp_dir = Path(cfg.output_dir) / (cfg.experiment or "default")
    if cfg.ckpt_path == "last":
        runs = sorted(p.parent.parent for p in exp_dir.glob("*/checkpoints/last.ckpt"))
        if not runs:
            raise ConfigError(f"`ckpt_path=last`: no earlier run of experiment {cfg.experiment!r} "
                              f"has {exp_dir}/*/checkpoints/last.ckpt")
        return runs[-1], str(runs[-1] / "checkpoints" / "last.ckpt")
    if cfg.ckpt_path:
        ckpt = Path(cfg.ckpt_path)
        if not ckpt.is_file():
            raise ConfigError(f"`ckpt_path`: checkpoint not found: {ckpt}")
        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else exp_dir / time.strftime("%Y%m%d-%H%M%S")
        return run_dir, str(ckpt)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = exp_dir / stamp
    n = 1
    while run_dir.exists():  # two runs started in the same second
        run_dir = exp_dir / f"{stamp}-{n}"
        n += 1
    return run_dir, None


def callbacks(cfg: Config, run_dir: Path, has_val: bool) -> list[Callback]:
    ckpt_dir = run_dir / "checkpoints"
    cbs: list[Callback] = [
        # enable_version_counter=False: a resumed run overwrites last.ckpt / best.ckpt (the atomic
        # CheckpointIO makes that safe) instead of writing last-v1.ckpt next to a stale last.ckpt
        ModelCheckpoint(dirpath=ckpt_dir, filename="step{step}", save_last=True, save_top_k=0,
                        every_n_train_steps=cfg.checkpoint_every_n_steps or None, auto_insert_metric_name=False,
                        enable_version_counter=False),
    ]
    if cfg.mlflow.enabled:  # the LR monitor needs a logger
        cbs.append(LearningRateMonitor(logging_interval="step"))
    if has_val and cfg.task in MONITOR:
        key, mode = MONITOR[cfg.task]
        cbs.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=key, mode=mode, save_top_k=1,
                                   auto_insert_metric_name=False, enable_version_counter=False))
    return cbs


MONITOR = {"pretrain": ("val/mean_R", "max"), "captioning": ("val/CIDEr", "max"), "vqa": ("val/vqa_accuracy", "max"),
           "video_qa": ("val/accuracy", "max"), "video_captioning": ("val/CIDEr", "max"),
           "detection": ("val/AP", "max")}


# --- the run -------------------------------------------------------------------------------
def run(cfg: Config, extra_callbacks: list[Callback] | None = None, report: bool = True) -> dict[str, float]:
    """Train (and test) one config; returns the final metrics. The sweep calls this too."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.mlflow.enabled:  # an unreachable server: one clear error in seconds, before any work
        check_tracking_server(config_lib.tracking_uri(cfg))
    prepare_data(cfg)
    tokenizer = build_tokenizer_for(cfg)
    run_dir, resume_from = resolve_run(cfg)
    if resume_from:  # truncated, foreign, object-carrying or other-architecture files stop here
        check_resume_checkpoint(resume_from, config_lib.to_dict(cfg)["model"])
        remove_stale_temporaries(Path(resume_from).parent)
    datamodule = build_datamodule(cfg, tokenizer)
    task = build_task(cfg, tokenizer)
    logger = make_logger(cfg, run_dir, run_dir.name)
    has_val = bool(getattr(datamodule, "val", True)) if cfg.data.name == "webdata" else True
    trainer_kwargs = config_lib.trainer_kwargs(cfg)
    if "strategy" in trainer_kwargs:  # "fsdp": one FSDP unit per ViT block and decoder layer
        trainer_kwargs["strategy"] = resolve_strategy(trainer_kwargs["strategy"], task.model,
                                                      cfg.model.grad_checkpointing)
    trainer = L.Trainer(
        **trainer_kwargs, default_root_dir=str(run_dir), logger=logger if logger else False,
        callbacks=callbacks(cfg, run_dir, has_val) + [ResumeState()] + list(extra_callbacks or []),
        limit_val_batches=None if has_val else 0,
        plugins=[AtomicCheckpointIO()],  # atomic saves, weights-only loads
    )
    if trainer.is_global_zero:  # under DDP the other ranks write nothing (checkpoints: rank 0's dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        log_run_start(logger, cfg, run_dir, resumed=resume_from is not None)
    start = time.time()
    trainer.fit(task, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    train_seconds = time.time() - start
    metrics: dict[str, float] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if has_val:
        tested = trainer.test(task, datamodule=datamodule, verbose=False)
        metrics.update({k: float(v) for k, v in (tested[0] if tested else {}).items()})
    metrics["train_seconds"] = train_seconds
    if report and trainer.is_global_zero:
        from mammut_pl.report import print_report

        print_report(cfg, task, datamodule, metrics, logger, run_dir)
    return metrics


USAGE = """usage: python -m mammut_pl.fit [experiment=NAME] [key=value ...]

Train MaMMUT. The config is the typed defaults, then experiments/NAME.yaml,
then the key=value overrides (OmegaConf dotlist: model.num_cross_attn=2,
trainer.max_steps=100, 'trainer.devices=[0,1]').

experiments: {experiments}
top-level keys: {keys}
special: print_config=true prints the resolved config and exits;
         ckpt_path=last resumes the experiment's latest run (same MLflow run).
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # MLflow forbids "@" in metric names; Lightning maps val/i2t_R@1 -> val/i2t_R1 (see README)
    warnings.filterwarnings("ignore", message="MLFlow only allows")
    if any(a in ("-h", "--help", "help") for a in argv):
        keys = ", ".join(f.name for f in dataclasses.fields(Config))
        print(USAGE.format(experiments=", ".join(config_lib.list_experiments()), keys=keys))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        experiment, overrides = config_lib.parse_overrides(argv)
        cfg = config_lib.load(experiment, overrides)
        if cfg.print_config:
            print(config_lib.to_yaml(cfg))
            return 0
        run(cfg)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {error_message(err)}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except SIGTERMException:  # ResumeState saved last.ckpt at the step where it stopped
        print("stopped by SIGTERM; last.ckpt holds the last finished step: resume with ckpt_path=last",
              file=sys.stderr)
        return 128 + 15
    return 0


def error_message(err: BaseException) -> str:
    """The message of an error; for one re-raised from a DataLoader worker, the original
    exception's last line rather than the worker's whole traceback."""
    text = str(err)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


if __name__ == "__main__":
    sys.exit(main())
