"""End to end: a real sweep on the tiny demo world (pretraining + VQA fine-tune per trial),
SIGKILLed in the middle of a trial and run again: the study continues, the interrupted
trial is retried, every grid point completes exactly once; MLflow holds 1 parent + one
child per trial with the objectives; the ablation notebook runs on the store; a pruned
trial shows as pruned."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest

from mammut_pl.tracking import sqlite_creation_lock
from tests.notebook_utils import errors, notebook_report, pngs, run_notebook

pytestmark = pytest.mark.e2e

SWEEP = """
description: tiny cross-attention sweep for the tests
pretrain: demo
vqa: vqa
params:
  model.num_cross_attn: [1, 2]
objectives:
  - {metric: pretrain/test/i2t_R@1, direction: maximize}
  - {metric: vqa/test/vqa_accuracy, direction: maximize}
record: [pretrain/test/t2i_R@1]
sampler: grid
overrides:
  all: [trainer.max_time=null, trainer.enable_progress_bar=false, data.num_workers=0, data.batch_size=8,
        trainer.val_check_interval=2, trainer.max_steps=4]
"""


def sweep_cmd(tmp: Path, world: Path, sweep_file: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mammut_pl.sweep", f"sweep={sweep_file}", f"sweep.out={tmp}/out",
            f"sweep.tracking_uri=sqlite:///{tmp}/mlflow.db", f"pretrain.data.root={world}/webdata",
            f"pretrain.data.val_root={world}/coco", f"vqa.data.root={world}/vqav2",
            f"data.tokenizer={world}/tokenizer.json", *extra]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mammut_pl.data.demo import write_demo

    return write_demo(tmp_path_factory.mktemp("world"), tiny=True)


def running_trial(db: Path) -> int | None:
    if not db.exists():
        return None
    try:  # under the sweep's creation lock: opening a store the sweep is still creating would race it
        with sqlite_creation_lock(f"sqlite:///{db}"):
            study = optuna.load_study(study_name="xattn_tiny", storage=f"sqlite:///{db}")
    except Exception:  # noqa: BLE001 - not created yet
        return None
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    return running[0].number if running else None


def test_killed_sweep_continues_and_mlflow_holds_parent_and_children(tmp_path, world):
    sweep_file = tmp_path / "xattn_tiny.yaml"
    sweep_file.write_text(SWEEP)
    cmd = sweep_cmd(tmp_path, world, sweep_file)
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # kill -9 once the first trial is done and the second one is under way
    db, deadline, killed_trial = tmp_path / "out" / "study.db", time.time() + 900, None
    while time.time() < deadline and proc.poll() is None:
        number = running_trial(db)
        if number == 1 and (tmp_path / "out" / "trials" / "trial-001").exists():
            time.sleep(2)  # inside the trial's pretraining
            proc.send_signal(signal.SIGKILL)
            killed_trial = number
            break
        time.sleep(0.5)
    proc.wait(timeout=60)
    assert killed_trial == 1, proc.stdout.read()[-3000:]

    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 of 2 trials done, retrying interrupted trial(s) [1]" in r.stdout
    study = optuna.load_study(study_name="xattn_tiny", storage=f"sqlite:///{db}")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["model.num_cross_attn"] for t in complete) == [1, 2]  # each grid point once
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert study.trials[2].user_attrs["retry_of"] == 1
    assert study.trials[2].params == study.trials[1].params

    # the printed table and the files
    assert "| trial | state | model.num_cross_attn |" in r.stdout
    out = tmp_path / "out"
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    csv = (out / "results.csv").read_text().splitlines()
    assert len(csv) == 4 and csv[0].startswith("trial,state,model.num_cross_attn,pretrain/test/i2t_R@1")

    # MLflow: one parent, one child per trial, stage runs nested under their trial
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("mammut_pl-sweeps")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("mammut_pl.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mammut_pl.kind") == "trial"]
    stages = [r for r in runs if r.data.tags.get("mammut_pl.kind") == "stage"]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "xattn_tiny.yaml", "results.md", "results.csv", "ablation.png", "study_summary.json"}
    by_trial = {int(c.data.tags["optuna.trial"]): c for c in children}
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert by_trial[1].info.status == "KILLED" and by_trial[1].data.tags["optuna.state"] == "FAIL"
    for n in (0, 2):
        c = by_trial[n]
        assert c.info.status == "FINISHED" and c.data.tags["optuna.state"] == "COMPLETE"
        assert c.data.params["model.num_cross_attn"] == str(study.trials[n].params["model.num_cross_attn"])
        assert c.data.metrics["pretrain/test/i2t_R1"] == pytest.approx(study.trials[n].values[0])
        assert c.data.metrics["vqa/test/vqa_accuracy"] == pytest.approx(study.trials[n].values[1])
        assert Path(c.data.tags["pretrain_checkpoint"]).is_file()
        mine = [s for s in stages if s.data.tags["mlflow.parentRunId"] == c.info.run_id]
        assert sorted(s.data.tags["task"] for s in mine) == ["pretrain", "vqa"]

    # the ablation notebook on this real store
    executed = run_notebook(f"sqlite:///{tmp_path}/mlflow.db", "xattn_tiny", tmp_path / "nb")
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    assert not errors(nb)
    report = notebook_report(nb)
    assert set(report) == {"xattn_tiny"}
    assert set(report["xattn_tiny"].trials) == {0, 1, 2}
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
