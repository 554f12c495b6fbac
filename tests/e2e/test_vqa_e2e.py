"""End to end: `fit experiment=vqa` on the tiny demo world logs the VQA accuracy (overall,
per answer type, majority baseline) to MLflow and writes the results JSON; `predict`
writes the official test-dev results file and answers questions about single images."""

import json
import subprocess
import sys

import pytest
from tests.helpers import demo_world_args, logged_runs

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from mammut_pl.data.demo import write_demo

    tmp = tmp_path_factory.mktemp("vqa")
    world = write_demo(tmp / "world", tiny=True)
    args = [sys.executable, "-m", "mammut_pl.fit", "experiment=vqa", *demo_world_args(world, "vqav2", tmp),
            "data.batch_size=8", "trainer.log_every_n_steps=1", "trainer.max_steps=6", "trainer.val_check_interval=3"]
    r = subprocess.run(args, cwd=tmp, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp, world, r.stdout


def predict(tmp, *args):
    return subprocess.run([sys.executable, "-m", "mammut_pl.predict", *args], cwd=tmp,
                          capture_output=True, text=True, timeout=600)


def test_fit_logs_vqa_accuracy_and_writes_results(trained):
    tmp, world, stdout = trained
    assert "VQA accuracy (val2014)" in stdout and "majority-answer baseline" in stdout
    client, (run, *_) = logged_runs(tmp)
    metrics = run.data.metrics
    for key in ("val/vqa_accuracy", "test/vqa_accuracy", "val/majority_baseline", "test/vqa_accuracy/yes/no",
                "test/vqa_accuracy/number", "test/vqa_accuracy/other"):
        assert key in metrics, key
    assert run.data.tags["task"] == "vqa"
    results_files = list((tmp / "outputs" / "vqa").glob("*/vqa_val2014_results.json"))
    assert len(results_files) == 1
    results = json.loads(results_files[0].read_text())
    questions = json.loads((world / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"]
    assert sorted(r["question_id"] for r in results) == sorted(q["question_id"] for q in questions)
    assert all(set(r) == {"question_id", "answer"} and isinstance(r["answer"], str) for r in results)
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "vqa_val2014_results.json" in artifacts


def test_predict_writes_the_official_test_dev_file(trained):
    tmp, world, _ = trained
    ckpt = next((tmp / "outputs" / "vqa").glob("*/checkpoints/last.ckpt"))
    out = tmp / "test-dev.json"
    r = predict(tmp, "experiment=vqa", f"ckpt={ckpt}", "split=test-dev2015", f"out={out}",
                f"data.root={world}/vqav2", "data.num_workers=0")
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(out.read_text())
    questions = json.loads((world / "vqav2" / "v2_OpenEnded_mscoco_test-dev2015_questions.json").read_text())["questions"]
    assert sorted(r["question_id"] for r in results) == sorted(q["question_id"] for q in questions)


def test_predict_answers_and_captions_images(trained):
    tmp, world, _ = trained
    ckpt = next((tmp / "outputs" / "vqa").glob("*/checkpoints/last.ckpt"))
    folder = world / "vqav2" / "val2014"
    r = predict(tmp, f"ckpt={ckpt}", f"image={folder}", "question=how many shapes are there?",
                f"out={tmp}/answers.json")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((tmp / "answers.json").read_text())
    assert len(rows) == len(list(folder.glob("*.jpg")))
    assert all(row["question"] == "how many shapes are there?" and "answer" in row for row in rows)
    assert sum(" -> " in line for line in r.stdout.splitlines()) == len(rows)
    # errors: one clear line, exit 2
    r = predict(tmp, f"ckpt={tmp}/missing.ckpt", f"image={folder}")
    assert r.returncode == 2 and "missing.ckpt" in r.stderr and "Traceback" not in r.stderr
    r = predict(tmp, f"ckpt={ckpt}", f"image={tmp}/nothing-here")
    assert r.returncode == 2 and "nothing-here" in r.stderr
