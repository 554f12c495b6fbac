"""Faults, end to end on the tiny demo world with a small model: SIGKILL and resume (same
weights, optimizer, scheduler and MLflow run as an uninterrupted run), truncated and
object-carrying checkpoints, non-finite losses, and an MLflow server that is unreachable
at start or goes away mid-run."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from tests.helpers import ROOT

pytestmark = pytest.mark.e2e
import torch

from mammut_pl import fit, runtime
from mammut_pl.resume import read_checkpoint

SMALL = ["model.encoder=test_vit", "model.image_size=32", "model.width=32", "model.depth=2", "model.heads=2",
         "model.num_cross_attn=1", "model.embed_dim=32", "data.batch_size=4", "data.num_workers=0",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1",
         "trainer.max_time=null"]


def args(world: Path, out: Path, *overrides: str, val: bool = False, mlflow_db: Path | None = None) -> list[str]:
    return ["experiment=demo", f"data.root={world}/webdata", f"data.tokenizer={world}/tokenizer.json",
            f"data.webdata.val_root={world / 'coco' if val else repr('')}", f"output_dir={out}",
            *([f"mlflow.tracking_uri=sqlite:///{mlflow_db}"] if mlflow_db else ["mlflow.enabled=false"]),
            *SMALL, *overrides]


def start(argv: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mammut_pl.fit", *argv], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def last_ckpt(out: Path) -> Path:
    found = sorted(out.glob("demo/*/checkpoints/last.ckpt"))
    assert len(found) == 1, found
    return found[0]


# --- kill -9 and resume ------------------------------------------------------------------------
# dropout draws from the RNG every step, validation runs in between, 12 steps cross two epoch ends
# (20 web samples / batch 4 = 5 steps per epoch): all of it must continue exactly.
RUN = ["trainer.max_steps=12", "checkpoint_every_n_steps=2", "trainer.val_check_interval=4", "model.dropout=0.1"]


# The victim signals itself at the first training batch that starts after its first last.ckpt is on
# disk: an event of the run, not a moment seen by a polling test, so a busy machine can neither let
# the run finish first nor move the step it stops at.
VICTIM = """
import os, sys
from pathlib import Path
from lightning.pytorch.callbacks import Callback
from mammut_pl import fit, runtime

class SignalAfterFirstCheckpoint(Callback):
    def __init__(self, sig):
        self.sig, self.sent = sig, False

    def on_train_batch_start(self, trainer, *args):
        if not self.sent and (Path(trainer.checkpoint_callback.dirpath) / "last.ckpt").is_file():
            self.sent = True
            os.kill(os.getpid(), self.sig)

sig = int(sys.argv[1])
make = runtime.build_callbacks
runtime.build_callbacks = lambda *a, **k: make(*a, **k) + [SignalAfterFirstCheckpoint(sig)]
sys.exit(fit.main(sys.argv[2:]))
"""


def start_victim(argv: list[str], cwd: Path, sig: int) -> subprocess.Popen:
    """`fit` that sends itself `sig` at the first step after its first checkpoint."""
    return subprocess.Popen([sys.executable, "-c", VICTIM, str(int(sig)), *argv], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def same_training_state(a: dict, b: dict) -> list[str]:
    """What differs between two checkpoints' weights, optimizer, scheduler and data position."""
    diff = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    for i, (sa, sb) in enumerate(zip(a["optimizer_states"][0]["state"].values(),
                                     b["optimizer_states"][0]["state"].values())):
        diff += [f"optimizer state {i}.{k}" for k in sa if not torch.equal(sa[k], sb[k])]
    diff += [k for k in ("global_step", "lr_schedulers", "WebDataModule") if a[k] != b[k]]
    return diff


def test_kill_then_resume_equals_the_uninterrupted_run(tmp_path, world, capsys):
    """kill -9 in the step after a checkpoint and SIGTERM (preemption: saves
    where it stops), then ckpt_path=last: the final weights, optimizer, scheduler and data position
    equal an uninterrupted run's, and the SIGKILLed run goes on in the same MLflow run."""
    db = tmp_path / "mlflow.db"
    ref = start(args(world, tmp_path / "ref", *RUN, val=True), tmp_path)  # uninterrupted, alongside
    kill9_args = args(world, tmp_path / "kill9", *RUN, val=True, mlflow_db=db)
    term_args = args(world, tmp_path / "term", *RUN, "checkpoint_every_n_steps=5", val=True)
    # kill -9 in the step after the first checkpoint (step 2); SIGTERM in the step after the one at step 5
    kill9 = start_victim(kill9_args, tmp_path, signal.SIGKILL)
    term = start_victim(term_args, tmp_path, signal.SIGTERM)
    _, kill9_err = kill9.communicate(timeout=1800)
    _, term_err = term.communicate(timeout=1800)
    assert kill9.returncode == -signal.SIGKILL, kill9_err[-3000:]
    assert term.returncode == 128 + 15, term_err[-3000:]
    killed_at = read_checkpoint(last_ckpt(tmp_path / "kill9"))["global_step"]
    termed_at = read_checkpoint(last_ckpt(tmp_path / "term"))["global_step"]
    # killed while step 3 ran: step 2's checkpoint; SIGTERM after step 5's: Lightning ends that step, saves
    assert killed_at == 2 and 5 < termed_at < 12
    assert f"SIGTERM: saved {last_ckpt(tmp_path / 'term')} at global step {termed_at}" in term_err

    resumed = [start([*a, "ckpt_path=last"], tmp_path) for a in (kill9_args, term_args)]
    for proc in (*resumed, ref):
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]

    final = read_checkpoint(last_ckpt(tmp_path / "ref"))
    assert final["global_step"] == 12
    for name, at in (("kill9", killed_at), ("term", termed_at)):
        differ = same_training_state(final, read_checkpoint(last_ckpt(tmp_path / name)))
        assert not differ, f"{name}: resumed from step {at}, {len(differ)} differ, e.g. {differ[:4]}"
        assert not list((tmp_path / name).glob("demo/*/checkpoints/.*"))  # no temporary left behind

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("mammut_pl").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the same MLflow run, finished
    steps = {m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")}
    assert {0, killed_at, 11} <= steps

    # a truncated last.ckpt (say, copied by hand): one clear error naming it, exit code 2
    ckpt = last_ckpt(tmp_path / "kill9")
    ckpt.write_bytes(ckpt.read_bytes()[:100_000])
    code = fit.main([*kill9_args, "ckpt_path=last"])
    err = capsys.readouterr().err
    assert code == 2 and f"error: {ckpt}: truncated" in err and "Traceback" not in err


# --- in-process runs (faster) -----------------------------------------------------------------------
def run_fit(capsys, world, out, *overrides, mlflow_db=None):
    code = fit.main(args(world, out, *overrides, mlflow_db=mlflow_db))
    return code, capsys.readouterr().err


def test_unusable_resume_checkpoints_stop_before_training(tmp_path, world, capsys, monkeypatch):
    from tests.helpers.checkpoints import evil_checkpoint

    marker = tmp_path / "code_ran"
    evil = evil_checkpoint(tmp_path / "evil.ckpt", marker)
    code, err = run_fit(capsys, world, tmp_path / "out", "trainer.max_steps=2", f"ckpt_path={evil}")
    assert code == 2 and f"{evil}: refused: it holds pickled Python objects" in err
    # Lightning's own resume load refuses it too (skip our early check): weights_only in our CheckpointIO
    monkeypatch.setattr(runtime, "check_resume_checkpoint", lambda *a, **k: None)
    code, err = run_fit(capsys, world, tmp_path / "out", "trainer.max_steps=2", f"ckpt_path={evil}")
    assert code == 2 and f"{evil}: refused" in err
    assert not marker.exists()
    # and model.init_from
    code, err = run_fit(capsys, world, tmp_path / "out", "trainer.max_steps=2", f"model.init_from={evil}")
    assert code == 2 and "model.init_from" in err and not marker.exists()
    # a truncated file given by path
    junk = tmp_path / "checkpoints" / "last.ckpt"
    junk.parent.mkdir()
    junk.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    code, err = run_fit(capsys, world, tmp_path / "out", f"ckpt_path={junk}")
    assert code == 2 and f"{junk}: truncated" in err


def nan_at(monkeypatch, step):
    from mammut_pl.tasks.pretrain import PretrainTask

    original = PretrainTask.losses

    def losses(self, *args, **kwargs):  # whatever the step passes (images, tokens, text_index, ...)
        out = original(self, *args, **kwargs)
        if self.training and self.global_step == step:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(PretrainTask, "losses", losses)


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, world, capsys,
                                                                                 monkeypatch):
    nan_at(monkeypatch, 5)
    code, err = run_fit(capsys, world, tmp_path, "trainer.max_steps=8", "checkpoint_every_n_steps=2")
    assert code == 1
    assert "non-finite loss (nan) at global step 5: stopping (set loss.nonfinite=skip" in err
    ckpt = read_checkpoint(last_ckpt(tmp_path))
    assert ckpt["global_step"] == 4  # the last good one
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_nonfinite_loss_skip_goes_on(tmp_path, world, capsys, monkeypatch, caplog):
    nan_at(monkeypatch, 3)
    with caplog.at_level(logging.WARNING):
        code, err = run_fit(capsys, world, tmp_path, "trainer.max_steps=6", "checkpoint_every_n_steps=3",
                            "loss.nonfinite=skip")
    assert code == 0, err[-2000:]
    assert "non-finite loss (nan) at global step 3: skipping this step" in caplog.text
    ckpt = read_checkpoint(last_ckpt(tmp_path))
    assert ckpt["global_step"] == 6
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_mlflow_unreachable_at_start_is_one_clear_error_within_seconds(tmp_path, world, capsys):
    t0 = time.time()
    argv = [a for a in args(world, tmp_path / "out", "trainer.max_steps=2") if not a.startswith("mlflow.")]
    code = fit.main([*argv, "mlflow.tracking_uri=http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert time.time() - t0 < 15
    assert code == 2
    assert "no MLflow tracking server answers at http://127.0.0.1:9" in err and "mlflow.enabled=false" in err
    assert not (tmp_path / "out").exists()  # nothing was built or written


def test_mlflow_failing_mid_run_does_not_stop_training(tmp_path, world, capsys, monkeypatch, caplog):
    """The tracking store starts failing after a few calls: training and checkpointing finish, the
    failure is reported once when it starts and summed up at the end."""
    calls = {"n": 0}
    original = mlflow.tracking.MlflowClient.log_batch

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > 3:
            raise mlflow.exceptions.MlflowException("API request failed: connection refused (injected)")
        return original(self, *a, **k)

    monkeypatch.setattr(mlflow.tracking.MlflowClient, "log_batch", flaky)
    with caplog.at_level(logging.ERROR):
        code, err = run_fit(capsys, world, tmp_path, "trainer.max_steps=6", "checkpoint_every_n_steps=2",
                            mlflow_db=tmp_path / "mlflow.db")
    assert code == 0, err[-2000:]
    assert read_checkpoint(last_ckpt(tmp_path))["global_step"] == 6
    reports = [r.getMessage() for r in caplog.records if "MLflow tracking failed" in r.getMessage()]
    assert len(reports) == 2, reports  # when it starts failing, and the summary at the end
    assert "connection refused (injected)" in reports[0] and "training and checkpointing go on" in reports[0]
    assert "logging call(s) were dropped" in reports[1]
