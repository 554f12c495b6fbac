"""End to end: a real sweep on the tiny demo world (pretraining + VQA fine-tune per trial, 2 grid
points x 2 seeds), SIGKILLed (the whole process group) once a trial is under way, as seen in the
stores (the trial RUNNING in the Optuna study and its pretraining stage's first logged step in
MLflow), then run again: the study continues, the interrupted trial is retried, every (point,
seed) pair completes exactly once and no pair finished before the kill runs again; the results
table holds each point's mean, 95% interval over the seeds and the paired difference against the
reference; MLflow holds 1 parent (with the aggregate table) + one child per trial; the ablation
notebook runs on the store; a pruned trial shows as pruned."""

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
from scipy import stats

from mammut_pl.tracking import sqlite_creation_lock
from tests.helpers.notebook_utils import errors, notebook_report, pngs, run_notebook

pytestmark = pytest.mark.e2e

SWEEP = """
description: tiny cross-attention sweep for the tests
pretrain: demo
vqa: vqa
params:
  model.num_cross_attn: [1, 2]
seeds: [0, 1]
reference: {model.num_cross_attn: 2}
objectives:
  - {metric: pretrain/test/i2t_R@1, direction: maximize}
  - {metric: vqa/test/vqa_accuracy, direction: maximize}
record: [pretrain/test/t2i_R@1]
sampler: grid
overrides:
  all: [trainer.max_time=null, trainer.enable_progress_bar=false, data.num_workers=0, data.batch_size=8,
        trainer.val_check_interval=2, trainer.max_steps=4, trainer.log_every_n_steps=1]
"""


def sweep_cmd(tmp: Path, world: Path, sweep_file: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mammut_pl.sweep", f"sweep={sweep_file}", f"sweep.out={tmp}/out",
            f"sweep.tracking_uri=sqlite:///{tmp}/mlflow.db", f"pretrain.data.root={world}/webdata",
            f"pretrain.data.webdata.val_root={world}/coco", f"vqa.data.root={world}/vqav2",
            f"data.tokenizer={world}/tokenizer.json", *extra]


def load_study(db: Path) -> optuna.Study | None:
    if not db.exists():
        return None
    try:  # under the sweep's creation lock: opening a store the sweep is still creating would race it
        with sqlite_creation_lock(f"sqlite:///{db}"):
            return optuna.load_study(study_name="xattn_tiny", storage=f"sqlite:///{db}")
    except Exception:  # noqa: BLE001 - not created yet
        return None


def logged_steps_under(mlflow_db: Path, trial_run_id: str) -> int:
    """Metric rows the stage runs nested under a trial's MLflow run have logged so far."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{mlflow_db}?mode=ro", uri=True, timeout=5)) as con:
            return con.execute("SELECT count(*) FROM metrics m JOIN tags t ON m.run_uuid = t.run_uuid "
                               "WHERE t.key = 'mlflow.parentRunId' AND t.value = ?", (trial_run_id,)).fetchone()[0]
    except sqlite3.OperationalError:  # not created yet, or busy: look again
        return 0


def trial_under_way(tmp: Path, complete_before: int) -> optuna.trial.FrozenTrial | None:
    """The state the kill aims at: `complete_before` trials complete and the next one RUNNING,
    its pretraining stage having logged a step."""
    study = load_study(tmp / "out" / "study.db")
    if study is None:
        return None
    trials = study.get_trials(deepcopy=False)
    running = [t for t in trials if t.state.name == "RUNNING"]
    if sum(t.state.name == "COMPLETE" for t in trials) < complete_before or not running:
        return None
    run_id = running[0].user_attrs.get("mlflow_run_id")
    return running[0] if run_id and logged_steps_under(tmp / "mlflow.db", run_id) > 0 else None


def kill_group(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGKILL the sweep's whole process group (its DataLoader workers too) and wait until no
    process of the group is left."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes of group {proc.pid} still alive {timeout} s after SIGKILL")


def test_killed_sweep_continues_and_mlflow_holds_parent_and_children(tmp_path, world):
    sweep_file = tmp_path / "xattn_tiny.yaml"
    sweep_file.write_text(SWEEP)
    cmd = sweep_cmd(tmp_path, world, sweep_file)
    log = tmp_path / "first.log"
    with log.open("w") as out:  # a file, not a pipe: a full pipe would stall the sweep
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, target = time.monotonic() + 1800, None
        while time.monotonic() < deadline and proc.poll() is None and target is None:
            target = trial_under_way(tmp_path, complete_before=1)
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    assert target is not None, log.read_text()[-3000:]
    db = tmp_path / "out" / "study.db"
    study = load_study(db)
    before = {t.number: t for t in study.get_trials() if t.state.name == "COMPLETE"}
    assert len(before) == 1 and study.trials[target.number].state.name == "RUNNING"  # killed mid-trial

    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"1 of 4 trials done, retrying interrupted trial(s) [{target.number}]" in r.stdout
    study = optuna.load_study(study_name="xattn_tiny", storage=f"sqlite:///{db}")
    pair = lambda t: (t.params["model.num_cross_attn"], t.params["seed"])  # noqa: E731
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(map(pair, complete)) == [(1, 0), (1, 1), (2, 0), (2, 1)]  # each (point, seed) once
    for n, t in before.items():  # finished before the kill: kept, not run again
        assert study.trials[n].datetime_complete == t.datetime_complete
    after = [t for t in study.trials if t.number > target.number]
    assert not {pair(t) for t in after} & {pair(t) for t in before.values()}
    retry = next(t for t in after if t.user_attrs.get("retry_of") == target.number)
    assert pair(retry) == pair(target) and retry.state.name == "COMPLETE"
    assert [t.state.name for t in study.trials].count("FAIL") == 1 and len(study.trials) == 5
    assert all(t.user_attrs["seed"] == t.params["seed"] for t in complete)

    # the printed tables and the files: per trial, and per point the mean, 95% interval, n, paired difference
    assert "| trial | state | model.num_cross_attn | seed |" in r.stdout
    out = tmp_path / "out"
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG" and (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    trials = pd.read_csv(out / "results.csv")
    assert len(trials) == 5 and list(trials.columns[:4]) == ["trial", "state", "model.num_cross_attn", "seed"]
    intervals = pd.read_csv(out / "intervals.csv")
    done = trials[trials.state == "COMPLETE"]
    metric = "pretrain/test/i2t_R@1"
    for m in (1, 2):
        row = intervals[(intervals["model.num_cross_attn"] == m) & (intervals.metric == metric)].iloc[0]
        values = done[done["model.num_cross_attn"] == m].sort_values("seed")[metric].to_numpy()
        assert row["n"] == 2 and row["mean"] == pytest.approx(values.mean())
        if values[0] != values[1]:
            ci = stats.ttest_1samp(values, 0).confidence_interval()
            assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high))
    one, ref = (done[done["model.num_cross_attn"] == m].sort_values("seed")[metric].to_numpy() for m in (1, 2))
    row = intervals[(intervals["model.num_cross_attn"] == 1) & (intervals.metric == metric)].iloc[0]
    assert row["diff"] == pytest.approx((one - ref).mean()) and row["n_pairs"] == 2
    md = (out / "results.md").read_text()
    assert "mean [95% CI]" in md and "diff vs reference (model.num_cross_attn=2)" in md

    # MLflow: one parent (the aggregate table as artifacts and metrics), one child per trial
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("mammut_pl-sweeps")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("mammut_pl.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mammut_pl.kind") == "trial"]
    stages = [r for r in runs if r.data.tags.get("mammut_pl.kind") == "stage"]
    assert len(parents) == 1 and len(children) == 5
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "xattn_tiny.yaml", "results.md", "results.csv", "intervals.csv", "ablation.png", "pareto.png",
        "study_summary.json"}
    ref_mean = intervals[(intervals["model.num_cross_attn"] == 2) & (intervals.metric == metric)]["mean"].iloc[0]
    assert parent.data.metrics["num_cross_attn_2/pretrain/test/i2t_R1/mean"]  # MLflow names allow no "=" == pytest.approx(ref_mean)
    assert parent.data.metrics["num_cross_attn_1/pretrain/test/i2t_R1/n"] == 2
    by_trial = {int(c.data.tags["optuna.trial"]): c for c in children}
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    killed = by_trial[target.number]
    assert killed.info.status == "KILLED" and killed.data.tags["optuna.state"] == "FAIL"
    for t in complete:
        c = by_trial[t.number]
        assert c.info.status == "FINISHED" and c.data.tags["optuna.state"] == "COMPLETE"
        assert c.data.params["model.num_cross_attn"] == str(t.params["model.num_cross_attn"])
        assert c.data.params["seed"] == c.data.tags["mammut_pl.seed"] == str(t.params["seed"])
        assert c.data.metrics["pretrain/test/i2t_R1"] == pytest.approx(t.values[0])
        assert c.data.metrics["vqa/test/vqa_accuracy"] == pytest.approx(t.values[1])
        assert Path(c.data.tags["pretrain_checkpoint"]).is_file()
        mine = [s for s in stages if s.data.tags["mlflow.parentRunId"] == c.info.run_id]
        assert sorted(s.data.tags["task"] for s in mine) == ["pretrain", "vqa"]

    # the ablation notebook on this real store: every trial, the intervals over the 2 seeds
    executed = run_notebook(f"sqlite:///{tmp_path}/mlflow.db", "xattn_tiny", tmp_path / "nb")
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    assert not errors(nb)
    report = notebook_report(nb)
    assert set(report) == {"xattn_tiny"}
    assert set(report["xattn_tiny"].trials) == {t.number for t in study.trials}
    assert any("95% intervals over 2 seed(s)" in text for text in report["xattn_tiny"].texts)
    assert pngs(nb)


PRUNED = """
pretrain: demo
params:
  optim.lr: [0.001]
objectives:
  - {metric: pretrain/test/mean_R, direction: maximize}
sampler: grid
pruner: threshold
prune_metric: val/mean_R
prune_threshold: 101.0  # no model reaches it: the trial is pruned at its first validation
overrides:
  all: [trainer.max_time=null, trainer.enable_progress_bar=false, data.num_workers=0, data.batch_size=8,
        trainer.val_check_interval=2, trainer.max_steps=4, trainer.check_val_every_n_epoch=null]
"""


def test_pruned_trial_shows_as_pruned(tmp_path, world):
    sweep_file = tmp_path / "pruned.yaml"
    sweep_file.write_text(PRUNED)
    r = subprocess.run(sweep_cmd(tmp_path, world, sweep_file), cwd=tmp_path, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    study = optuna.load_study(study_name="pruned", storage=f"sqlite:///{tmp_path}/out/study.db")
    assert [t.state.name for t in study.trials] == ["PRUNED"]
    assert study.trials[0].intermediate_values  # it reported val/mean_R before being pruned
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("mammut_pl-sweeps")
    child = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("mammut_pl.kind") == "trial"][0]
    assert child.data.tags["optuna.state"] == "PRUNED" and child.info.status == "KILLED"
    assert json.loads((tmp_path / "out" / "study_summary.json").read_text())["states"] == {"PRUNED": 1}
