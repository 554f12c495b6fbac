"""End to end: `python -m mammut_pl.fit experiment=demo` on the tiny demo world writes an
MLflow run (params, per-step metrics, config artifact, tags), checkpoints, resumes into the
same run, and learns (retrieval above chance)."""

import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import demo_world_args, logged_runs

pytestmark = pytest.mark.e2e


def fit(tmp: Path, world: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "mammut_pl.fit", "experiment=demo", *demo_world_args(world, "webdata", tmp),
            f"data.webdata.val_root={world}/coco", "trainer.log_every_n_steps=1", *overrides]
    return subprocess.run(args, cwd=tmp, capture_output=True, text=True, timeout=1800)


def test_fit_logs_to_mlflow_and_resumes_into_the_same_run(tmp_path, world):
    r = fit(tmp_path, world, "trainer.max_steps=6", "trainer.val_check_interval=3", "data.batch_size=8")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "zero-shot retrieval image -> text" in r.stdout and "generated:" in r.stdout
    client, runs = logged_runs(tmp_path)
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["model.width"] == "192" and run.data.params["loss.contrastive"] == "focal"
    assert run.data.tags["experiment"] == "demo" and len(run.data.tags["git_commit"]) >= 7
    loss_history = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(loss_history) >= 2  # per step, not just a final value
    assert "val/i2t_R1" in run.data.metrics and "test/t2i_R10" in run.data.metrics
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "config.yaml" in artifacts
    ckpts = list((tmp_path / "outputs" / "demo").glob("*/checkpoints/last.ckpt"))
    assert len(ckpts) == 1

    # resume: continues to max_steps=10 from step 6, logging into the SAME MLflow run
    r = fit(tmp_path, world, "trainer.max_steps=10", "trainer.val_check_interval=3", "data.batch_size=8",
            "ckpt_path=last")
    assert r.returncode == 0, r.stderr[-3000:]
    runs = client.search_runs([client.get_experiment_by_name("mammut_pl").experiment_id])
    assert len(runs) == 1
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert max(steps) >= 9


def test_fit_bad_override_fails_before_work(tmp_path, world):
    r = fit(tmp_path, world, "model.num_cross_attn=7")
    assert r.returncode == 2
    assert "model.num_cross_attn=7" in r.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()


def test_short_pretraining_beats_chance(tmp_path_factory):
    """250 steps on the full demo world: zero-shot retrieval on 100 held-out test images
    (500 captions) clearly above chance. Chance R@k is k% text->image and ~k% image->text
    (5 captions among 500), so the chance mean of R@1/5/10 both ways is ~5.3."""
    from mammut_pl.data.demo import write_demo

    world = write_demo(tmp_path_factory.mktemp("full_world"))
    tmp = tmp_path_factory.mktemp("learn")
    r = fit(tmp, world, "trainer.max_steps=250", "trainer.max_time=null", "trainer.val_check_interval=125",
            "data.batch_size=32",
            "optim.warmup_steps=20", "data.num_workers=1", "trainer.log_every_n_steps=10")
    assert r.returncode == 0, r.stderr[-3000:]
    client, (run, *_) = logged_runs(tmp)
    m = run.data.metrics
    recalls = {k: v for k, v in m.items() if k.startswith("test/") and "_R" in k}
    chance_mean = (1 + 5 + 10) / 3
    assert m["test/mean_R"] > 1.5 * chance_mean, recalls
    assert m["test/t2i_R10"] > 1.5 * 10 and m["test/i2t_R10"] > 1.5 * 10, recalls
    # captioning learned the language of the world: the loss fell well below uniform (log V)
    first = client.get_metric_history(run.info.run_id, "train/caption_loss")[0].value
    assert m["train/caption_loss"] < 0.5 * first
