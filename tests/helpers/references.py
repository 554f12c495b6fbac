"""Independent references that several test modules check against: retrieval recall from a brute-force
argsort over embeddings of the loaded model (the COCO split read straight from its JSON and image
files), and the official LVIS evaluation (the `lvis` package's LVISEval) with the noisy detections it
is compared on."""

from __future__ import annotations

import copy
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from mammut_pl.checkpoint import load_task
from mammut_pl.data.transforms import image_transform, load_image


def karpathy(world: Path, split: str) -> list[dict]:
    """The split's records, read straight from the file."""
    images = json.loads((world / "coco" / "dataset_coco.json").read_text())["images"]
    return [im for im in images if im["split"] == split]


def load_split_images(world: Path, split: str, size: int) -> tuple[list[int], torch.Tensor]:
    records = karpathy(world, split)
    transform = image_transform(size, train=False)
    images = [transform(load_image(str(world / "coco" / r["filepath"] / r["filename"]))) for r in records]
    return [r["cocoid"] for r in records], torch.stack(images)


def brute_force_recall(world: Path, ckpt: Path, split: str = "test") -> dict[str, float]:
    """R@K from the full similarity matrix and argsort, embeddings straight from the loaded model."""
    cfg, module, tok = load_task(ckpt, task="pretrain")
    _, images = load_split_images(world, split, cfg.model.image_size)
    records = karpathy(world, split)
    captions = [s["raw"] for r in records for s in r["sentences"]]
    owner = torch.tensor([i for i, r in enumerate(records) for _ in r["sentences"]])
    with torch.no_grad():
        sims = module.model.encode_image(images) @ module.model.encode_text(tok(captions, cfg.model.context_length)).T
    i2t = sims.argsort(dim=1, descending=True)  # (N_img, N_txt)
    t2i = sims.T.argsort(dim=1, descending=True)  # (N_txt, N_img)
    out = {}
    for k in (1, 5, 10):
        hits = [bool((owner[i2t[i, :k]] == i).any()) for i in range(len(records))]  # ANY of its captions
        out[f"i2t_R@{k}"] = 100 * sum(hits) / len(hits)
    for k in (1, 5, 10):
        hits = [bool((t2i[t, :k] == owner[t]).any()) for t in range(len(captions))]
        out[f"t2i_R@{k}"] = 100 * sum(hits) / len(hits)
    out["mean_R"] = sum(out.values()) / 6
    return out


def official_lvis_eval(gt: dict, dets: list[dict]) -> dict:
    """The lvis package's LVISEval (0.5.3). It imports OpenCV for its visualiser only and uses
    np.float (removed in NumPy 1.24): both are supplied here, the evaluation code is untouched."""
    if "cv2" not in sys.modules:
        try:
            import cv2  # noqa: F401
        except ImportError:
            sys.modules["cv2"] = types.ModuleType("cv2")
    if not hasattr(np, "float"):
        np.float = float  # type: ignore[attr-defined]
    from lvis import LVIS, LVISEval, LVISResults

    lvis_gt = LVIS.__new__(LVIS)
    import logging

    lvis_gt.logger = logging.getLogger("lvis")
    lvis_gt.dataset = copy.deepcopy(gt)
    lvis_gt._create_index()
    ev = LVISEval(lvis_gt, LVISResults(lvis_gt, copy.deepcopy(dets)), iou_type="bbox")
    ev.run()
    return {k: float(v) for k, v in ev.get_results().items()}


def assert_equal_results(ours: dict, ref: dict) -> None:
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR@300", "ARs@300", "ARm@300",
                "ARl@300"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), (key, ours[key], ref[key])


def noisy_detections(gt: dict, rng: np.random.Generator, per_image_extra: int = 4) -> list[dict]:
    """Jittered copies of the gt boxes (some with the wrong category), random boxes, scores with ties."""
    cat_ids = [c["id"] for c in gt["categories"]]
    dets = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        for _ in range(int(rng.integers(0, 3))):
            j = rng.normal(0, 0.15, 4) * [w, h, w, h]
            cat = a["category_id"] if rng.random() < 0.8 else int(rng.choice(cat_ids))
            dets.append({"image_id": a["image_id"], "category_id": cat,
                         "bbox": [float(x + j[0]), float(y + j[1]), float(max(w + j[2], 0.5)), float(max(h + j[3], 0.5))],
                         "score": float(np.round(rng.random(), 2))})  # rounded: ties between detections
    for img in gt["images"]:
        W, H = img["width"], img["height"]
        for _ in range(per_image_extra):
            x, y = rng.uniform(0, W * 0.8), rng.uniform(0, H * 0.8)
            dets.append({"image_id": img["id"], "category_id": int(rng.choice(cat_ids)),
                         "bbox": [float(x), float(y), float(rng.uniform(1, W - x)), float(rng.uniform(1, H - y))],
                         "score": float(np.round(rng.random(), 2))})
    order = rng.permutation(len(dets))
    return [dets[i] for i in order]
