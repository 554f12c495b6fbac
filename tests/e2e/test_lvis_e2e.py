"""End to end: `fit experiment=lvis` on the tiny demo world trains on the base categories, scores
every category with the official LVIS protocol, logs AP / APr / APc / APf to MLflow and writes
the results JSON (at most 300 detections per image) as an artifact; `model.init_from` starts it
from a pretraining checkpoint."""

import json
import subprocess
import sys

import pytest
from tests.helpers import demo_world_args, logged_runs

pytestmark = pytest.mark.e2e


def fit(tmp, world, *extra):
    args = [sys.executable, "-m", "mammut_pl.fit", "experiment=lvis", *demo_world_args(world, "lvis", tmp),
            "data.batch_size=4", "data.eval_batch_size=8", "trainer.log_every_n_steps=1", "trainer.max_steps=4", "trainer.val_check_interval=2",
            "detection.image_size=64", *extra]
    return subprocess.run(args, cwd=tmp, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from mammut_pl.data.demo import write_demo

    tmp = tmp_path_factory.mktemp("lvis")
    world = write_demo(tmp / "world", tiny=True)
    r = fit(tmp, world)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp, world, r.stdout


def test_fit_logs_lvis_ap_and_writes_results(trained):
    tmp, world, stdout = trained
    assert "LVIS box AP (test)" in stdout and "APr" in stdout
    client, (run, *_) = logged_runs(tmp)
    metrics = run.data.metrics
    for key in ("test/AP", "test/APr", "test/APc", "test/APf", "test/AP50", "val/AP", "val/APr", "train/loss",
                "train/giou_loss"):
        assert key in metrics, key
    gt = json.loads((world / "lvis" / "lvis_v1_val.json").read_text())
    assert any(c["frequency"] == "r" for c in gt["categories"])
    assert metrics["test/APr"] >= 0  # rare categories have val boxes: scored, not -1
    assert run.data.tags["task"] == "detection"
    files = list((tmp / "outputs" / "lvis").glob("*/lvis_v1_val_results.json"))
    assert len(files) == 1
    results = json.loads(files[0].read_text())
    assert results and all(set(r) == {"image_id", "category_id", "bbox", "score"} for r in results)
    per_image = {}
    for r in results:
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
    assert max(per_image.values()) <= 300 and set(per_image) <= {im["id"] for im in gt["images"]}
    assert {r["category_id"] for r in results} <= {c["id"] for c in gt["categories"]}
    from mammut_pl.metrics import lvis_eval
    assert lvis_eval(gt, results)["AP"] == pytest.approx(metrics["test/AP"], abs=1e-6)
    assert "lvis_v1_val_results.json" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_init_from_a_pretraining_checkpoint(trained):
    """The detection run's own checkpoint stands in for a pretraining one: its model.* tensors load."""
    tmp, world, _ = trained
    ckpt = next((tmp / "outputs" / "lvis").glob("*/checkpoints/last.ckpt"))
    r = fit(tmp, world, f"model.init_from={ckpt}", "trainer.max_steps=1", "trainer.val_check_interval=1",
            "mlflow.enabled=false")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "model.init_from=" in r.stderr and "loaded" in r.stderr
