"""A sweep's Optuna study: storage, sampler and pruner; resuming it (interrupted trials retried
with their own parameters); running trials until the budget is spent, in one process or
several workers; and stopping on SIGTERM without counting the interrupted trial as failed."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import optuna

from mammut_pl.sweeps.spec import Sweep
from mammut_pl.sweeps.stats import SEED

log = logging.getLogger("mammut_pl.sweep")


def storage_for(sweep: Sweep, out: Path) -> str | optuna.storages.BaseStorage:
    s = sweep.settings.storage
    if s:
        return s
    journal, db = out / "study.journal", out / "study.db"
    if journal.exists() or (sweep.settings.workers > 1 and not db.exists()):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    return f"sqlite:///{db}"


def search_space(sweep: Sweep) -> dict[str, list[Any]]:
    """The grid: every parameter's values, and the seeds as one more dimension."""
    space = {p.name: p.grid for p in sweep.params}
    return {**space, SEED: sweep.seeds} if sweep.seeds else space


def make_sampler(sweep: Sweep) -> optuna.samplers.BaseSampler:
    if sweep.sampler == "grid":
        return optuna.samplers.GridSampler(search_space(sweep), seed=sweep.settings.seed)
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
TERMINATED = threading.Event()


class SweepTerminated(SystemExit):
    """Raised through Optuna (which leaves the trial RUNNING: the re-run retries it)."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def note_sigterm(signum: int, frame: Any) -> None:
    """The SIGTERM handler (installed by the command line): the sweep stops after the running stage."""
    TERMINATED.set()


def stop_on_sigterm(runner: Any) -> Any:
    """The runner, with any error raised after a SIGTERM turned into SweepTerminated."""
    def objective(trial: optuna.Trial) -> Any:
        if TERMINATED.is_set():
            raise SweepTerminated()
        try:
            return runner(trial)
        except Exception as err:
            if TERMINATED.is_set():
                raise SweepTerminated() from err
            raise
    return objective


def counted_trials(study: optuna.Study) -> int:
    """Trials that will not run again: complete, pruned, or failed by their own error."""
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return sum(1 for t in study.get_trials(deepcopy=False, states=done) if t.user_attrs.get("error") != INTERRUPTED)


def run_workers(sweep: Sweep, study: optuna.Study, runner: Callable[[optuna.Trial], Any], argv: list[str]) -> None:
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
