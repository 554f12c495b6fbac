"""One trial of a sweep (Optuna's objective): pretraining with the trial's parameters, then the
downstream fine-tunes from its checkpoint, each through `runtime.run`; and the MLflow runs around
it: the study's parent run, the trial's child run, each stage's run nested under the trial."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import optuna

from mammut_pl import config as config_lib
from mammut_pl.sweeps.results import metric_key
from mammut_pl.sweeps.spec import DOWNSTREAM, Sweep, stage_config, value_str
from mammut_pl.sweeps.stats import SEED
from mammut_pl.sweeps.study import TERMINATED


# --- MLflow --------------------------------------------------------------------------------------
def mlflow_client(sweep: Sweep):
    import mlflow

    from mammut_pl.tracking import prepare_store

    uri = sweep.settings.tracking_uri or config_lib.tracking_uri(config_lib.Config())
    prepare_store(uri)
    return mlflow.MlflowClient(uri), uri


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
        "mammut_pl.seeds": json.dumps(sweep.seeds), "mammut_pl.reference": json.dumps(sweep.reference),
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

    def suggest_seed(self, trial: optuna.Trial) -> list[str]:
        """The trial's seed (a grid dimension): recorded on the trial, set in every stage."""
        if not self.sweep.seeds:
            return []
        seed = trial.suggest_categorical(SEED, self.sweep.seeds)
        trial.set_user_attr(SEED, seed)
        return [f"seed={seed}"]

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        chosen = self.suggest(trial)
        seed_override = self.suggest_seed(trial)
        overrides: dict[str, Any] = {}
        for p in self.sweep.params:
            overrides.update(p.overrides(chosen[p.name]))
        trial_dir = self.out / "trials" / f"trial-{trial.number:03d}"
        client, uri = mlflow_client(self.sweep)
        child = self.start_child_run(client, trial, chosen, overrides, trial_dir)
        values: dict[str, float] = {}
        state, error = "COMPLETE", ""
        try:
            self.run_stages(trial, overrides, [f"output_dir={trial_dir}", *seed_override], trial_dir,
                            (client, uri, child), values)
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except Exception as err:
            if TERMINATED.is_set():  # not the trial's own failure: the sweep is being stopped
                state = "INTERRUPTED"
                raise
            state, error = "FAIL", f"{type(err).__name__}: {err}"
            trial.set_user_attr("error", error[:2000])
            raise
        finally:
            self.end_child_run(client, child, trial, values, state, error)
        return self.objective_values(trial, values)

    def start_child_run(self, client: Any, trial: optuna.Trial, chosen: dict[str, Any], overrides: dict[str, Any],
                        trial_dir: Path) -> str:
        """The trial's MLflow run under the study's parent run, with the trial's parameters."""
        sweep = self.sweep
        exp_id = trial.study.user_attrs["mlflow_experiment_id"]
        child = client.create_run(exp_id, run_name=f"{sweep.name}-trial-{trial.number}", tags={
            "mlflow.parentRunId": self.parent_run_id, "mammut_pl.kind": "trial", "mammut_pl.sweep": sweep.name,
            "mammut_pl.study": trial.study.study_name, "optuna.trial": str(trial.number), "optuna.state": "RUNNING",
            "trial_dir": str(trial_dir.resolve()),
            **({"mammut_pl.seed": str(trial.params[SEED])} if sweep.seeds else {}),
        }).info.run_id
        trial.set_user_attr("mlflow_run_id", child)
        for name, value in chosen.items():
            client.log_param(child, name, value_str(value))
        if sweep.seeds:
            client.log_param(child, SEED, str(trial.params[SEED]))
        for key, value in overrides.items():
            if key not in chosen:
                client.log_param(child, key, value_str(value))
        return child

    def run_stages(self, trial: optuna.Trial, overrides: dict[str, Any], extra: list[str], trial_dir: Path,
                   mlflow_run: tuple[Any, str, str], values: dict[str, float]) -> None:
        """Pretraining (pruned on its validation metric), then each downstream stage from its
        checkpoint; every stage's metrics go into `values` as `<stage>/<metric>` as they come."""
        from mammut_pl.runtime import run

        sweep, (client, uri, child) = self.sweep, mlflow_run

        def config(stage: str, more: list[str]) -> config_lib.Config:
            cfg = stage_config(sweep, stage, overrides, self.cli, [*extra, *more])
            return nest_under(cfg, child, uri, sweep, f"{sweep.name}-trial-{trial.number}-{stage}")

        cfg = config("pretrain", [])
        callbacks = []
        if sweep.pruner != "none":  # single-objective studies
            from optuna_integration import PyTorchLightningPruningCallback

            callbacks.append(PyTorchLightningPruningCallback(trial, monitor=sweep.prune_metric))
        values.update({f"pretrain/{k}": v for k, v in run(cfg, extra_callbacks=callbacks, report=False).items()})
        ckpt = last_checkpoint(trial_dir / (cfg.experiment or "default"))
        trial.set_user_attr("pretrain_checkpoint", str(ckpt))
        if sweep.scaling:  # the run's training compute, counted: FLOPs of one step x the steps it took
            from mammut_pl.sweeps.scaling import train_flops_per_step

            per_step, steps = train_flops_per_step(ckpt, cfg.data.batch_size)
            values.update({"pretrain/flops_per_step": float(per_step), "pretrain/train_flops": float(per_step * steps)})
        client.set_tag(child, "pretrain_checkpoint", str(ckpt))
        for stage in (s for s in DOWNSTREAM if getattr(sweep, s)):
            cfg = config(stage, [f"model.init_from={ckpt}"])
            values.update({f"{stage}/{k}": v for k, v in run(cfg, report=False).items()})
            stage_ckpt = last_checkpoint(trial_dir / (cfg.experiment or "default"))
            client.set_tag(child, f"{stage}_checkpoint", str(stage_ckpt))

    @staticmethod
    def end_child_run(client: Any, child: str, trial: optuna.Trial, values: dict[str, float], state: str,
                      error: str) -> None:
        """The metrics gathered so far (also of a failed trial), its state, and the run ended."""
        kept = {k: v for k, v in values.items() if isinstance(v, float) and math.isfinite(v)}
        for k, v in kept.items():
            client.log_metric(child, metric_key(k), v)
        trial.set_user_attr("metrics", kept)
        client.set_tag(child, "optuna.state", state)
        if error:
            client.set_tag(child, "error", error[:5000])
        client.set_terminated(child, {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED"))

    def objective_values(self, trial: optuna.Trial, values: dict[str, float]) -> float | list[float]:
        missing = [o.metric for o in self.sweep.objectives if o.metric not in values]
        if missing:
            raise RuntimeError(f"trial {trial.number}: the run did not report {missing}; "
                               f"it reported {sorted(values)}")
        result = [values[o.metric] for o in self.sweep.objectives]
        return result[0] if len(result) == 1 else result
