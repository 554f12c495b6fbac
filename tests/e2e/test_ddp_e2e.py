"""End to end: `python -m mammut_pl.fit ... trainer.devices=2 trainer.strategy=ddp` on CPU (gloo)
trains exactly like one process on the same global batch (2 ranks x 4 = 1 x 8, the same data
order): equal per-step losses (the contrastive loss over the gathered global batch, the caption
loss over its tokens) and equal final weights; and rank 0 alone writes: one run folder, one
last.ckpt, one MLflow run with one value per step, one report."""

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

pytestmark = [pytest.mark.e2e, pytest.mark.ddp]
STEPS = 3


def start_fit(tmp: Path, world: Path, *overrides: str) -> subprocess.Popen:
    # COCO pairs in EpochSampler order (rank r takes items r, r + W, ... of one permutation) and no
    # augmentation: 2 x 4 and 1 x 8 train on the same 8 pairs at every step
    args = [sys.executable, "-m", "mammut_pl.fit", "experiment=demo", "data.name=coco", f"data.root={world}/coco",
            "data.demo=false", f"data.tokenizer={world}/tokenizer.json", "data.augment=false", "data.num_workers=0",
            "optim.warmup_steps=0",
            f"trainer.max_steps={STEPS}", "trainer.max_time=null", "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=1", "trainer.accelerator=cpu", f"output_dir={tmp}/outputs",
            f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db", *overrides]
    tmp.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(args, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def only_run(tmp: Path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, [r.info.run_name for r in runs]  # not one per rank
    return client, runs[0]


def test_two_ranks_equal_one_process_on_the_same_global_batch_and_write_once(tmp_path, world):
    procs = {"ddp": start_fit(tmp_path / "ddp", world, "trainer.devices=2", "trainer.strategy=ddp",
                              "data.batch_size=4"),
             "one": start_fit(tmp_path / "one", world, "trainer.devices=1", "data.batch_size=8")}
    out = {name: p.communicate(timeout=1800) for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, f"{name}: {out[name][1][-3000:]}"
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out["ddp"][1]  # really two processes
    assert "terminate called" not in out["ddp"][1]  # no rank aborted at exit (both ranks write to this pipe)

    # rank 0 writes, once: one run folder with one last.ckpt, one report
    ddp = tmp_path / "ddp"
    runs = list((ddp / "outputs" / "demo").iterdir())
    assert len(runs) == 1, runs
    assert sorted(p.name for p in (runs[0] / "checkpoints").iterdir()) == ["last.ckpt"]
    assert out["ddp"][0].count("zero-shot retrieval image -> text") == 1

    # one MLflow run, params once, one value per step (mean over the ranks = the global batch's)
    histories, params = {}, {}
    for name in ("ddp", "one"):
        client, run = only_run(tmp_path / name)
        params[name] = run.data.params
        histories[name] = {k: [m.value for m in client.get_metric_history(run.info.run_id, k)]
                           for k in ("train/loss", "train/contrastive_loss", "train/caption_loss")}
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(STEPS)), steps
        if name == "ddp":
            assert (runs[0] / "mlflow_run_id").read_text() == run.info.run_id
    assert params["ddp"]["trainer.devices"] == "2" and params["ddp"]["data.batch_size"] == "4"
    assert set(params["ddp"]) == set(params["one"]) | {"trainer.strategy"}
    assert histories["one"]["train/loss"][-1] < histories["one"]["train/loss"][0] - 1  # it trains
    for key, values in histories["ddp"].items():
        assert values == pytest.approx(histories["one"][key], rel=1e-5), key

    # the same weights after the same optimizer steps
    def weights(root: Path) -> dict:
        (ckpt,) = root.glob("outputs/demo/*/checkpoints/last.ckpt")
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        assert state["global_step"] == STEPS
        return state["state_dict"]

    a, b = weights(ddp), weights(tmp_path / "one")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_detection_evaluation_on_two_ranks_equals_one_process(tmp_path, world):
    """`evaluate task=detection trainer.devices=2`: each rank detects on its share of the images, the
    task gathers them (the sampler's padding repeats an image: 15 images on 2 ranks; kept once) and
    both ranks score the same detections; rank 0 alone writes and prints. Same results JSON, same
    LVIS AP as one process."""
    import json

    from tests.helpers import SMALL_MODEL
    from tests.helpers.checkpoints import write_fresh_checkpoint

    from mammut_pl import config as config_lib

    cfg = config_lib.load("lvis", [f"data.root={world}/lvis", f"data.tokenizer={world}/tokenizer.json",
                                   *SMALL_MODEL, "detection.image_size=32"])
    ckpt = write_fresh_checkpoint(cfg, tmp_path)

    def start(name: str, *extra: str) -> subprocess.Popen:
        (tmp_path / name).mkdir()
        args = [sys.executable, "-m", "mammut_pl.evaluate", "task=detection", f"ckpt={ckpt}", f"out={tmp_path / name}",
                "data.lvis.max_eval_images=15", "data.eval_batch_size=4", "data.num_workers=0",
                "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", *extra]
        return subprocess.Popen(args, cwd=tmp_path / name, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    procs = {"ddp": start("ddp", "trainer.devices=2", "trainer.strategy=ddp"), "one": start("one")}
    out = {name: p.communicate(timeout=900) for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, f"{name}: {out[name][1][-3000:]}"
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out["ddp"][1]  # really two processes
    assert "terminate called" not in out["ddp"][1]  # no rank aborted at exit (both ranks write to this pipe)
    assert out["ddp"][0].count("LVIS box AP") == out["one"][0].count("LVIS box AP") == 1  # printed once

    reports = {n: json.loads((tmp_path / n / "detection_lvis_test.json").read_text()) for n in procs}
    results = {n: json.loads((tmp_path / n / "lvis_v1_val_results.json").read_text()) for n in procs}
    assert len({r["image_id"] for r in results["one"]}) == 15
    key = lambda r: (r["image_id"], r["category_id"], tuple(r["bbox"]), r["score"])  # noqa: E731
    assert sorted(map(key, results["ddp"])) == sorted(map(key, results["one"]))  # no image lost or doubled
    assert reports["ddp"]["metrics"] == pytest.approx(reports["one"]["metrics"], abs=1e-9)
