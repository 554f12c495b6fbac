"""The LVIS reader and `lvis_eval` on the REAL LVIS files, where a machine has them (no download
happens here): set MAMMUT_LVIS_ROOT to the folder holding lvis_v1_val.json and/or
lvis_v0.5_val.json (and, optionally, the COCO image folders train2017/ val2017/), then

    MAMMUT_LVIS_ROOT=/data/lvis .venv/bin/python -m pytest tests/integration/test_real_lvis.py -v

Skipped (with this reason) everywhere else; the demo-format files are covered by test_lvis_*.py."""

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mammut_pl.data.lvis import read_lvis
from mammut_pl.metrics import lvis_eval
from tests.helpers.references import assert_equal_results, noisy_detections, official_lvis_eval

ROOT = os.environ.get("MAMMUT_LVIS_ROOT", "")
FILES = {"lvis_v1_val.json": ("v1", 1203), "lvis_v0.5_val.json": ("v0.5", 1230)}
pytestmark = pytest.mark.skipif(not ROOT, reason="set MAMMUT_LVIS_ROOT=/path/to/lvis (real LVIS files) to run")


def present(name: str) -> Path:
    path = Path(ROOT) / name
    if not path.is_file():
        pytest.skip(f"{path} is not there")
    return path


@pytest.mark.parametrize("name", list(FILES))
def test_reader_loads_the_real_file(name):
    raw = json.loads(present(name).read_text())
    split = read_lvis(ROOT, name)
    version, n_categories = FILES[name]
    assert split.version == version
    assert len(split.categories) == len(raw["categories"]) == n_categories
    assert Counter(c["frequency"] for c in split.categories) == Counter(c["frequency"] for c in raw["categories"])
    assert len(split.images) == len(raw["images"])
    kept = sum(len(im.category_ids) for im in split.images)
    assert kept + split.skipped["degenerate_boxes"] == len(raw["annotations"])
    by_id = {im.id: im for im in split.images}
    for rec in raw["images"][:200]:  # the image file comes from coco_url (v1) or file_name (v0.5)
        im = by_id[rec["id"]]
        assert (im.width, im.height) == (rec["width"], rec["height"])
        if "file_name" in rec:  # v0.5: COCO_val2014_000000397133.jpg -> {split}2017/000000397133.jpg
            expected = rec["file_name"][-16:] if rec["file_name"].startswith("COCO_") else rec["file_name"]
        else:
            expected = "/".join(rec["coco_url"].split("/")[-2:])
        assert im.path.endswith(expected), (im.path, expected)
    folders = {Path(im.path).parent for im in split.images}
    if all(f.is_dir() for f in folders):  # with the COCO images: every referenced file exists
        missing = [im.path for im in split.images if not Path(im.path).is_file()]
        assert not missing, f"{len(missing)} images missing, e.g. {missing[:3]}"


@pytest.mark.parametrize("name", list(FILES))
def test_lvis_eval_equals_lvis_eval_on_the_real_file(name):
    """On 300 real val images (all categories, their federated labels) with noisy detections."""
    gt = json.loads(present(name).read_text())
    rng = np.random.default_rng(0)
    ids = [im["id"] for im in gt["images"]]
    keep = {int(i) for i in rng.choice(ids, min(300, len(ids)), replace=False)}
    sub = {**gt, "images": [im for im in gt["images"] if im["id"] in keep],
           "annotations": [a for a in gt["annotations"] if a["image_id"] in keep]}
    dets = noisy_detections(sub, rng)
    assert_equal_results(lvis_eval(sub, dets), official_lvis_eval(sub, dets))
