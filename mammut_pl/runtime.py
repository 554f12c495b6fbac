"""The builders every entry point shares: config -> tokenizer, datamodule, task, trainer and
run dir; resuming; and the error handling at the end of every `main`.

fit / evaluate / predict / sweep are thin command lines over this module and the task
registry (mammut_pl/tasks/registry.py); nothing imports them."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mammut_pl import config as config_lib
from mammut_pl.config import Config, ConfigError
from mammut_pl.data.builders import build_tokenizer_for, has_eval_data, prepare_data
from mammut_pl.data.builders import build_datamodule as build_data
from mammut_pl.data.tokenizer import Tokenizer
from mammut_pl.distributed import shutdown_process_group
from mammut_pl.resume import (AtomicCheckpointIO, DiskFullError, ResumeState, check_resume_checkpoint,
                              remove_stale_temporaries)
from mammut_pl.scale import resolve_strategy
from mammut_pl.tasks import build_task, check_config, task_spec
from mammut_pl.tasks.base import NonFiniteLossError
from mammut_pl.tracking import check_tracking_server, log_run_start, make_logger

log = logging.getLogger("mammut_pl")

__all__ = ["build_callbacks", "build_datamodule", "build_task", "build_tokenizer_for", "build_trainer", "cli_main",
           "error_message", "prepare_data", "resolve_run", "run"]


def build_datamodule(cfg: Config, tokenizer: Tokenizer) -> L.LightningDataModule:
    """`data.name`'s datamodule, with the task's own datamodule options (TaskSpec)."""
    return build_data(cfg, tokenizer, **task_spec(cfg.task).datamodule_options)


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


def build_callbacks(cfg: Config, run_dir: Path, has_val: bool) -> list[Callback]:
    """last.ckpt (+ every N steps), the LR monitor, and best.ckpt by the task's monitored metric."""
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
    if cfg.data.zeroshot_root:  # zero-shot classification at each validation and after training
        from mammut_pl.tasks.zeroshot import ZeroShotValidation

        d = cfg.data
        cbs.append(ZeroShotValidation(d.zeroshot_root, d.zeroshot_classnames, d.zeroshot_templates,
                                      d.eval_batch_size, d.num_workers))
    if has_val:
        key, mode = task_spec(cfg.task).monitor
        cbs.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=key, mode=mode, save_top_k=1,
                                   auto_insert_metric_name=False, enable_version_counter=False))
    return cbs


def build_trainer(cfg: Config, run_dir: Path, logger, has_val: bool,
                  extra_callbacks: list[Callback] | None = None, model: torch.nn.Module | None = None) -> L.Trainer:
    kwargs = config_lib.trainer_kwargs(cfg)
    if model is not None and "strategy" in kwargs:  # "fsdp": one FSDP unit per ViT block and decoder part
        kwargs["strategy"] = resolve_strategy(kwargs["strategy"], model, cfg.model.grad_checkpointing)
    if not has_val:  # no validation data: validation is off, whatever trainer.limit_val_batches says
        kwargs["limit_val_batches"] = 0
    validates = has_val and kwargs.get("limit_val_batches") != 0  # trainer.limit_val_batches=0: no best.ckpt
    return L.Trainer(
        **kwargs, default_root_dir=str(run_dir), logger=logger if logger else False,
        callbacks=build_callbacks(cfg, run_dir, validates) + [ResumeState()] + list(extra_callbacks or []),
        plugins=[AtomicCheckpointIO()],  # atomic saves, weights-only loads
    )


# --- the run -------------------------------------------------------------------------------
def run(cfg: Config, extra_callbacks: list[Callback] | None = None, report: bool = True) -> dict[str, float]:
    """Train (and test) one config; returns the final metrics. `fit` and every sweep trial call this."""
    check_config(cfg)  # the task's own checks (the datasets it reads, ...), before any work
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
    has_val = has_eval_data(datamodule)
    trainer = build_trainer(cfg, run_dir, logger, has_val, extra_callbacks, model=task.model)
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


# --- the end of every entry point's main ----------------------------------------------------------
def error_message(err: BaseException) -> str:
    """The message of an error; for one re-raised from a DataLoader worker, the original
    exception's last line rather than the worker's whole traceback."""
    text = str(err)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def cli_main(body: Callable[[], int | None]) -> int:
    """Run an entry point's body; the errors a user can act on become one `error:` line and an
    exit code: 2 bad config / input, 1 a non-finite loss or a full disk, 143 stopped by SIGTERM.
    A multi-process run (DDP) ends with every rank done before any destroys the group."""
    done = False
    try:
        code = body() or 0
        done = True
        return code
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {error_message(err)}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, DiskFullError) as err:  # disk full: the previous last.ckpt is kept
        print(f"error: {err}", file=sys.stderr)
        return 1
    except SIGTERMException:  # ResumeState saved last.ckpt at the step where it stopped
        print("stopped by SIGTERM; last.ckpt holds the last finished step: resume with ckpt_path=last",
              file=sys.stderr)
        return 128 + 15
    finally:  # see distributed.py: Lightning's atexit teardown has no barrier
        shutdown_process_group(wait=done)
