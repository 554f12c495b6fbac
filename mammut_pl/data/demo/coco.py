"""The COCO captions writer (2017 annotations + the Karpathy split file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mammut_pl.data.demo.world import (background, captions, DATE, DemoSizes, dump_json, IMAGE_SIZE, info_block,
                                       jpeg_bytes, LICENSES, render, rng_stream, sample_scene, tokens_of, unique_ids)

def write_coco(root: Path, seed: int, sz: DemoSizes) -> tuple[dict[str, Any], list[str]]:
    """COCO captions 2017 + the Karpathy split file (train in train2017; restval/val/test in val2017)."""
    rng = rng_stream(seed, 1)
    n_val_folder = sz.coco_restval + sz.coco_val + sz.coco_test
    ids = [int(i) for i in rng.permutation(unique_ids(rng, sz.coco_train + n_val_folder))]
    folders = {"train2017": sorted(ids[: sz.coco_train]), "val2017": sorted(ids[sz.coco_train:])}
    karpathy_split = {i: "train" for i in folders["train2017"]}
    for i, split in zip(rng.permutation(folders["val2017"]),
                        ["restval"] * sz.coco_restval + ["val"] * sz.coco_val + ["test"] * sz.coco_test):
        karpathy_split[int(i)] = split
    ann_id, sent_id, karpathy, train_texts = 1, 0, [], []
    for folder, img_ids in folders.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for image_id in img_ids:
            objs = sample_scene(rng)
            fname = f"{image_id:012d}.jpg"
            (root / folder / fname).write_bytes(jpeg_bytes(render(objs, background(rng, IMAGE_SIZE))))
            images.append({"license": 1, "file_name": fname, "coco_url": f"http://images.cocodataset.org/{folder}/{fname}",
                           "height": IMAGE_SIZE, "width": IMAGE_SIZE, "date_captured": DATE,
                           "flickr_url": f"http://farm.example.invalid/{fname}", "id": image_id})
            caps = captions(rng, objs)
            sentences = []
            for cap in caps:
                anns.append({"image_id": image_id, "id": ann_id, "caption": cap})
                sentences.append({"tokens": tokens_of(cap), "raw": cap, "imgid": len(karpathy), "sentid": sent_id})
                ann_id, sent_id = ann_id + 1, sent_id + 1
            split = karpathy_split[image_id]
            if split in ("train", "restval"):
                train_texts += caps
            karpathy.append({"filepath": folder, "sentids": [s["sentid"] for s in sentences], "filename": fname,
                             "imgid": len(karpathy), "split": split, "sentences": sentences, "cocoid": image_id})
        dump_json({"info": info_block("COCO captions"), "licenses": LICENSES, "images": images, "annotations": anns},
              root / "annotations" / f"captions_{folder}.json")
    dump_json({"images": karpathy, "dataset": "coco"}, root / "dataset_coco.json")
    splits = [k["split"] for k in karpathy]
    counts = {"train2017": len(folders["train2017"]), "val2017": len(folders["val2017"]), "captions": ann_id - 1,
              "karpathy": {s: splits.count(s) for s in ("train", "restval", "val", "test")}}
    return counts, train_texts
