"""python -m mammut_pl.sweep sweep=NAME [sweep.KEY=VALUE ...] [KEY=VALUE ...]

Reproduce one of the paper's ablations as an Optuna study (sweeps/NAME.yaml).

Each trial = pretraining (the sweep's `pretrain` experiment, with the trial's
parameters) then the downstream evaluations the ablation needs: zero-shot
retrieval of the pretrained model, and VQA and/or LVIS detection fine-tuned from
its checkpoint — as in the paper's tables. Every trial calls the same `runtime.run`
the CLI calls.

Overrides: `sweep.KEY=V` sets the sweep itself (sweep.workers=2, sweep.n_trials=8,
sweep.storage=postgresql://..., sweep.out=DIR); `pretrain.KEY=V` / `vqa.KEY=V` / `lvis.KEY=V` go to
one stage's config; any other `KEY=V` goes to every stage (e.g. trainer.devices=4).

Storage: the study persists (SQLite in the sweep's folder; a JournalStorage file
when several local workers share it; any RDB URL for several machines). Running the
same command again continues the study: finished trials are kept; a trial left
RUNNING by a killed sweep is marked failed and retried with the same parameters.

MLflow: one parent run per study (the sweep file, the study summary, the results
table and plot as artifacts), one nested child run per trial (its parameters, all
stage metrics, its checkpoints); each stage's own training run nests under its trial.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf

from mammut_pl import config as config_lib
from mammut_pl.config import PROJECT_ROOT, ConfigError

log = logging.getLogger("mammut_pl.sweep")
SWEEPS_DIR = PROJECT_ROOT / "sweeps"
STAGES = ("pretrain", "vqa", "lvis")
DOWNSTREAM = ("vqa", "lvis")  # fine-tuned from the trial's pretraining checkpoint, in this order
MLFLOW_EXPERIMENT = "mammut_pl-sweeps"


# --- the sweep file ----------------------------------------------------------------------------
@dataclass
class Param:
    """One swept dimension: a grid of values for a config key, a float/int range, or named
    choices that each set several keys (e.g. contrastive-only / captioning-only / both)."""

    name: str
    values: list[Any] = field(default_factory=list)  # grid / categorical
    low: float | None = None  # range (tpe / random samplers)
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> {key: value}

    @property
    def grid(self) -> list[Any]:
        return list(self.choices) if self.choices else list(self.values)

    def overrides(self, value: Any) -> dict[str, Any]:
        """The config keys this parameter's value sets."""
        return dict(self.choices[value]) if self.choices else {self.name: value}


@dataclass
class Objective:
    metric: str  # "<stage>/<metric logged by fit>", e.g. "pretrain/test/i2t_R@1", "vqa/test/vqa_accuracy"
    direction: str = "maximize"


@dataclass
class SweepSettings:
    """The `sweep.*` keys (settable in the file's `sweep:` block or on the command line)."""

    n_trials: int = 0  # 0 = the whole grid (grid sampler)
    workers: int = 1  # trials in parallel on this machine (one process each)
    storage: str = ""  # "" = SQLite (1 worker) / JournalStorage file (several) in `out`; or an RDB URL
    study_name: str = ""  # "" = the sweep name
    out: str = ""  # "" = sweeps/out/NAME
    seed: int = 0
    mlflow_experiment: str = MLFLOW_EXPERIMENT
    tracking_uri: str = ""  # "" = the suite's default (mlflow.db in the project, or $MLFLOW_TRACKING_URI)
    role: str = "main"  # main | worker (internal: processes started by sweep.workers)


@dataclass
class Sweep:
    name: str
    description: str
    pretrain: str  # experiment for the pretraining stage
    vqa: str  # experiment for the VQA fine-tune ("" = no VQA stage)
    lvis: str  # experiment for the LVIS detection fine-tune ("" = no detection stage)
    params: list[Param]
    objectives: list[Objective]
    record: list[str]  # further "<stage>/<metric>" values kept per trial (tables, MLflow)
    sampler: str  # grid | tpe | random
    pruner: str  # none | median | threshold (single-objective studies only)
    prune_metric: str  # validation metric of the pretraining stage the pruner watches
    prune_threshold: float  # threshold pruner: prune when below (maximize) this
    overrides: dict[str, list[str]]  # per stage (and "all") key=value budget of this sweep
    settings: SweepSettings
    path: Path

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def n_trials(self) -> int:
        if self.settings.n_trials:
            return self.settings.n_trials
        if self.sampler != "grid":
            raise ConfigError(f"{self.path}: sampler={self.sampler} needs sweep.n_trials")
        return math.prod(len(p.grid) for p in self.params)


def list_sweeps() -> list[str]:
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


SWEEP_KEYS = {"description", "pretrain", "vqa", "lvis", "params", "objectives", "record", "sampler", "pruner",
              "prune_metric", "prune_threshold", "overrides", "sweep"}


def load_sweep(name: str, settings_overrides: list[str] | None = None) -> Sweep:
    """sweeps/NAME.yaml (or a path), validated: unknown keys and values name the file and key."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else SWEEPS_DIR / f"{name}.yaml"
    if not path.is_file():
        import difflib

        near = difflib.get_close_matches(name, list_sweeps(), n=1)
        hint = f" Did you mean sweep={near[0]}?" if near else ""
        raise ConfigError(f"sweep={name}: no file {path}. Known: {', '.join(list_sweeps())}.{hint}")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:  # noqa: BLE001 - YAML syntax
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping")
    unknown = set(raw) - SWEEP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; expected some of {sorted(SWEEP_KEYS)}")

    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"{path}: `{key}`: {why}")

    params = []
    for pname, spec in (raw.get("params") or {}).items():
        if isinstance(spec, list):
            p = Param(pname, values=spec)
        elif isinstance(spec, dict) and "choices" in spec:
            need(isinstance(spec["choices"], dict) and all(isinstance(v, dict) for v in spec["choices"].values()),
                 f"params.{pname}.choices", "expected {label: {config.key: value, ...}, ...}")
            p = Param(pname, choices=spec["choices"])
        elif isinstance(spec, dict) and {"low", "high"} <= set(spec):
            p = Param(pname, low=spec["low"], high=spec["high"], log=bool(spec.get("log", False)),
                      integer=bool(spec.get("int", False)))
        else:
            raise ConfigError(f"{path}: `params.{pname}`: expected a list of values, {{choices: ...}} or {{low, high}}")
        need(bool(p.grid) or p.low is not None, f"params.{pname}", "no values")
        params.append(p)
    need(bool(params), "params", "a sweep needs at least one parameter")
    objectives = [Objective(**o) if isinstance(o, dict) else Objective(str(o)) for o in raw.get("objectives") or []]
    need(bool(objectives), "objectives", "a sweep needs at least one objective")
    for o in objectives:
        need(o.direction in ("maximize", "minimize"), "objectives", f"direction {o.direction!r}")
        need(o.metric.split("/", 1)[0] in STAGES, "objectives", f"{o.metric!r} must start with a stage {STAGES}")
    settings = OmegaConf.structured(SweepSettings)
    try:
        settings = OmegaConf.merge(settings, raw.get("sweep") or {}, OmegaConf.from_dotlist(settings_overrides or []))
    except Exception as err:  # noqa: BLE001
        key = getattr(err, "full_key", "") or str(err).splitlines()[0]
        raise ConfigError(f"unknown or bad sweep setting `sweep.{key}`") from None
    sweep = Sweep(
        name=path.stem, description=str(raw.get("description", "")), pretrain=str(raw.get("pretrain", "demo")),
        vqa=str(raw.get("vqa", "") or ""), lvis=str(raw.get("lvis", "") or ""), params=params, objectives=objectives,
        record=list(raw.get("record") or []), sampler=str(raw.get("sampler", "grid")),
        pruner=str(raw.get("pruner", "none")), prune_metric=str(raw.get("prune_metric", "val/mean_R")),
        prune_threshold=float(raw.get("prune_threshold", 0.0)),
        overrides={k: list(v) for k, v in (raw.get("overrides") or {}).items()},
        settings=OmegaConf.to_object(settings), path=path,
    )
    need(sweep.sampler in ("grid", "tpe", "random"), "sampler", "expected grid, tpe or random")
    need(sweep.pruner in ("none", "median", "threshold"), "pruner", "expected none, median or threshold")
    need(sweep.pruner == "none" or len(objectives) == 1, "pruner",
         "Optuna prunes single-objective studies only; use one objective or pruner: none")
    need(sweep.sampler != "grid" or all(p.grid for p in params), "sampler",
         "the grid sampler needs a list of values (or choices) for every parameter")
    need(set(sweep.overrides) <= {*STAGES, "all"}, "overrides", f"stages are {STAGES} and 'all'")
    for stage in DOWNSTREAM:
        need(any(o.metric.startswith(f"{stage}/") for o in objectives) <= bool(getattr(sweep, stage)), stage,
             f"a {stage}/... objective needs a {stage} experiment")
    s = sweep.settings
    need(s.workers >= 1, "sweep.workers", "must be >= 1")
    need(s.n_trials >= 0, "sweep.n_trials", "must be >= 0")
    sweep.n_trials()  # raises if a non-grid sampler has no budget
    return sweep


# --- command line -------------------------------------------------------------------------------
def split_overrides(args: list[str]) -> tuple[str, list[str], dict[str, list[str]]]:
    """sweep=NAME, sweep.* settings, and per-stage config overrides ("all" = every stage)."""
    name, settings, stage = "", [], {s: [] for s in (*STAGES, "all")}
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r}: expected key=value (see --help)")
        key, value = arg.split("=", 1)
        head, _, rest = key.partition(".")
        if key == "sweep":
            name = value
        elif head == "sweep" and rest:
            settings.append(f"{rest}={value}")
        elif head in STAGES and rest:
            stage[head].append(f"{rest}={value}")
        else:
            stage["all"].append(arg)
    if not name:
        raise ConfigError(f"sweep=NAME is required; known sweeps: {', '.join(list_sweeps())}")
    return name, settings, stage


def _value_str(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v).replace(" ", "")
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def stage_config(sweep: Sweep, stage: str, trial_overrides: dict[str, Any], cli: dict[str, list[str]],
                 extra: list[str]) -> config_lib.Config:
    """A stage's full config: its experiment <- the sweep's budget <- the trial's parameters <-
    the command line, validated before any work."""
    experiment = sweep.pretrain if stage == "pretrain" else getattr(sweep, stage)
    params = [f"{k}={_value_str(v)}" for k, v in trial_overrides.items()]
    if stage != "pretrain":  # downstream stages take the architecture keys only (weights come from pretraining)
        params = [p for p in params if p.startswith("model.")]
    overrides = [*sweep.overrides.get("all", []), *sweep.overrides.get(stage, []), *params,
                 *cli["all"], *cli[stage], *extra]
    return config_lib.load(experiment, overrides)


def single_process(cfg: config_lib.Config) -> None:
    """A trial trains in its worker process. Lightning's DDP launcher would start this whole
    command again for every further rank (each taking trials of its own), so multi-process
    trainers are refused; run trials in parallel with sweep.workers instead."""
    t = config_lib.trainer_kwargs(cfg)
    devices = t.get("devices", 1)
    many = len(devices) > 1 if isinstance(devices, (list, tuple)) else str(devices) != "1"  # -1, auto: all
    if many or int(t.get("num_nodes", 1) or 1) > 1:
        raise ConfigError(f"`trainer.devices={devices}` / `trainer.num_nodes`: a sweep trains each trial in "
                          "one process (one device); run trials in parallel with sweep.workers=K instead")


# --- storage, study, resume ---------------------------------------------------------------------
def storage_for(sweep: Sweep, out: Path) -> str | optuna.storages.BaseStorage:
    s = sweep.settings.storage
    if s:
        return s
    journal, db = out / "study.journal", out / "study.db"
    if journal.exists() or (sweep.settings.workers > 1 and not db.exists()):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    return f"sqlite:///{db}"


def make_sampler(sweep: Sweep) -> optuna.samplers.BaseSampler:
    if sweep.sampler == "grid":
        return optuna.samplers.GridSampler({p.name: p.grid for p in sweep.params}, seed=sweep.settings.seed)
    if sweep.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=sweep.settings.seed)
    return optuna.samplers.RandomSampler(seed=sweep.settings.seed)


def make_pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    if sweep.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    if sweep.pruner == "threshold":
        kind = "lower" if sweep.directions[0] == "maximize" else "upper"
        return optuna.pruners.ThresholdPruner(**{kind: sweep.prune_threshold})
    return optuna.pruners.NopPruner()


def open_study(sweep: Sweep, out: Path) -> optuna.Study:
    from mammut_pl.tracking import sqlite_creation_lock

    storage = storage_for(sweep, out)
    with sqlite_creation_lock(storage if isinstance(storage, str) else ""):  # a new SQLite study: one at a time
        return optuna.create_study(
            study_name=sweep.settings.study_name or sweep.name, storage=storage,
            sampler=make_sampler(sweep), pruner=make_pruner(sweep), directions=sweep.directions, load_if_exists=True,
        )


def retry_interrupted(study: optuna.Study) -> list[int]:
    """Trials left RUNNING by a killed sweep: mark them failed and queue a copy with the same
    parameters (and grid point), so each grid point runs to completion exactly once. Called
    by the main process before any worker starts, so no trial is running legitimately."""
    retried = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "error", INTERRUPTED)  # noqa: SLF001
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)  # noqa: SLF001
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING, params=t.params, distributions=t.distributions,
            user_attrs={"retry_of": t.number}, system_attrs=dict(t.system_attrs),
        ))
        retried.append(t.number)
        log.warning("trial %d was interrupted: marked failed, retrying it with the same parameters", t.number)
    return retried


INTERRUPTED = "interrupted (the sweep process was killed)"

# SIGTERM (preemption, `kill`, a scheduler ending the job) stops the sweep, whatever the trial was
# doing: inside training Lightning saves last.ckpt and raises; a DataLoader worker killed by the
# same signal (sent to the whole process group) raises an ordinary error, which must not be taken
# for the trial's own failure and let the sweep go on with the next trial.
_TERMINATED = threading.Event()


class SweepTerminated(SystemExit):
    """Raised through Optuna (which leaves the trial RUNNING: the re-run retries it)."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _note_sigterm(signum: int, frame: Any) -> None:
    _TERMINATED.set()


def stop_on_sigterm(runner: Any) -> Any:
    """The runner, with any error raised after a SIGTERM turned into SweepTerminated."""
    def objective(trial: optuna.Trial) -> Any:
        if _TERMINATED.is_set():
            raise SweepTerminated()
        try:
            return runner(trial)
        except Exception as err:
            if _TERMINATED.is_set():
                raise SweepTerminated() from err
            raise
    return objective


def counted_trials(study: optuna.Study) -> int:
    """Trials that will not run again: complete, pruned, or failed by their own error."""
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return sum(1 for t in study.get_trials(deepcopy=False, states=done) if t.user_attrs.get("error") != INTERRUPTED)


# --- MLflow --------------------------------------------------------------------------------------
def mlflow_client(sweep: Sweep):
    import mlflow

    from mammut_pl.tracking import prepare_store

    uri = sweep.settings.tracking_uri or config_lib.tracking_uri(config_lib.Config())
    prepare_store(uri)
    return mlflow.MlflowClient(uri), uri


def metric_key(name: str) -> str:
    return name.replace("@", "")  # MLflow forbids '@' (R@1 -> R1), as Lightning's logger does


def parent_run(study: optuna.Study, sweep: Sweep) -> str:
    """The study's MLflow parent run: created once, its id kept in the study."""
    client, _ = mlflow_client(sweep)
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if run_id:
        return run_id
    exp = client.get_experiment_by_name(sweep.settings.mlflow_experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(sweep.settings.mlflow_experiment)
    run = client.create_run(exp_id, run_name=study.study_name, tags={
        "mammut_pl.kind": "sweep", "mammut_pl.sweep": sweep.name, "mammut_pl.study": study.study_name,
        "mammut_pl.params": json.dumps([p.name for p in sweep.params]),
        "mammut_pl.space": json.dumps({p.name: p.grid for p in sweep.params if p.grid}),
        "mammut_pl.objectives": json.dumps([{"metric": metric_key(o.metric), "direction": o.direction}
                                            for o in sweep.objectives]),
        "mlflow.note.content": sweep.description,
    })
    client.log_artifact(run.info.run_id, str(sweep.path))
    study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    study.set_user_attr("mlflow_experiment_id", exp_id)
    return run.info.run_id


def close_stale_child_runs(study: optuna.Study, sweep: Sweep) -> None:
    """MLflow runs of interrupted trials are still RUNNING there: mark them KILLED."""
    client, _ = mlflow_client(sweep)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id and client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "optuna.state", "FAIL")
            client.set_terminated(run_id, "KILLED")


# --- one trial -----------------------------------------------------------------------------------
class TrialRunner:
    """Optuna's objective: pretrain, then the downstream stages; returns the objective values."""

    def __init__(self, sweep: Sweep, cli: dict[str, list[str]], out: Path, parent_run_id: str) -> None:
        self.sweep, self.cli, self.out, self.parent_run_id = sweep, cli, out, parent_run_id

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        for p in self.sweep.params:
            if p.grid:
                chosen[p.name] = trial.suggest_categorical(p.name, p.grid)
            elif p.integer:
                chosen[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
            else:
                chosen[p.name] = trial.suggest_float(p.name, float(p.low), float(p.high), log=p.log)
        return chosen

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        from mammut_pl.runtime import run

        sweep = self.sweep
        chosen = self.suggest(trial)
        overrides: dict[str, Any] = {}
        for p in sweep.params:
            overrides.update(p.overrides(chosen[p.name]))
        trial_dir = self.out / "trials" / f"trial-{trial.number:03d}"
        client, uri = mlflow_client(sweep)
        exp_id = trial.study.user_attrs["mlflow_experiment_id"]
        child = client.create_run(exp_id, run_name=f"{sweep.name}-trial-{trial.number}", tags={
            "mlflow.parentRunId": self.parent_run_id, "mammut_pl.kind": "trial", "mammut_pl.sweep": sweep.name,
            "mammut_pl.study": trial.study.study_name, "optuna.trial": str(trial.number), "optuna.state": "RUNNING",
            "trial_dir": str(trial_dir.resolve()),
        }).info.run_id
        trial.set_user_attr("mlflow_run_id", child)
        for name, value in chosen.items():
            client.log_param(child, name, _value_str(value))
        for key, value in overrides.items():
            if key not in chosen:
                client.log_param(child, key, _value_str(value))
        values: dict[str, float] = {}
        state, error = "COMPLETE", ""
        try:
            def tracked(cfg: config_lib.Config, stage: str) -> config_lib.Config:
                return nest_under(cfg, child, uri, sweep, f"{sweep.name}-trial-{trial.number}-{stage}")

            # pretraining, pruned on its validation metric (single-objective studies)
            cfg = tracked(stage_config(sweep, "pretrain", overrides, self.cli, [f"output_dir={trial_dir}"]), "pretrain")
            callbacks = []
            if sweep.pruner != "none":
                from optuna_integration import PyTorchLightningPruningCallback

                callbacks.append(PyTorchLightningPruningCallback(trial, monitor=sweep.prune_metric))
            metrics = run(cfg, extra_callbacks=callbacks, report=False)
            values.update({f"pretrain/{k}": v for k, v in metrics.items()})
            ckpt = last_checkpoint(trial_dir / (cfg.experiment or "default"))
            trial.set_user_attr("pretrain_checkpoint", str(ckpt))
            client.set_tag(child, "pretrain_checkpoint", str(ckpt))
            for stage in (s for s in DOWNSTREAM if getattr(sweep, s)):
                cfg = tracked(stage_config(sweep, stage, overrides, self.cli,
                                           [f"output_dir={trial_dir}", f"model.init_from={ckpt}"]), stage)
                metrics = run(cfg, report=False)
                values.update({f"{stage}/{k}": v for k, v in metrics.items()})
                client.set_tag(child, f"{stage}_checkpoint",
                               str(last_checkpoint(trial_dir / (cfg.experiment or "default"))))
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except Exception as err:
            if _TERMINATED.is_set():  # not the trial's own failure: the sweep is being stopped
                state = "INTERRUPTED"
                raise
            state, error = "FAIL", f"{type(err).__name__}: {err}"
            trial.set_user_attr("error", error[:2000])
            raise
        finally:
            kept = {k: v for k, v in values.items() if isinstance(v, float) and math.isfinite(v)}
            for k, v in kept.items():
                client.log_metric(child, metric_key(k), v)
            trial.set_user_attr("metrics", kept)
            client.set_tag(child, "optuna.state", state)
            if error:
                client.set_tag(child, "error", error[:5000])
            client.set_terminated(child, {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED"))
        missing = [o.metric for o in sweep.objectives if o.metric not in values]
        if missing:
            raise RuntimeError(f"trial {trial.number}: the run did not report {missing}; "
                               f"it reported {sorted(values)}")
        result = [values[o.metric] for o in sweep.objectives]
        return result[0] if len(result) == 1 else result


def nest_under(cfg: config_lib.Config, run_id: str, uri: str, sweep: Sweep, run_name: str) -> config_lib.Config:
    """A stage's own MLflow run, nested under its trial's run."""
    cfg.mlflow = dataclasses.replace(
        cfg.mlflow, enabled=True, tracking_uri=uri, experiment_name=sweep.settings.mlflow_experiment,
        parent_run_id=run_id, run_name=run_name, tags={"mammut_pl.kind": "stage", "mammut_pl.sweep": sweep.name})
    return cfg


def last_checkpoint(exp_dir: Path) -> Path:
    found = sorted(exp_dir.glob("*/checkpoints/last.ckpt"))
    if not found:
        raise FileNotFoundError(f"no last.ckpt under {exp_dir}")
    return found[-1]


# --- results ---------------------------------------------------------------------------------------
def results_table(study: optuna.Study, sweep: Sweep):
    """One row per trial: number, state, the swept parameters and every kept metric."""
    import pandas as pd

    columns = [o.metric for o in sweep.objectives] + [m for m in sweep.record if m not in {o.metric for o in sweep.objectives}]
    rows = []
    for t in sorted(study.trials, key=lambda t: t.number):
        metrics = t.user_attrs.get("metrics", {})
        row = {"trial": t.number, "state": t.state.name, **{p.name: t.params.get(p.name) for p in sweep.params}}
        row.update({c: metrics.get(c) for c in columns})
        if t.user_attrs.get("retry_of") is not None:
            row["note"] = f"retry of trial {t.user_attrs['retry_of']}"
        elif t.user_attrs.get("error"):
            row["note"] = str(t.user_attrs["error"])[:60]
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(df) -> str:
    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def plot_results(df, sweep: Sweep, path: Path) -> Path:
    """Each objective (and recorded metric) against the swept parameter, completed trials only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = df[df["state"] == "COMPLETE"]
    metrics = [o.metric for o in sweep.objectives] + [m for m in sweep.record if m not in {o.metric for o in sweep.objectives}]
    param = sweep.params[0]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        if len(sweep.params) == 1 and param.grid:  # categorical x in the sweep's order
            order = [v for v in param.grid if v in set(done[param.name])]
            ys = [done[done[param.name] == v][metric].mean() for v in order]
            ax.plot(range(len(order)), ys, "o-")
            ax.set_xticks(range(len(order)), [str(v) for v in order])
            ax.set_xlabel(param.name)
        else:
            ax.plot(done["trial"], done[metric], "o")
            ax.set_xlabel("trial")
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"sweep {sweep.name}: {sweep.description}"[:110], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summarise(study: optuna.Study, sweep: Sweep, out: Path, parent_run_id: str, seconds: float) -> str:
    df = results_table(study, sweep)
    md = markdown_table(df)
    (out / "results.md").write_text(f"# sweep {sweep.name}\n\n{sweep.description}\n\n{md}\n")
    df.to_csv(out / "results.csv", index=False)
    plot_results(df, sweep, out / "ablation.png")
    states = df["state"].value_counts().to_dict()
    best = [{"trial": t.number, "values": t.values, "params": t.params} for t in study.best_trials] \
        if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) else []
    summary = {"sweep": sweep.name, "study": study.study_name, "n_trials": len(df), "states": states,
               "objectives": [dataclasses.asdict(o) for o in sweep.objectives], "best_trials": best,
               "seconds_this_invocation": round(seconds, 1)}
    (out / "study_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    client, _ = mlflow_client(sweep)
    for name in ("results.md", "results.csv", "ablation.png", "study_summary.json"):
        client.log_artifact(parent_run_id, str(out / name))
    for i, row in enumerate(df.itertuples(index=False)):
        client.set_tag(parent_run_id, f"trial_{row.trial}_state", row.state)
    if all(s in ("COMPLETE", "PRUNED", "FAIL") for s in states) and counted_trials(study) >= sweep.n_trials():
        client.set_terminated(parent_run_id, "FINISHED")
    return md


# --- the run ---------------------------------------------------------------------------------------
def run_workers(sweep: Sweep, study: optuna.Study, runner: TrialRunner, argv: list[str]) -> None:
    """Run trials until the budget is spent. sweep.workers=K starts K worker processes that
    share the study through its storage; each takes a trial only while the finished plus
    running trials leave room, so no grid point runs twice."""
    if sweep.settings.workers > 1 and sweep.settings.role == "main":
        procs = [subprocess.Popen([sys.executable, "-m", "mammut_pl.sweep", *argv, "sweep.role=worker"])
                 for _ in range(sweep.settings.workers)]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise RuntimeError(f"sweep workers exited with {codes}")
        return
    total = sweep.n_trials()
    while True:
        running = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
        if counted_trials(study) + running >= total:
            return
        # catch: a trial that raises is recorded as failed with its error, and the study goes on
        study.optimize(stop_on_sigterm(runner), n_trials=1, catch=(Exception,), gc_after_trial=True)


USAGE = __doc__ + "\nsweeps: {sweeps}\n"


def run_sweep(argv: list[str]) -> None:
    """Validate every stage config, open (or continue) the study, run the trials, summarise."""
    name, settings, cli = split_overrides(argv)
    sweep = load_sweep(name, settings)
    out = Path(sweep.settings.out or PROJECT_ROOT / "sweeps" / "out" / sweep.name)
    out.mkdir(parents=True, exist_ok=True)
    # every stage config must be valid before any trial starts
    for p in sweep.params:
        for value in p.grid[:1] or [p.low]:
            single_process(stage_config(sweep, "pretrain", p.overrides(value), cli, []))
            for stage in (s for s in DOWNSTREAM if getattr(sweep, s)):
                single_process(stage_config(sweep, stage, p.overrides(value), cli, []))
    study = open_study(sweep, out)
    parent = parent_run(study, sweep)
    if sweep.settings.role == "main":
        retried = retry_interrupted(study)
        close_stale_child_runs(study, sweep)
        before = counted_trials(study)
        print(f"sweep {sweep.name}: study {study.study_name!r}, {before} of {sweep.n_trials()} trials done"
              f"{f', retrying interrupted trial(s) {retried}' if retried else ''}; output in {out}")
    start = time.time()
    run_workers(sweep, study, TrialRunner(sweep, cli, out, parent), argv)
    if sweep.settings.role == "main":
        md = summarise(study, sweep, out, parent, time.time() - start)
        print(f"\n{md}\n\nresults: {out}/results.md, results.csv, ablation.png; "
              f"MLflow parent run {parent} (experiment {sweep.settings.mlflow_experiment})")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE.format(sweeps=", ".join(list_sweeps())))
        return 0
    import lightning.pytorch  # noqa: F401  # before basicConfig: Lightning keeps its own handler (no doubled lines)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", message="MLFlow only allows")  # R@1 -> R1 in MLflow (see README)
    signal.signal(signal.SIGTERM, _note_sigterm)  # Lightning chains to it while a stage trains
    from mammut_pl.runtime import cli_main

    try:
        return cli_main(lambda: run_sweep(argv))
    except SweepTerminated as stop:
        print("sweep stopped by SIGTERM: run the same command again to continue the study "
              "(the interrupted trial is retried)", file=sys.stderr)
        return int(stop.code)


if __name__ == "__main__":
    sys.exit(main())
