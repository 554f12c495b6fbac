"""Captioning task and the evaluate CLI, on the tiny demo world.

References are independent of the code under test: captions scored by hand with
caption_scores on references read straight from the Karpathy JSON, images loaded
straight from their files, and retrieval recall from a brute-force argsort over
embeddings computed directly with the loaded model."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from mammut_pl import config as config_lib
from mammut_pl import evaluate
from mammut_pl.runtime import build_datamodule, build_tokenizer_for
from mammut_pl.metrics.captioning import caption_scores
from mammut_pl.tasks import TASKS, CaptioningTask
from tests.helpers import SMALL_MODEL, demo_world_args, logged_runs
from tests.helpers.references import brute_force_recall, karpathy, load_split_images

def small_config(world: Path, experiment: str = "coco_captioning", *overrides: str) -> config_lib.Config:
    data = ([f"data.webdata.val_root={world}/coco"] if experiment == "demo" else [f"data.root={world}/coco"])
    return config_lib.load(experiment, [*data, f"data.tokenizer={world}/tokenizer.json", "data.num_workers=0",
                                        "data.eval_batch_size=4", "data.batch_size=8", *SMALL_MODEL, *overrides])


def build(world: Path, *overrides: str):
    cfg = small_config(world, "coco_captioning", *overrides)
    tok = build_tokenizer_for(cfg)
    task = CaptioningTask(config_lib.to_dict(cfg), tok)
    return cfg, task, build_datamodule(cfg, tok)


def eval_trainer(root: Path) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root))


# --- a content-dependent stand-in for decoding ---------------------------------------------------
CANDIDATES = ["a red circle on the left", "a picture of a small blue square", "there is a large green star",
              "a yellow triangle at the top"]  # 4 captions for 6 images: some images must share one


def pick(image: torch.Tensor) -> str:
    """A caption chosen by the pixels, so that it can be recomputed from the image file alone."""
    return CANDIDATES[int(abs(image.double().sum().item()) * 1000) % len(CANDIDATES)]


def stub_generate(task: CaptioningTask, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = task.cfg.model.context_length

    def generate(images, **kwargs):
        return task.tokenizer([pick(im) for im in images], ctx)[:, 1:]  # new tokens: no begin token

    monkeypatch.setattr(task.model, "generate", generate)


# --- training loss --------------------------------------------------------------------------------
def test_caption_loss_equals_cross_entropy_on_full_logits(world):
    cfg, task, dm = build(world)
    batch = next(iter(dm.train_dataloader()))
    images, tokens = batch["images"], batch["tokens"]
    assert (tokens == cfg.model.pad_id).any()  # padding present: the packed path must skip it
    got = task.caption_loss(images, tokens)
    logits = task.model.caption_logits(task.model.image_tokens(images), tokens)  # (B, T, V), unpacked
    targets = tokens[:, 1:].masked_fill(tokens[:, 1:] == cfg.model.pad_id, -100)
    want = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    got.backward()
    assert task.model.text.token_embed.weight.grad.abs().sum() > 0


def test_captioning_is_a_registered_task():
    assert TASKS["captioning"] is CaptioningTask


# --- validation / test metrics ---------------------------------------------------------------------
def test_val_metrics_equal_caption_scores_by_hand(world, tmp_path, monkeypatch):
    cfg, task, dm = build(world)
    stub_generate(task, monkeypatch)
    got = eval_trainer(tmp_path).validate(task, datamodule=dm, verbose=False)[0]

    ids, images = load_split_images(world, "val", cfg.model.image_size)
    predictions = {i: pick(im) for i, im in zip(ids, images)}
    references = {r["cocoid"]: [s["raw"] for s in r["sentences"]] for r in karpathy(world, "val")}
    want = caption_scores(predictions, references)
    distinct = len(set(predictions.values())) / len(predictions)
    assert len(ids) == 6 and distinct < 1  # 2 batches of 4 and 2; a shared caption
    assert want["CIDEr"] > 0 and want["BLEU-4"] > 0  # informative
    for name, key in (("BLEU-1", "val/BLEU1"), ("BLEU-2", "val/BLEU2"), ("BLEU-3", "val/BLEU3"),
                      ("BLEU-4", "val/BLEU4"), ("CIDEr", "val/CIDEr")):
        assert got[key] == pytest.approx(want[name], rel=1e-6), key
    assert got["val/distinct_captions"] == pytest.approx(distinct)
    assert 0 < got["val/caption_loss"] < 20  # teacher-forced, on every reference


def test_test_writes_the_official_results_json(world, tmp_path, monkeypatch):
    cfg, task, dm = build(world)
    stub_generate(task, monkeypatch)
    got = eval_trainer(tmp_path).test(task, datamodule=dm, verbose=False)[0]
    assert {"test/CIDEr", "test/BLEU4", "test/distinct_captions"} <= set(got)

    results = json.loads((tmp_path / "captions_test_results.json").read_text())
    ids, images = load_split_images(world, "test", cfg.model.image_size)
    assert isinstance(results, list) and len(results) == len(ids) == 6
    for row in results:
        assert set(row) == {"image_id", "caption"}
        assert type(row["image_id"]) is int and isinstance(row["caption"], str)
    assert {r["image_id"]: r["caption"] for r in results} == {i: pick(im) for i, im in zip(ids, images)}
    assert task.results_path == tmp_path / "captions_test_results.json"


def test_captions_decode_with_the_eval_settings(world):
    cfg, task, dm = build(world, "eval.num_beams=2", "eval.max_new_tokens=5", "eval.length_penalty=0.5")
    images = next(iter(dm.val_dataloader()))["images"]
    calls = []
    generate = task.model.generate

    def spy(images, **kwargs):
        calls.append(kwargs)
        return generate(images, **kwargs)

    task.model.generate = spy
    captions = task.captions(images)
    assert calls == [{"max_new_tokens": 5, "num_beams": 2, "length_penalty": 0.5}]
    want = generate(images, num_beams=2, max_new_tokens=5, length_penalty=0.5)
    assert captions == [task.tokenizer.decode(row) for row in want]
    assert all(len(c.split()) <= 5 for c in captions)


# --- evaluate: retrieval against a brute-force argsort ----------------------------------------------
def save_checkpoint(world: Path, path: Path, experiment: str) -> Path:
    """A suite checkpoint (as fit writes it) of a freshly initialised model."""
    cfg = small_config(world, experiment)
    build_tokenizer_for(cfg)
    task = TASKS[cfg.task](config_lib.to_dict(cfg))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": {"cfg": config_lib.to_dict(cfg)}}, path)
    return path


@pytest.mark.parametrize("experiment", ["coco_captioning", "demo"])  # a COCO run, and a pretraining run's val_root
def test_evaluate_retrieval_equals_brute_force(world, tmp_path, capsys, experiment):
    ckpt = save_checkpoint(world, tmp_path / "run" / "checkpoints" / "last.ckpt", experiment)
    assert evaluate.main(["task=retrieval", f"ckpt={ckpt}", "data=coco",
                          "trainer.enable_progress_bar=false", "data.num_workers=0"]) == 0
    report = json.loads((tmp_path / "run" / "eval" / "retrieval_coco_test.json").read_text())  # next to the run
    want = brute_force_recall(world, ckpt)
    assert report["images"] == 6 and report["captions"] == 30 and report["split"] == "test"
    assert report["metrics"] == pytest.approx(want, abs=1e-4)  # float32 logging; one hit = 3.3
    assert 0 < want["mean_R"] < 100  # informative
    out = capsys.readouterr().out
    assert "image -> text" in out and "text -> image" in out and f"{want['i2t_R@5']:7.1f}" in out


def test_evaluate_captioning_writes_scores_and_results(world, tmp_path, capsys):
    ckpt = save_checkpoint(world, tmp_path / "ckpt.ckpt", "coco_captioning")
    out = tmp_path / "out"
    assert evaluate.main(["task=captioning", f"ckpt={ckpt}", "split=val", f"out={out}", "eval.max_new_tokens=4",
                          "trainer.enable_progress_bar=false", "data.num_workers=0"]) == 0
    report = json.loads((out / "captioning_coco_val.json").read_text())
    results = json.loads((out / "captions_val_results.json").read_text())
    assert report["images"] == len(results) == 6 and report["decoding"]["max_new_tokens"] == 4
    assert {r["image_id"] for r in results} == {r["cocoid"] for r in karpathy(world, "val")}
    captions = {r["image_id"]: r["caption"] for r in results}
    references = {r["cocoid"]: [s["raw"] for s in r["sentences"]] for r in karpathy(world, "val")}
    want = caption_scores(captions, references)
    assert report["metrics"]["CIDEr"] == pytest.approx(want["CIDEr"])
    assert report["metrics"]["BLEU4"] == pytest.approx(want["BLEU-4"])
    assert "CIDEr" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["task=retrieval", "ckpt=/no/such.ckpt"], "checkpoint not found"),
    (["task=retrival", "ckpt=x.ckpt"], "expected one of retrieval, captioning"),
    (["task=retrieval"], "ckpt=PATH is required"),
    (["task=retrieval", "ckpt=x.ckpt", "data=imagenet"], "expected one of coco, flickr30k"),
    (["task=retrieval", "CKPT", "data.rooot=x"], "Did you mean `data.root`"),
    (["task=retrieval", "CKPT", "data=flickr30k"], "dataset_flickr30k.json"),
])
def test_evaluate_errors_are_one_line_and_exit_2(world, tmp_path, capsys, args, message):
    ckpt = tmp_path / "c.ckpt"
    if "CKPT" in args:
        save_checkpoint(world, ckpt, "coco_captioning")
    args = [f"ckpt={ckpt}" if a == "CKPT" else a for a in args]
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not (tmp_path / "eval").exists()


# --- end to end: fit experiment=coco_captioning, then evaluate its checkpoint ----------------------
@pytest.fixture(scope="module")
def captioning_run(world, tmp_path_factory):
    """`python -m mammut_pl.fit experiment=coco_captioning` (its main, in this process: no second
    start-up of torch/Lightning/MLflow) for 4 steps on the tiny world: (tmp dir, stdout)."""
    from mammut_pl import fit

    tmp = tmp_path_factory.mktemp("captioning_run")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = fit.main(["experiment=coco_captioning", *demo_world_args(world, "coco", tmp), "data.batch_size=8",
                       "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1"])
    assert rc == 0, stdout.getvalue()[-3000:]
    return tmp, stdout.getvalue()


@pytest.mark.e2e
def test_fit_coco_captioning_logs_cider_to_mlflow(captioning_run):
    tmp, stdout = captioning_run
    client, (run, *_) = logged_runs(tmp)
    assert run.data.tags["task"] == "captioning"
    assert len(client.get_metric_history(run.info.run_id, "val/CIDEr")) == 2  # at steps 2 and 4
    logged = {"val/BLEU4", "val/distinct_captions", "val/caption_loss", "test/CIDEr", "train/caption_loss"}
    assert logged <= set(run.data.metrics)
    assert "captions_test_results.json" in [a.path for a in client.list_artifacts(run.info.run_id)]
    (run_dir,) = (tmp / "outputs" / "coco_captioning").iterdir()
    assert len(json.loads((run_dir / "captions_test_results.json").read_text())) == 6
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()  # monitored on val/CIDEr
    assert "captioning (greedy) on 6 test images: BLEU-4" in stdout and "generated:" in stdout


@pytest.mark.e2e
def test_evaluate_retrieval_of_a_trained_run_equals_brute_force(world, captioning_run, tmp_path):
    tmp, _ = captioning_run
    (ckpt,) = (tmp / "outputs" / "coco_captioning").glob("*/checkpoints/last.ckpt")
    assert evaluate.main(["task=retrieval", f"ckpt={ckpt}", "data=coco", f"out={tmp_path}",
                          "trainer.enable_progress_bar=false", "data.num_workers=0"]) == 0
    report = json.loads((tmp_path / "retrieval_coco_test.json").read_text())
    assert report["metrics"] == pytest.approx(brute_force_recall(world, ckpt), abs=1e-4)
