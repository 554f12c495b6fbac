"""LVIS (v1 and v0.5) for open-vocabulary detection, in its published layout.

    ROOT/lvis_v1_{train,val}.json        (or lvis_v0.5_{train,val}.json)
    ROOT/{train2017,val2017}/*.jpg       the COCO 2017 image folders

An image's file is derived from `coco_url` (v1: ".../train2017/000000391895.jpg" ->
ROOT/train2017/000000391895.jpg; LVIS v1 val holds images of both COCO folders) or, in v0.5,
from `file_name` (in the folder of the split: train -> train2017, val -> val2017; a file name
with a folder part is taken relative to ROOT). v0.5 names its images in the COCO 2014 style
("COCO_val2014_000000397133.jpg") while the images are the COCO 2017 ones: the file is
ROOT/{split}2017/000000397133.jpg (LVIS v0.5 train also holds images of COCO val2014, all of
them in train2017), or, only where that is missing, the 2014 layout ROOT/val2014/COCO_val2014_...
Boxes are [x, y, w, h] in pixels.

Open-vocabulary protocol: training sees the base categories only (frequency 'c' and 'f'); the
annotations of rare ('r') categories are removed from training (their images stay); evaluation
uses every category with the official LVIS protocol (mammut_pl.metrics.lvis_eval).

Geometry: training applies large-scale jitter (the image's long side scaled to a random
fraction in [jitter_min, jitter_max] of the detection size S, then a random S x S crop or padding
to S x S); evaluation resizes the long side to S and pads. Boxes are transformed with the image.
Structural problems (a missing field, a wrong type, an unknown image or category id) are errors
naming the file, the record and the field; degenerate boxes (w or h <= 0, not finite) are
skipped and counted (`LVISSplit.skipped`), as LVIS' own tools drop them.
"""

from __future__ import annotations

import logging
import math
import random
import re
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mammut_pl.data.coco import field, read_json
from mammut_pl.data.context import EvalContext
from mammut_pl.data.epochs import ResumableTrainData, SampleRef, batch_position, item_index
from mammut_pl.data.transforms import MEAN, STD, load_image

log = logging.getLogger(__name__)

FREQUENCIES = ("r", "c", "f")


@dataclass
class LVISImage:
    id: int
    path: str
    width: int
    height: int
    neg_category_ids: list[int]
    not_exhaustive_category_ids: list[int]
    boxes: np.ndarray  # (G, 4) [x, y, w, h] in pixels
    category_ids: list[int]


@dataclass
class LVISSplit:
    path: Path
    version: str  # "v1" (coco_url) or "v0.5" (file_name)
    images: list[LVISImage]
    categories: list[dict[str, Any]]  # sorted by id; name, synonyms, def, frequency
    data: dict[str, Any]  # the loaded JSON, for the official evaluation
    skipped: dict[str, int] = dc_field(default_factory=dict)


def image_file(root: Path, record: dict[str, Any], where: str, split: str) -> tuple[Path, str]:
    """(image path, "v1" | "v0.5"): from coco_url (v1), else file_name (v0.5)."""
    if "coco_url" in record and "file_name" not in record:
        url = field(record, "coco_url", str, where)
        parts = url.rstrip("/").split("/")
        if len(parts) < 2 or not parts[-1]:
            raise ValueError(f"{where}: field 'coco_url' {url!r} does not end in FOLDER/FILE")
        return root / parts[-2] / parts[-1], "v1"
    if "coco_url" not in record and "file_name" not in record:
        raise ValueError(f"{where}: missing field 'coco_url' (LVIS v1) or 'file_name' (LVIS v0.5)")
    name = field(record, "file_name", str, where)
    if not name or name.startswith("/") or ".." in Path(name).parts:
        raise ValueError(f"{where}: field 'file_name' {name!r} is not a file name inside the dataset")
    if "/" in name:
        return root / name, "v0.5"
    folder = root / f"{split}2017"
    coco2014 = re.fullmatch(r"COCO_((?:train|val|test)2014)_(\d{12}\.jpg)", name)
    if coco2014:  # COCO_val2014_000000000139.jpg: the 2017 file is 000000000139.jpg in the split's folder
        in_2017 = folder / coco2014.group(2)
        in_2014 = root / coco2014.group(1) / name
        return (in_2014 if not in_2017.exists() and in_2014.exists() else in_2017), "v0.5"
    return folder / name, "v0.5"


def _ids(record: dict[str, Any], key: str, where: str) -> list[int]:
    value = record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise ValueError(f"{where}: field {key!r} should be a list of category ids, got {value!r:.60}")
    return value


def read_lvis(root: str | Path, filename: str) -> LVISSplit:
    """One LVIS annotation file with its images (v1 or v0.5)."""
    root = Path(root)
    path = root / filename
    data = read_json(path, "LVIS annotation file (lvis_v1_train.json / lvis_v1_val.json / lvis_v0.5_*.json)")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object with images, annotations and categories")
    split = "val" if "val" in Path(filename).name else "train"
    categories = _read_categories(data, path)
    images, versions = _read_images(data, path, root, split)
    skipped = {"degenerate_boxes": _read_annotations(data, path, images, {c["id"] for c in categories})}
    if skipped["degenerate_boxes"]:
        log.warning("%s: skipped %d annotations with degenerate boxes (w or h <= 0, or not finite)",
                    path, skipped["degenerate_boxes"])
    version = "v1" if versions == {"v1"} else "v0.5"
    return LVISSplit(path, version, list(images.values()), categories, data, skipped)


def _read_categories(data: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """The file's categories, checked (id, name, synonyms, frequency; ids unique), sorted by id."""
    categories = []
    cat_ids: set[int] = set()
    for i, c in enumerate(field(data, "categories", list, str(path))):
        where = f"{path}: categories[{i}]"
        cid = field(c, "id", int, where)
        field(c, "name", str, where)
        synonyms = c.get("synonyms", [])
        if not isinstance(synonyms, list) or not all(isinstance(n, str) and n for n in synonyms):
            raise ValueError(f"{where}: field 'synonyms' should be a list of names, got {synonyms!r:.60}")
        if field(c, "frequency", str, where) not in FREQUENCIES:
            raise ValueError(f"{where}: field 'frequency' should be one of {FREQUENCIES}, got {c['frequency']!r}")
        if cid in cat_ids:
            raise ValueError(f"{where}: duplicate category id {cid}")
        cat_ids.add(cid)
        categories.append(c)
    if not categories:
        raise ValueError(f"{path}: field 'categories' is empty")
    return sorted(categories, key=lambda c: c["id"])


def _read_images(data: dict[str, Any], path: Path, root: Path, split: str) -> tuple[dict[int, LVISImage], set[str]]:
    """The file's images by id (no boxes yet), and the layout versions their file names point to."""
    images: dict[int, LVISImage] = {}
    versions = set()
    for i, rec in enumerate(field(data, "images", list, str(path))):
        where = f"{path}: images[{i}]"
        iid = field(rec, "id", int, where)
        if iid in images:
            raise ValueError(f"{where}: duplicate image id {iid}")
        file, version = image_file(root, rec, where, split)
        versions.add(version)
        w, h = field(rec, "width", int, where), field(rec, "height", int, where)
        if w <= 0 or h <= 0:
            raise ValueError(f"{where}: width and height must be positive, got {w} x {h}")
        images[iid] = LVISImage(iid, str(file), w, h, _ids(rec, "neg_category_ids", where),
                                _ids(rec, "not_exhaustive_category_ids", where), np.zeros((0, 4), np.float32), [])
    if not images:
        raise ValueError(f"{path}: field 'images' is empty")
    return images, versions


def _read_annotations(data: dict[str, Any], path: Path, images: dict[int, LVISImage], cat_ids: set[int]) -> int:
    """Each annotation's box and category onto its image; returns the degenerate boxes skipped."""
    boxes: dict[int, list[list[float]]] = {i: [] for i in images}
    degenerate = 0
    for i, ann in enumerate(field(data, "annotations", list, str(path))):
        where = f"{path}: annotations[{i}]"
        iid, cid = field(ann, "image_id", int, where), field(ann, "category_id", int, where)
        if iid not in images:
            raise ValueError(f"{where}: image_id {iid} is not in the file's images")
        if cid not in cat_ids:
            raise ValueError(f"{where}: category_id {cid} is not in the file's categories")
        box = field(ann, "bbox", list, where)
        if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
            raise ValueError(f"{where}: field 'bbox' should be [x, y, w, h] numbers, got {box!r:.60}")
        if not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
            degenerate += 1
            continue
        boxes[iid].append([float(v) for v in box])
        images[iid].category_ids.append(cid)
    for iid, b in boxes.items():
        if b:
            images[iid].boxes = np.asarray(b, dtype=np.float32)
    return degenerate


# --- geometry ------------------------------------------------------------------------------------------
def transform_boxes(boxes_xyxy: np.ndarray, scale: float, offset: tuple[float, float]) -> np.ndarray:
    """Boxes under "resize by `scale`, then shift the origin to `offset` (the crop's corner)"."""
    ox, oy = offset
    return boxes_xyxy * scale - np.array([ox, oy, ox, oy], dtype=boxes_xyxy.dtype)


def untransform_boxes(boxes_xyxy: np.ndarray, scale: float, offset: tuple[float, float]) -> np.ndarray:
    ox, oy = offset
    return (boxes_xyxy + np.array([ox, oy, ox, oy], dtype=boxes_xyxy.dtype)) / scale


def xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def jitter_geometry(width: int, height: int, size: int, rng: random.Random | None,
                    jitter: tuple[float, float] = (1.0, 1.0)) -> tuple[float, tuple[int, int], tuple[int, int]]:
    """(scale, resized (w, h), crop corner (x0, y0)). rng=None: evaluation (long side = size, no crop).
    Training: long side = size * U(jitter), then a random size x size crop where it is larger."""
    s = rng.uniform(*jitter) if rng is not None else 1.0
    scale = s * size / max(width, height)
    nw, nh = max(1, round(width * scale)), max(1, round(height * scale))
    x0 = rng.randint(0, nw - size) if rng is not None and nw > size else 0
    y0 = rng.randint(0, nh - size) if rng is not None and nh > size else 0
    return scale, (nw, nh), (x0, y0)


def place_image(img: Image.Image, size: int, resized: tuple[int, int], corner: tuple[int, int]) -> Tensor:
    """Resize, crop at `corner`, pad to size x size (padding = the mean colour, 0 after normalising)."""
    img = img.resize(resized, Image.BILINEAR)
    x0, y0 = corner
    img = img.crop((x0, y0, min(x0 + size, resized[0]), min(y0 + size, resized[1])))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, h, w)
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    canvas = torch.zeros(3, size, size)
    canvas[:, : x.shape[1], : x.shape[2]] = x
    return canvas


class LVISDetectionDataset(Dataset):
    """(image on a size x size canvas, boxes normalised cxcywh, labels = indices into `classes`)."""

    def __init__(self, images: list[LVISImage], size: int, class_index: dict[int, int], train: bool,
                 jitter: tuple[float, float] = (1.0, 1.0)) -> None:
        self.images, self.size, self.class_index = images, size, class_index
        self.train, self.jitter = train, jitter

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int | SampleRef) -> dict[str, Any]:
        rec = self.images[item_index(i)]
        img = load_image(rec.path)
        # training: the jitter is drawn from the item's own seed (SampleRef: exact resume), else torch's RNG
        rng = None
        if self.train:
            seed = i.seed if isinstance(i, SampleRef) else int(torch.randint(0, 2**62, (1,)))
            rng = random.Random(seed)
        scale, resized, corner = jitter_geometry(img.width, img.height, self.size, rng, self.jitter)
        image = place_image(img, self.size, resized, corner)
        out: dict[str, Any] = {"image": image, "image_id": rec.id, "scale": scale * img.width / rec.width,
                               "orig_size": (rec.height, rec.width)}
        if self.train:
            keep = [k for k, c in enumerate(rec.category_ids) if c in self.class_index]
            boxes = np.zeros((0, 4), np.float32)
            labels = []
            if keep:
                # annotation pixels -> the decoded image's pixels (they agree unless the JSON's size differs)
                b = xywh_to_xyxy(rec.boxes[keep]) * (img.width / rec.width)
                b = np.clip(transform_boxes(b, scale, corner), 0, self.size)
                ok = ((b[:, 2] - b[:, 0]) >= 1) & ((b[:, 3] - b[:, 1]) >= 1)  # still visible after the crop
                boxes = b[ok] / self.size
                labels = [self.class_index[rec.category_ids[k]] for k, o in zip(keep, ok) if o]
            cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
            w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            out["boxes"] = torch.from_numpy(np.stack([cx, cy, w, h], 1).astype(np.float32))
            out["labels"] = torch.tensor(labels, dtype=torch.long)
        if isinstance(i, SampleRef):
            out["position"] = (i.epoch, i.position)
        return out


def collate_detection(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch: dict[str, Any] = {"images": torch.stack([it["image"] for it in items]),
                             "image_ids": torch.tensor([it["image_id"] for it in items]),
                             "scales": torch.tensor([it["scale"] for it in items], dtype=torch.float64),
                             "orig_sizes": torch.tensor([it["orig_size"] for it in items])}
    if "boxes" in items[0]:
        batch["targets"] = [{"boxes": it["boxes"], "labels": it["labels"]} for it in items]
    return {**batch, **batch_position(items)}  # where the last item stood in its epoch: for resuming


class LVISDataModule(ResumableTrainData, L.LightningDataModule):
    """train: `train_file`, base categories only (base_only); val / test: every category."""

    def __init__(self, root: str, image_size: int, train_file: str = "lvis_v1_train.json",
                 val_file: str = "lvis_v1_val.json", test_file: str = "", base_only: bool = True,
                 jitter: tuple[float, float] = (0.1, 2.0), batch_size: int = 16, eval_batch_size: int = 32,
                 num_workers: int = 2, max_eval_images: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root: LVIS folder not found: {self.root} (expected {train_file}, "
                                    f"{val_file} and the COCO image folders train2017/ val2017/)")
        self.image_size, self.base_only, self.jitter = image_size, base_only, jitter
        self.train_file, self.val_file, self.test_file = train_file, val_file, test_file or val_file
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.max_eval_images, self.seed = max_eval_images, seed
        self.init_resume()
        self._cache: dict[str, LVISSplit] = {}

    def split(self, filename: str) -> LVISSplit:
        if filename not in self._cache:
            self._cache[filename] = read_lvis(self.root, filename)
        return self._cache[filename]

    @property
    def categories(self) -> list[dict[str, Any]]:
        """Every category (sorted by id) of val_file: the validation vocabulary."""
        return self.split(self.val_file).categories

    def categories_of(self, filename: str) -> list[dict[str, Any]]:
        """The vocabulary an annotation file is scored with: its own categories (a v0.5 test file
        has other ids than a v1 val file)."""
        return self.split(filename).categories

    @property
    def train_categories(self) -> list[dict[str, Any]]:
        """The training vocabulary: base (c + f) categories under the open-vocabulary protocol."""
        cats = self.split(self.train_file).categories
        return [c for c in cats if c["frequency"] != "r"] if self.base_only else cats

    def train_class_image_counts(self) -> list[int]:
        """Training images holding a box of each training class (train_categories' order): LVIS'
        `image_count`, counted from the annotations the reader kept."""
        index = {c["id"]: k for k, c in enumerate(self.train_categories)}
        counts = [0] * len(index)
        for im in self.split(self.train_file).images:
            for cid in set(im.category_ids) & index.keys():
                counts[index[cid]] += 1
        return counts

    def eval_context(self) -> EvalContext:
        return EvalContext(categories_of=self.categories_of, train_categories=lambda: self.train_categories,
                           train_class_image_counts=self.train_class_image_counts, val_file=self.val_file,
                           test_file=self.test_file, eval_gt=self.eval_gt)

    def eval_gt(self, filename: str) -> dict[str, Any]:
        """The annotations the evaluation scores against (the first max_eval_images images)."""
        s = self.split(filename)
        if not self.max_eval_images:
            return s.data
        ids = {im.id for im in s.images[: self.max_eval_images]}
        return {**s.data, "images": [im for im in s.data["images"] if im["id"] in ids],
                "annotations": [a for a in s.data["annotations"] if a["image_id"] in ids]}

    def _eval_images(self, filename: str) -> list[LVISImage]:
        images = self.split(filename).images
        return images[: self.max_eval_images] if self.max_eval_images else images

    def train_dataloader(self) -> DataLoader:
        index = {c["id"]: k for k, c in enumerate(self.train_categories)}
        ds = LVISDetectionDataset(self.split(self.train_file).images, self.image_size, index, train=True,
                                  jitter=self.jitter)
        return self.resumable_loader(ds, collate_detection)  # seeded order and jitter: exact resume

    def train_size(self) -> int:
        return len(self.split(self.train_file).images)

    def _eval_loader(self, filename: str) -> DataLoader:
        ds = LVISDetectionDataset(self._eval_images(filename), self.image_size, {}, train=False)
        return DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, collate_fn=collate_detection)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_file)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_file)
