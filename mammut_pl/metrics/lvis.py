"""LVIS box AP: the official LVIS protocol (the `lvis` package's LVISEval, iou_type="bbox").

    lvis_eval(gt, detections) -> {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf",
                                  "AR@300", "ARs@300", "ARm@300", "ARl@300"}

`gt` is an LVIS annotation file (path) or its loaded JSON; `detections` the results format:
[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]. The protocol, step by step as in
`lvis/eval.py` (LVIS 0.5.3), so the numbers are the official ones (tests/unit/test_lvis_metrics.py
compares them with LVISEval itself):

- at most 300 detections per image (the highest scores; LVISResults.limit_dets_per_image);
- federated labels: a detection of category c on image i counts only if c is annotated on i
  (a positive) or listed in i's `neg_category_ids`; otherwise it is dropped;
- an unmatched detection of a category in i's `not_exhaustive_category_ids` is ignored;
- greedy matching per (image, category) by score at IoU 0.50:0.05:0.95 (pycocotools' box IoU),
  101-point interpolated precision per category, area ranges all / small / medium / large;
- AP = mean over categories (and IoUs) of the precision that exists; APr/APc/APf over the
  categories of each `frequency` ('r', 'c', 'f'); -1 where no category has a value.

Unlike LVISEval, this walks only the (image, category) pairs that hold a box (LVISEval visits
every pair: 20k images x 1203 categories on LVIS val), skips in the matching the detections that
overlap no box enough to match (they change nothing), and needs no OpenCV: about 2-3x faster
than LVISEval (200 images x 300 detections: 10 s vs 20 s on a loaded 2-core CPU).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RNG = [[0**2, 1e5**2], [0**2, 32**2], [32**2, 96**2], [96**2, 1e5**2]]
AREA_LBL = ["all", "small", "medium", "large"]
FREQUENCIES = ["r", "c", "f"]
MAX_DETS = 300
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def load_gt(gt: str | Path | dict[str, Any]) -> dict[str, Any]:
    if isinstance(gt, dict):
        return gt
    path = Path(gt)
    if not path.is_file():
        raise FileNotFoundError(f"LVIS annotation file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON (LVIS annotation file): {err}") from None


def limit_dets_per_image(dets: list[dict[str, Any]], max_dets: int) -> list[dict[str, Any]]:
    """LVISResults.limit_dets_per_image: images in order of first appearance; an image with more
    than max_dets detections keeps its highest-scoring ones (stable sort)."""
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for d in dets:
        by_image[d["image_id"]].append(d)
    for img, ds in by_image.items():
        if len(ds) > max_dets:
            by_image[img] = sorted(ds, key=lambda d: d["score"], reverse=True)[:max_dets]
    return [d for ds in by_image.values() for d in ds]


def _match(ious: np.ndarray, gt_ig: np.ndarray, gt_ids: list[int], dt_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching of LVISEval.evaluate_img (detections by score, gts ignore-last):
    (dt_m, dt_ig) of shape (T, D): the matched gt id (0 = none) and whether that gt is ignored."""
    T, D, G = len(IOU_THRS), len(dt_ids), len(gt_ids)
    gt_m = np.zeros((T, G))
    dt_m = np.zeros((T, D))
    dt_ig = np.zeros((T, D))
    if len(ious) == 0 or G == 0:
        return dt_m, dt_ig
    best = ious.max(axis=1)  # a detection below a threshold with every gt changes nothing there: skipped
    for t, thr in enumerate(IOU_THRS):
        thr = min([thr, 1 - 1e-10])
        for d in np.nonzero(best >= thr)[0]:
            iou = thr
            m = -1
            for g in range(G):
                if gt_m[t, g] > 0:
                    continue
                if m > -1 and gt_ig[m] == 0 and gt_ig[g] == 1:
                    break
                if ious[d, g] < iou:
                    continue
                iou = ious[d, g]
                m = g
            if m == -1:
                continue
            dt_ig[t, d] = gt_ig[m]
            dt_m[t, d] = gt_ids[m]
            gt_m[t, m] = dt_ids[d]
    return dt_m, dt_ig


def lvis_eval(gt: str | Path | dict[str, Any], detections: list[dict[str, Any]],
              max_dets: int = MAX_DETS) -> dict[str, float]:
    """Box AP of `detections` on the LVIS annotations `gt` (official LVIS protocol)."""
    data = load_gt(gt)
    images = {img["id"]: img for img in data["images"]}
    cat_ids, freq_groups = _categories(data)
    cat_index = {c: k for k, c in enumerate(cat_ids)}
    dts = _prepare_detections(detections, images, max_dets)
    gts, dts_by = _federated_pairs(data, images, cat_index, dts)
    not_exhaustive = {i: set(img.get("not_exhaustive_category_ids", [])) for i, img in images.items()}
    evals = _evaluate_pairs(gts, dts_by, cat_index, not_exhaustive)
    precision, recall = _accumulate(evals, len(cat_ids))

    def summarize(kind: str, iou_thr: float | None = None, area: str = "all", group: int | None = None) -> float:
        aidx = [i for i, lbl in enumerate(AREA_LBL) if lbl == area]
        s = precision if kind == "ap" else recall
        if iou_thr is not None:
            s = s[np.where(iou_thr == IOU_THRS)[0]]
        if kind == "ap":
            s = s[:, :, freq_groups[group], aidx] if group is not None else s[:, :, :, aidx]
        else:
            s = s[:, :, aidx]
        return float(np.mean(s[s > -1])) if len(s[s > -1]) else -1.0

    out = {"AP": summarize("ap"), "AP50": summarize("ap", iou_thr=0.50), "AP75": summarize("ap", iou_thr=0.75),
           "APs": summarize("ap", area="small"), "APm": summarize("ap", area="medium"),
           "APl": summarize("ap", area="large"), "APr": summarize("ap", group=0), "APc": summarize("ap", group=1),
           "APf": summarize("ap", group=2), f"AR@{max_dets}": summarize("ar")}
    for area in ("small", "medium", "large"):
        out[f"AR{area[0]}@{max_dets}"] = summarize("ar", area=area)
    return out


def _categories(data: dict[str, Any]) -> tuple[list[int], list[list[int]]]:
    """The category ids in id order, and the indices (into them) of each frequency group r, c, f."""
    cats = sorted(data["categories"], key=lambda c: c["id"])
    freq_groups: list[list[int]] = [[] for _ in FREQUENCIES]
    for k, c in enumerate(cats):
        if c.get("frequency") not in FREQUENCIES:
            raise ValueError(f"LVIS category {c['id']} ({c.get('name')!r}): field 'frequency' should be one of "
                             f"{FREQUENCIES}, got {c.get('frequency')!r}")
        freq_groups[FREQUENCIES.index(c["frequency"])].append(k)
    return [c["id"] for c in cats], freq_groups


def _prepare_detections(detections: list[dict[str, Any]], images: dict[int, Any],
                        max_dets: int) -> list[dict[str, Any]]:
    """Detections as LVISResults prepares them: limited per image, area = w * h, ids from 1."""
    if not isinstance(detections, list):
        raise ValueError(f"detections: expected a list of results, got {type(detections).__name__}")
    dts = []
    for i, d in enumerate(limit_dets_per_image(list(detections), max_dets)):
        if d["image_id"] not in images:
            raise ValueError(f"detections: image_id {d['image_id']} is not an image of the LVIS annotations")
        x, y, w, h = d["bbox"]
        dts.append({"image_id": d["image_id"], "category_id": d["category_id"], "bbox": [x, y, w, h],
                    "score": d["score"], "area": w * h, "id": i + 1})
    return dts


Pairs = dict[tuple[int, int], list[dict[str, Any]]]  # (image id, category id) -> boxes or detections


def _federated_pairs(data: dict[str, Any], images: dict[int, Any], cat_index: dict[int, int],
                     dts: list[dict[str, Any]]) -> tuple[Pairs, Pairs]:
    """Ground truth and detections per (image, category), the federated filter applied
    (LVISEval._prepare): a detection counts only where its category is a positive or a negative."""
    gts: Pairs = defaultdict(list)
    positives: dict[int, set[int]] = defaultdict(set)
    for a in data["annotations"]:
        if a["image_id"] in images and a["category_id"] in cat_index:
            gts[a["image_id"], a["category_id"]].append(a)
            positives[a["image_id"]].add(a["category_id"])
    negatives = {i: set(img.get("neg_category_ids", [])) for i, img in images.items()}
    dts_by: Pairs = defaultdict(list)
    for d in dts:
        img, cat = d["image_id"], d["category_id"]
        if cat not in cat_index or (cat not in negatives[img] and cat not in positives[img]):
            continue
        dts_by[img, cat].append(d)
    return gts, dts_by


def _evaluate_pairs(gts: Pairs, dts_by: Pairs, cat_index: dict[int, int],
                    not_exhaustive: dict[int, set[int]]) -> dict[tuple[int, int], list[dict[str, Any]]]:
    """Per (category index, area index): the matching of each image, in sorted image id order
    (LVISEval.evaluate_img, as LVISEval.accumulate reads them)."""
    evals: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for img, cat in sorted(set(gts) | set(dts_by), key=lambda ic: (ic[1], ic[0])):
        g_all, d_all = gts.get((img, cat), []), dts_by.get((img, cat), [])
        d_all = [d_all[i] for i in np.argsort([-d["score"] for d in d_all], kind="mergesort")]
        ious_all = (mask_utils.iou([d["bbox"] for d in d_all], [g["bbox"] for g in g_all], [0] * len(g_all))
                    if g_all and d_all else [])
        for a, rng in enumerate(AREA_RNG):
            ignore = [1 if (g.get("ignore", 0) or g["area"] < rng[0] or g["area"] > rng[1]) else 0 for g in g_all]
            order = np.argsort(ignore, kind="mergesort")
            g = [g_all[i] for i in order]
            gt_ig = np.array([ignore[i] for i in order])
            ious = ious_all[:, order] if len(ious_all) > 0 else ious_all
            dt_m, dt_ig = _match(ious, gt_ig, [x["id"] for x in g], [x["id"] for x in d_all])
            ig_mask = np.array([d["area"] < rng[0] or d["area"] > rng[1] or d["category_id"] in not_exhaustive[img]
                                for d in d_all]).reshape((1, len(d_all)))
            dt_ig = np.logical_or(dt_ig, np.logical_and(dt_m == 0, np.repeat(ig_mask, len(IOU_THRS), 0)))
            evals[cat_index[cat], a].append({"dt_scores": [d["score"] for d in d_all], "dt_m": dt_m,
                                             "dt_ig": dt_ig, "gt_ig": gt_ig})
    return evals


def _accumulate(evals: dict[tuple[int, int], list[dict[str, Any]]], K: int) -> tuple[np.ndarray, np.ndarray]:
    """LVISEval.accumulate: precision (T, R, K, A), 101-point interpolated, and recall (T, K, A);
    -1 where a category has no (unignored) box in that area range."""
    T, R, A = len(IOU_THRS), len(REC_THRS), len(AREA_RNG)
    precision = -np.ones((T, R, K, A))
    recall = -np.ones((T, K, A))
    for (k, a), E in evals.items():
        scores = np.concatenate([np.asarray(e["dt_scores"], dtype=float) for e in E], axis=0)
        idx = np.argsort(-scores, kind="mergesort")
        dt_m = np.concatenate([e["dt_m"] for e in E], axis=1)[:, idx]
        dt_ig = np.concatenate([e["dt_ig"] for e in E], axis=1)[:, idx]
        gt_ig = np.concatenate([e["gt_ig"] for e in E])
        num_gt = np.count_nonzero(gt_ig == 0)
        if num_gt == 0:
            continue
        tps = np.logical_and(dt_m, np.logical_not(dt_ig))
        fps = np.logical_and(np.logical_not(dt_m), np.logical_not(dt_ig))
        tp_sum = np.cumsum(tps, axis=1).astype(float)
        fp_sum = np.cumsum(fps, axis=1).astype(float)
        for t, (tp, fp) in enumerate(zip(tp_sum, fp_sum)):
            n = len(tp)
            rc = tp / num_gt
            recall[t, k, a] = rc[-1] if n else 0
            pr = (tp / (fp + tp + np.spacing(1))).tolist()
            for i in range(n - 1, 0, -1):  # precision made monotone from the right
                if pr[i] > pr[i - 1]:
                    pr[i - 1] = pr[i]
            at = [0.0] * R
            for r, i in enumerate(np.searchsorted(rc, REC_THRS, side="left")):
                if i >= n:
                    break
                at[r] = pr[i]
            precision[t, :, k, a] = np.array(at)
    return precision, recall
