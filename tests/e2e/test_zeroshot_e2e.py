"""`python -m mammut_pl.evaluate task=zeroshot` end to end: on a checkpoint of a tiny pretraining run (whose
fit report printed the same top-1 from the validation callback) and on the openMaMMUT fixture folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.helpers import ROOT, SHARED_FIXTURES, demo_world_args

pytestmark = pytest.mark.e2e
FIXTURE = SHARED_FIXTURES / "openmammut" / "tiny_mlp"
SMALL = ["model.width=64", "model.depth=2", "model.heads=2", "model.num_cross_attn=1", "model.embed_dim=32",
         "model.encoder_kwargs.depth=1"]


def python(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=1200, env=env)


def test_fit_logs_zeroshot_and_evaluate_scores_the_checkpoint_the_same(tmp_path, world):
    r = python("mammut_pl.fit", "experiment=demo", *demo_world_args(world, "webdata", tmp_path, mlflow=False),
               f"data.webdata.val_root={world}/coco", "trainer.max_steps=4",
               "trainer.val_check_interval=2", "data.batch_size=8", *SMALL, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    printed = re.search(r"zero-shot classification \(35 classes, [^)]*\): top-1 ([\d.]+)", r.stdout)
    assert printed, r.stdout[-2000:]
    assert "val zero-shot: 35 images, 35 classes x 5 templates" in r.stderr  # the validation callback ran
    ckpt = next((tmp_path / "outputs" / "demo").glob("*/checkpoints/last.ckpt"))
    # the run's own zero-shot folder and templates (from its stored config), then another template set
    r = python("mammut_pl.evaluate", "task=zeroshot", f"ckpt={ckpt}", "data.num_workers=0", f"out={tmp_path}/ev",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "ev" / "zeroshot_zeroshot_val.json").read_text())
    assert report["images"] == 35 and report["classes"] == 35 and report["num_templates"] == 5
    assert report["templates"].endswith("templates.txt") and report["classnames"] == "folder names"
    # last.ckpt holds the weights the post-training test run scored: the same top-1 as the fit report
    assert f"{report['metrics']['top1']:.1f}" == printed.group(1)
    assert len(report["per_class"]) == 35 and {c["images"] for c in report["per_class"]} == {1}
    assert "top-1" in r.stdout and "written to" in r.stdout
    # errors name the file
    (tmp_path / "names.txt").write_text("only one\n")
    r = python("mammut_pl.evaluate", "task=zeroshot", f"ckpt={ckpt}", f"classnames={tmp_path}/names.txt",
               f"data.root={world}/zeroshot/val", cwd=tmp_path)
    assert r.returncode == 2 and f"{tmp_path}/names.txt: 1 class names for 35 class folders" in r.stderr


def load_openmammut_or_skip():
    try:
        from mammut_pl.model import load_openmammut
    except ImportError:
        pytest.skip("load_openmammut not available")
    return load_openmammut


def test_evaluate_openmammut_folder(tmp_path, world):
    if not (FIXTURE / "open_clip_config.json").is_file():  # as tests/integration/test_openmammut.py
        pytest.skip(f"shared openMaMMUT fixture missing: {FIXTURE} (see ../shared/fixtures/openmammut/README.md)")
    load_openmammut = load_openmammut_or_skip()
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from torchvision.datasets import ImageFolder

    r = python("mammut_pl.evaluate", "task=zeroshot", f"ckpt={FIXTURE}", f"data.root={world}/zeroshot/val",
               f"templates={world}/zeroshot/templates.txt", "data.num_workers=0", f"out={tmp_path}/ev", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "ev" / "zeroshot_zeroshot_val.json").read_text())
    assert report["model"] == "openMaMMUT folder" and report["images"] == 35
    # the same with open_clip's classifier, tokenizer and preprocessing (32 px, the fixture's size)
    model = load_openmammut(FIXTURE).eval()
    tok = open_clip.get_tokenizer(f"local-dir:{FIXTURE}")
    names = [f.replace("_", " ") for f in sorted(p.name for p in (world / "zeroshot" / "val").iterdir())]
    templates = (world / "zeroshot" / "templates.txt").read_text().split("\n")[:-1]
    with torch.no_grad():
        classifier = open_clip.build_zero_shot_classifier(model, tok, names, templates)
        data = ImageFolder(str(world / "zeroshot" / "val"), image_transform_v2(PreprocessCfg(size=32), is_train=False))
        images = torch.stack([x for x, _ in data])
        labels = torch.tensor([y for _, y in data])
        pred = (model.encode_image(images) @ classifier).topk(5, dim=1).indices
    assert images.shape[-1] == 32
    assert report["metrics"]["top1"] == pytest.approx(100 * (pred[:, 0] == labels).float().mean().item(), abs=1e-4)
    assert report["metrics"]["top5"] == pytest.approx(100 * (pred == labels[:, None]).any(1).float().mean().item(),
                                                      abs=1e-4)
