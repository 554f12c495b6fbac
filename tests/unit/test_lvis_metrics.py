"""mammut_pl.metrics.lvis_eval equals the official LVIS evaluation (the `lvis` package's LVISEval,
iou_type="bbox") on the same detections: on the demo LVIS v1 val file and on a hand-made LVIS v1
file with federated labels (neg / not-exhaustive categories), ignored boxes, every area range,
tied scores, more than 300 detections on an image and detections of unverified categories."""

import json

import numpy as np
import pytest

from mammut_pl.metrics import lvis_eval
from tests.helpers.references import assert_equal_results, noisy_detections, official_lvis_eval


@pytest.fixture(scope="module")
def demo_lvis(tmp_path_factory):
    """The demo world's LVIS folder at full demo size (r/c/f by LVIS' image-count thresholds)."""
    from mammut_pl.data.demo import DEMO_SIZES, write_lvis

    root = tmp_path_factory.mktemp("lvis") / "lvis"
    write_lvis(root, 0, DEMO_SIZES)
    return root


def test_equals_lvis_eval_on_the_demo_val_file(demo_lvis):
    gt = json.loads((demo_lvis / "lvis_v1_val.json").read_text())
    rng = np.random.default_rng(0)
    dets = noisy_detections(gt, rng)
    ours, ref = lvis_eval(gt, dets), official_lvis_eval(gt, dets)
    assert_equal_results(ours, ref)
    assert ref["AP"] > 0.1 and ref["APr"] > -1  # a meaningful case: rare categories are scored
    # the path form reads the same file
    assert lvis_eval(demo_lvis / "lvis_v1_val.json", dets) == ours


def hand_made_lvis() -> dict:
    """LVIS v1 layout; boxes of every area range; federated labels; one ignored box."""
    cats = [{"id": i, "name": n, "synonyms": [n], "def": n, "synset": f"{n}.n.01", "frequency": f,
             "image_count": 1, "instance_count": 1}
            for i, (n, f) in enumerate([("apple", "f"), ("boat", "c"), ("cat", "r"), ("dog", "f"), ("egg", "r")], 1)]
    images, anns = [], []
    rng = np.random.default_rng(1)
    ann_id = 1
    for i in range(1, 9):
        img = {"id": i * 10, "width": 400, "height": 300, "coco_url": f"http://images.cocodataset.org/val2017/{i:012d}.jpg",
               "neg_category_ids": [], "not_exhaustive_category_ids": [], "license": 1,
               "flickr_url": "", "date_captured": ""}
        present = sorted(int(c) for c in rng.choice([1, 2, 3, 4, 5], int(rng.integers(1, 4)), replace=False))
        absent = [c for c in [1, 2, 3, 4, 5] if c not in present]
        img["neg_category_ids"] = absent[: int(rng.integers(0, len(absent) + 1))]
        img["not_exhaustive_category_ids"] = [present[0]] if i % 3 == 0 else []
        for c in present:
            for _ in range(int(rng.integers(1, 4))):
                side = float(rng.choice([10, 20, 40, 70, 120, 150]))  # small, medium and large areas
                x, y = rng.uniform(0, 400 - side), rng.uniform(0, 300 - min(side, 290))
                a = {"id": ann_id, "image_id": img["id"], "category_id": c, "bbox": [x, y, side, min(side, 290.0)],
                     "area": side * min(side, 290.0) * 0.8, "segmentation": [[x, y, x + side, y, x + side, y + side]]}
                if ann_id == 5:
                    a["ignore"] = 1
                anns.append(a)
                ann_id += 1
        images.append(img)
    return {"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": cats}


def test_equals_lvis_eval_on_a_hand_made_federated_file():
    gt = hand_made_lvis()
    assert any(img["neg_category_ids"] for img in gt["images"])
    assert any(img["not_exhaustive_category_ids"] for img in gt["images"])
    for seed in range(4):
        rng = np.random.default_rng(seed)
        dets = noisy_detections(gt, rng, per_image_extra=6)
        # > 300 detections on one image: only the 300 best count
        img = gt["images"][0]["id"]
        dets += [{"image_id": img, "category_id": 1 + k % 5, "bbox": [k % 300, k % 200, 30.0, 30.0],
                  "score": float(np.round(rng.random() * 0.3, 2))} for k in range(320)]
        ours, ref = lvis_eval(gt, dets), official_lvis_eval(gt, dets)
        assert_equal_results(ours, ref)
        assert ours["APs"] > -1 and ours["APm"] > -1 and ours["APl"] > -1


def test_perfect_and_federated_cases_by_hand():
    gt = hand_made_lvis()
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt["annotations"]]
    assert lvis_eval(gt, perfect)["AP"] == pytest.approx(1.0)
    # a confident detection of a category the image is not verified for (neither positive nor
    # negative) is not counted: AP stays 1
    img = next(i for i in gt["images"] if len(i["neg_category_ids"]) + len({a["category_id"] for a in gt["annotations"]
                                                                             if a["image_id"] == i["id"]}) < 5)
    known = set(img["neg_category_ids"]) | {a["category_id"] for a in gt["annotations"] if a["image_id"] == img["id"]}
    unverified = next(c for c in range(1, 6) if c not in known)
    extra = {"image_id": img["id"], "category_id": unverified, "bbox": [0, 0, 50, 50], "score": 2.0}
    assert lvis_eval(gt, perfect + [extra])["AP"] == pytest.approx(1.0)
    # the same detection on a negative category is a false positive ranked first: AP drops
    neg_img = next(i for i in gt["images"] if i["neg_category_ids"])
    fp = {"image_id": neg_img["id"], "category_id": neg_img["neg_category_ids"][0], "bbox": [0, 0, 50, 50], "score": 2.0}
    assert lvis_eval(gt, perfect + [fp])["AP"] < 1.0
    with pytest.raises(ValueError, match="image_id 999"):
        lvis_eval(gt, [{"image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}])
