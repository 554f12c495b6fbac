"""End to end: `fit experiment=msrvtt_qa` (a subprocess, as a user runs it) and
`experiment=msrvtt_caption` (in process) on the tiny demo world, a corrupt video among the
clips: a few steps, metrics logged to MLflow, the results file written."""

import json
import subprocess
import sys

import pytest
from tests.helpers import demo_world_args, logged_runs

pytestmark = pytest.mark.e2e


def fit(tmp, world, *args):
    cmd = [sys.executable, "-m", "mammut_pl.fit", *demo_world_args(world, "msrvtt", tmp),
           "data.batch_size=4", "data.eval_batch_size=4", "trainer.log_every_n_steps=1", "video.num_frames=8", "video.frame_stride=4",
           "video.tube_specs=[4x4x4 4x16x16 0x0x0,8x2x2 4x16x16 0x4x4]", *args]
    return subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mammut_pl.data.demo import write_demo

    world = write_demo(tmp_path_factory.mktemp("video") / "world", tiny=True)
    # one training video is garbage: skipped and counted, the run goes on
    train = json.loads((world / "msrvtt" / "train_qa.json").read_text())
    (world / "msrvtt" / "videos" / f"video{train[0]['video_id']}.mp4").write_bytes(b"\x00garbage" * 100)
    return world


def runs(tmp):
    return logged_runs(tmp)


def test_msrvtt_qa_trains_and_logs(world, tmp_path):
    r = fit(tmp_path, world, "experiment=msrvtt_qa", "trainer.max_steps=3", "trainer.val_check_interval=3")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "MSRVTT-QA accuracy (test, top-1 exact match)" in r.stdout and "majority-answer baseline" in r.stdout
    client, found = runs(tmp_path)
    run = found[0]
    m = run.data.metrics
    for key in ("train/loss", "train/skipped_samples", "val/accuracy", "test/accuracy", "test/majority_baseline",
                "test/accuracy/which", "test/accuracy/what"):
        assert key in m, key
    assert m["train/skipped_samples"] >= 1  # the garbage video
    assert run.data.tags["task"] == "video_qa" and run.data.params["video.tubes"] == "True"
    results = json.loads(next((tmp_path / "outputs" / "msrvtt_qa").glob("*/msrvtt_qa_test_results.json")).read_text())
    test = json.loads((world / "msrvtt" / "test_qa.json").read_text())
    assert sorted(r["question_id"] for r in results) == sorted(q["id"] for q in test)
    assert "msrvtt_qa_test_results.json" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_msrvtt_caption_per_frame_baseline_in_process(world, tmp_path):
    """Captioning + 1k-A retrieval with the per-frame baseline (in process: no MLflow, one step)."""
    from mammut_pl import config as C
    from mammut_pl.runtime import run

    cfg = C.load("msrvtt_caption", [
        f"data.root={world}/msrvtt", f"data.tokenizer={world}/tokenizer.json", f"output_dir={tmp_path}",
        "mlflow.enabled=false", "data.num_workers=0", "data.batch_size=4", "data.eval_batch_size=8",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.max_steps=1",
        "trainer.val_check_interval=1", "data.msrvtt.max_eval_questions=4", "eval.max_new_tokens=3",
        "video.encoding=per_frame", "video.num_frames=4", "video.fps=0"])
    metrics = run(cfg, report=False)
    for key in ("train/caption_loss", "train/contrastive_loss", "val/CIDEr", "test/CIDEr", "test/BLEU4",
                "test/t2v_R@1", "test/t2v_R@5", "test/t2v_R@10", "test/v2t_R@1"):
        assert key in metrics, key
    assert 0 <= metrics["test/t2v_R@1"] <= metrics["test/t2v_R@10"] <= 100
