"""End to end: a sweep with 2 worker processes sharing one Optuna study through an RDB storage
(PostgreSQL: `.ci/run` starts one and exports MAMMUT_TEST_POSTGRES_URL) or a JournalStorage file,
logging to an MLflow tracking server (`make mlflow-server`) from both workers at once. Checked:
every grid point ran exactly once, the study holds the expected trials, MLflow holds one parent
run, one child run per trial and each trial's training run under it."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import mlflow
import optuna
import pytest
from tests.helpers import ROOT, free_port


pytestmark = pytest.mark.e2e
POSTGRES_URL = os.environ.get("MAMMUT_TEST_POSTGRES_URL", "")

SWEEP = """
description: two grid points, pretraining only, for the scale-out tests
pretrain: demo
vqa: ""
params:
  model.num_cross_attn: [1, 2]
objectives:
  - {metric: pretrain/test/i2t_R@1, direction: maximize}
sampler: grid
overrides:
  all: [trainer.max_time=null, trainer.enable_progress_bar=false, data.num_workers=0, data.batch_size=8,
        trainer.max_steps=2, trainer.val_check_interval=2]
"""


def run_sweep(tmp: Path, world: Path, *settings: str) -> tuple[str, subprocess.CompletedProcess]:
    sweep_file = tmp / "scale_tiny.yaml"
    sweep_file.write_text(SWEEP)
    study = f"scale-{uuid.uuid4().hex[:8]}"  # the PostgreSQL database outlives one test run
    cmd = [sys.executable, "-m", "mammut_pl.sweep", f"sweep={sweep_file}", "sweep.workers=2",
           f"sweep.study_name={study}", f"sweep.out={tmp}/out", f"pretrain.data.root={world}/webdata",
           f"pretrain.data.webdata.val_root={world}/coco", f"data.tokenizer={world}/tokenizer.json", *settings]
    return study, subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=1800)


def check_sweep(study_name: str, storage, tracking_uri: str, out: Path) -> None:
    study = optuna.load_study(study_name=study_name, storage=storage)
    assert len(study.trials) == 2 and {t.state.name for t in study.trials} == {"COMPLETE"}
    assert sorted(t.params["model.num_cross_attn"] for t in study.trials) == [1, 2]  # each grid point once
    for n in (0, 1):  # and each trial trained once
        assert len(list((out / "trials" / f"trial-{n:03d}" / "demo").glob("*/checkpoints/last.ckpt"))) == 1

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("mammut_pl-sweeps")
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=100)
            if r.data.tags.get("mammut_pl.study") == study_name or r.data.tags.get("mammut_pl.kind") == "stage"]
    parents = [r for r in runs if r.data.tags.get("mammut_pl.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mammut_pl.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert "results.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert sorted(c.data.tags["optuna.trial"] for c in children) == ["0", "1"]
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert c.info.status == "FINISHED" and c.data.tags["optuna.state"] == "COMPLETE"
        trial = study.trials[int(c.data.tags["optuna.trial"])]
        assert c.data.params["model.num_cross_attn"] == str(trial.params["model.num_cross_attn"])
        assert c.data.metrics["pretrain/test/i2t_R1"] == pytest.approx(trial.values[0])
        stages = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == c.info.run_id]
        assert [s.data.tags["task"] for s in stages] == ["pretrain"]
        assert "config.yaml" in {a.path for a in client.list_artifacts(stages[0].info.run_id)}


@pytest.mark.skipif(not POSTGRES_URL, reason="MAMMUT_TEST_POSTGRES_URL is not set (`.ci/run` starts a "
                    "PostgreSQL server and sets it; or export postgresql://USER@HOST:PORT/DB)")
def test_two_workers_share_a_postgresql_study(tmp_path, world):
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    study, r = run_sweep(tmp_path, world, f"sweep.storage={POSTGRES_URL}", f"sweep.tracking_uri={tracking}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (tmp_path / "out" / "study.db").exists() and not (tmp_path / "out" / "study.journal").exists()
    check_sweep(study, POSTGRES_URL, tracking, tmp_path / "out")


@pytest.fixture
def mlflow_server(tmp_path):
    """`make mlflow-server` on a free port (SQLite backend and artifacts under tmp_path)."""
    port = free_port()
    env = {**os.environ, "MLFLOW_PORT": str(port), "MLFLOW_BACKEND": f"sqlite:///{tmp_path}/server.db",
           "MLFLOW_ARTIFACTS": str(tmp_path / "artifacts"), "MLFLOW_WORKERS": "1"}
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(["make", "--no-print-directory", "mlflow-server"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # its own group: stopped as one
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300  # a loaded 2-core machine can take a minute to import MLflow
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{url}/health", timeout=5).close()
                break
            except OSError:
                assert time.time() < deadline, "no /health after 300 s: " + (tmp_path / "server.log").read_text()[-3000:]
                time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_two_workers_log_to_an_mlflow_tracking_server(tmp_path, world, mlflow_server):
    dry = subprocess.run(["make", "-n", "mlflow-server"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "--host 127.0.0.1 " in dry  # loopback unless MLFLOW_HOST says otherwise
    study, r = run_sweep(tmp_path, world, f"sweep.tracking_uri={mlflow_server}")  # a JournalStorage study
    assert r.returncode == 0, r.stderr[-3000:]
    journal = tmp_path / "out" / "study.journal"
    from optuna.storages.journal import JournalFileBackend

    check_sweep(study, optuna.storages.JournalStorage(JournalFileBackend(str(journal))), mlflow_server,
                tmp_path / "out")
    # the artifacts went through the server into its artifact root, not into the clients' folders
    assert list((tmp_path / "artifacts").rglob("results.md")) and list((tmp_path / "artifacts").rglob("config.yaml"))
    assert not (tmp_path / "mlruns").exists()
