"""The LVIS v1 writer: boxes and polygons of every shape, rare/common/frequent categories."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mammut_pl.data.demo.world import (background, COLORS, DATE, DemoSizes, dump_json, IMAGE_SIZE, info_block,
                                       jpeg_bytes, LICENSES, make_obj, polygon_area, POSITIONS, render, rng_stream,
                                       shape_polygon, SHAPES, unique_ids)

def lvis_categories(rng: np.random.Generator) -> dict[str, str]:
    """Colour x shape -> frequency tier. The 7 rare ones (one per colour, at most 2 per shape) combine
    colours and shapes that each appear in several base (c/f) categories: open-vocabulary transfer works."""
    combos = [(c, s) for c in COLORS for s in SHAPES]
    tiers = {f"{c}_{s}": "c" for c, s in combos}
    rare: list[tuple[str, str]] = []
    for i in rng.permutation(len(combos)):
        c, s = combos[i]
        if len(rare) < 7 and all(x[0] != c for x in rare) and sum(x[1] == s for x in rare) < 2:
            rare.append((c, s))
    for c, s in rare:
        tiers[f"{c}_{s}"] = "r"
    base = [n for n in sorted(tiers) if tiers[n] == "c"]
    frequent: list[tuple[str, str]] = []  # 6, of distinct colours and at most 2 of a shape
    for i in rng.permutation(len(base)):
        c, s = base[i].split("_")
        if len(frequent) < 6 and all(x[0] != c for x in frequent) and sum(x[1] == s for x in frequent) < 2:
            frequent.append((c, s))
            tiers[base[i]] = "f"
    return tiers


def _plan_images(rng: np.random.Generator, n_images: int, targets: dict[str, int], fill: Sequence[str]) -> list[list[str]]:
    """Assign categories to images: each category to `targets[c]` distinct images (emptier images preferred),
    at most 3 objects an image; empty images get a base category; a few get a second instance."""
    slots: list[list[str]] = [[] for _ in range(n_images)]
    for cat in sorted(targets, key=lambda c: (-targets[c], c)):
        free = [i for i in range(n_images) if len(slots[i]) < 3 and cat not in slots[i]]
        w = np.array([3 - len(slots[i]) for i in free], dtype=float) ** 2
        for i in rng.choice(free, min(targets[cat], len(free)), replace=False, p=w / w.sum()):
            slots[int(i)].append(cat)
    for s in slots:
        if not s:
            s.append(str(rng.choice(fill)))
        if len(s) < 3 and rng.random() < 0.1:
            s.append(s[int(rng.integers(len(s)))])
        rng.shuffle(s)
    return slots


def write_lvis(root: Path, seed: int, sz: DemoSizes) -> tuple[dict[str, Any], list[str]]:
    """LVIS v1: federated labels (neg_category_ids verified absent), exact polygon boxes, r/c/f tiers."""
    rng = rng_stream(seed, 5)
    tiers = lvis_categories(rng)
    names = sorted(tiers)
    cat_id = {n: i + 1 for i, n in enumerate(names)}  # LVIS ids follow the alphabetical order of names
    train_targets = {n: int(rng.integers(sz.lvis_targets[tiers[n]][0], sz.lvis_targets[tiers[n]][1] + 1)) for n in names}
    val_targets = {n: int(rng.integers(sz.lvis_val_target[0], sz.lvis_val_target[1] + 1)) for n in names}
    base = [n for n in names if tiers[n] != "r"]
    ids = [int(i) for i in rng.permutation(unique_ids(rng, sz.lvis_train + sz.lvis_val))]
    split_ids = {"train": sorted(ids[: sz.lvis_train]), "val": sorted(ids[sz.lvis_train:])}
    ann_id, out, texts = 1, {}, [n for n in names] + [n.replace("_", " ") for n in names]
    for split, targets in (("train", train_targets), ("val", val_targets)):
        folder = f"{split}2017"
        (root / folder).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for image_id, cats in zip(split_ids[split], _plan_images(rng, len(split_ids[split]), targets, base)):
            positions = [str(p) for p in rng.choice(list(POSITIONS), len(cats), replace=False)]
            objs = [make_obj(rng, n.split("_")[1], n.split("_")[0], p, IMAGE_SIZE) for n, p in zip(cats, positions)]
            fname = f"{image_id:012d}.jpg"
            (root / folder / fname).write_bytes(jpeg_bytes(render(objs, background(rng, IMAGE_SIZE))))
            present = sorted({cat_id[n] for n in cats})
            absent = [cat_id[n] for n in names if cat_id[n] not in present]
            neg = sorted(int(i) for i in rng.choice(absent, min(len(absent), int(rng.integers(3, 7))), replace=False))
            images.append({"date_captured": DATE, "neg_category_ids": neg, "id": image_id, "license": 1,
                           "height": IMAGE_SIZE, "width": IMAGE_SIZE, "flickr_url": f"http://farm.example.invalid/{fname}",
                           "coco_url": f"http://images.cocodataset.org/{folder}/{fname}",
                           "not_exhaustive_category_ids": []})  # every instance is annotated
            for n, o in zip(cats, objs):
                # rounded once, so box, area and polygon agree exactly
                poly = [(round(min(max(x, 0.0), IMAGE_SIZE), 2), round(min(max(y, 0.0), IMAGE_SIZE), 2))
                        for x, y in shape_polygon(o.shape, o.cx, o.cy, o.r)]
                xs, ys = [p[0] for p in poly], [p[1] for p in poly]
                bbox = [min(xs), min(ys), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]
                anns.append({"area": round(polygon_area(poly), 2), "id": ann_id,
                             "segmentation": [[v for p in poly for v in p]],
                             "image_id": image_id, "bbox": bbox, "category_id": cat_id[n]})
                ann_id += 1
        out[split] = (images, anns)
    train_anns = out["train"][1]
    image_count = {c: len({a["image_id"] for a in train_anns if a["category_id"] == c}) for c in cat_id.values()}
    instance_count = {c: sum(a["category_id"] == c for a in train_anns) for c in cat_id.values()}

    def frequency(n: str) -> str:
        if not sz.lvis_thresholds:
            return tiers[n]  # tiny: the planned tier (too few images for LVIS' thresholds)
        k = image_count[cat_id[n]]  # LVIS' definition, on train image counts
        return "r" if k <= 10 else ("c" if k <= 100 else "f")

    categories = [{"id": cat_id[n], "name": n, "synonyms": [n.replace("_", " ")],
                   "def": f"a {n.replace('_', ' ')} drawn on a dark background", "synset": f"{n}.n.01",
                   "frequency": frequency(n), "image_count": image_count[cat_id[n]],
                   "instance_count": instance_count[cat_id[n]]} for n in names]
    for split, (images, anns) in out.items():
        dump_json({"info": info_block("LVIS v1"), "licenses": LICENSES, "images": images, "annotations": anns,
               "categories": categories}, root / f"lvis_v1_{split}.json")
    counts = {"train_images": len(out["train"][0]), "val_images": len(out["val"][0]),
              "train_annotations": len(out["train"][1]), "val_annotations": len(out["val"][1]),
              "categories": {f: sum(c["frequency"] == f for c in categories) for f in "rcf"}}
    return counts, texts
