"""A whole sweep, as `python -m mammut_pl.sweep` runs it: validate every stage config, open (or
continue) the study, run the trials, then write and log the summary."""

from __future__ import annotations

import time
from pathlib import Path

from mammut_pl.config import PROJECT_ROOT, ConfigError
from mammut_pl.sweeps.results import summarise
from mammut_pl.sweeps.spec import DOWNSTREAM, Sweep, load_sweep, single_process, split_overrides, stage_config
from mammut_pl.sweeps.study import counted_trials, open_study, retry_interrupted, run_workers
from mammut_pl.sweeps.trial import TrialRunner, close_stale_child_runs, mlflow_client, parent_run


def run_sweep(argv: list[str]) -> None:
    """Validate every stage config, open (or continue) the study, run the trials, summarise."""
    name, settings, cli = split_overrides(argv)
    sweep = load_sweep(name, settings)
    if sweep.seeds and any(arg.startswith("seed=") for args in cli.values() for arg in args):
        raise ConfigError(f"`seed=...`: sweep {sweep.name} runs seeds {sweep.seeds} (each trial sets its own); "
                          "choose them with sweep.seeds=N or sweep.seeds=[...]")
    out = Path(sweep.settings.out or PROJECT_ROOT / "sweeps" / "out" / sweep.name)
    out.mkdir(parents=True, exist_ok=True)
    validate_stages(sweep, cli)
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
        finished = counted_trials(study) >= sweep.n_trials()
        md = summarise(study, sweep, out, mlflow_client(sweep)[0], parent, time.time() - start, finished)
        print(f"\n{md}\n\nresults: {out}/results.md, intervals.csv, results.csv, ablation.png; "
              f"MLflow parent run {parent} (experiment {sweep.settings.mlflow_experiment})")


def validate_stages(sweep: Sweep, cli: dict[str, list[str]]) -> None:
    """Every stage config must be valid (and single-process) before any trial starts."""
    for p in sweep.params:
        for value in p.grid[:1] or [p.low]:
            single_process(stage_config(sweep, "pretrain", p.overrides(value), cli, []))
            for stage in (s for s in DOWNSTREAM if getattr(sweep, s)):
                single_process(stage_config(sweep, stage, p.overrides(value), cli, []))
