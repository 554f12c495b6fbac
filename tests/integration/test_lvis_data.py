"""The LVIS reader on the v1 and v0.5 layouts, its errors (file, record and field named), skipped
degenerate boxes, the open-vocabulary split (rare categories out of training), and boxes moving
with the image under resize and large-scale jitter."""

import json
import random
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image


from mammut_pl.data.lvis import (
    LVISDataModule,
    LVISDetectionDataset,
    jitter_geometry,
    place_image,
    read_lvis,
    transform_boxes,
    untransform_boxes,
    xywh_to_xyxy,
)
from mammut_pl.data.transforms import MEAN, STD
from tests.helpers.fuzz import assert_clear_error, json_mutations


@pytest.fixture(scope="module")
def lvis_root(tmp_path_factory):
    from mammut_pl.data.demo import TINY_SIZES, write_lvis

    root = tmp_path_factory.mktemp("lvis") / "lvis"
    write_lvis(root, 0, TINY_SIZES)
    return root


def copy_with(root, tmp_path, name, edit):
    """A copy of the demo LVIS folder whose `name` file went through edit(data)."""
    dst = tmp_path / "lvis"
    shutil.copytree(root, dst)
    data = json.loads((dst / name).read_text())
    edit(data)
    (dst / name).write_text(json.dumps(data))
    return dst


def test_reads_v1(lvis_root):
    raw = json.loads((lvis_root / "lvis_v1_val.json").read_text())
    split = read_lvis(lvis_root, "lvis_v1_val.json")
    assert split.version == "v1" and len(split.images) == len(raw["images"])
    assert sum(len(im.category_ids) for im in split.images) == len(raw["annotations"])
    assert all(im.path.endswith(r["coco_url"].split("/")[-1]) and "val2017" in im.path
               for im, r in zip(split.images, raw["images"]))
    assert all(Image.open(im.path).size == (im.width, im.height) for im in split.images)
    ann = raw["annotations"][0]
    im = next(i for i in split.images if i.id == ann["image_id"])
    assert im.boxes[0].tolist() == pytest.approx(ann["bbox"])
    assert [c["id"] for c in split.categories] == sorted(c["id"] for c in raw["categories"])


def test_reads_v0_5_file_names(lvis_root, tmp_path):
    """v0.5 images carry `file_name` (no coco_url needed): the split's COCO folder, or a COCO_* name's own."""
    def to_v05(data):
        for im in data["images"]:
            im["file_name"] = im.pop("coco_url").split("/")[-1]
    root = copy_with(lvis_root, tmp_path, "lvis_v1_train.json", to_v05)
    (root / "lvis_v1_train.json").rename(root / "lvis_v0.5_train.json")
    split = read_lvis(root, "lvis_v0.5_train.json")
    assert split.version == "v0.5"
    assert all(im.path.startswith(str(root / "train2017")) and (root / "train2017" / im.path.split("/")[-1]).is_file()
               for im in split.images)


def test_v0_5_coco2014_names_map_to_the_2017_folder_of_the_split(tmp_path):
    """Real v0.5 files name images 'COCO_val2014_<12 digits>.jpg' (as detectron2's and mmdet's LVIS v0.5
    loaders read them) while the images are COCO 2017's: v0.5 train holds val2014 images too, all in
    train2017. The 2014 layout is used only where the 2017 file is missing."""
    from mammut_pl.data.lvis import image_file
    name = "COCO_val2014_000000000139.jpg"
    assert image_file(tmp_path, {"file_name": name}, "x", "train")[0] == tmp_path / "train2017" / "000000000139.jpg"
    assert image_file(tmp_path, {"file_name": name}, "x", "val")[0] == tmp_path / "val2017" / "000000000139.jpg"
    (tmp_path / "val2014").mkdir()
    (tmp_path / "val2014" / name).write_bytes(b"jpeg")
    assert image_file(tmp_path, {"file_name": name}, "x", "val")[0] == tmp_path / "val2014" / name
    (tmp_path / "val2017").mkdir()
    (tmp_path / "val2017" / "000000000139.jpg").write_bytes(b"jpeg")
    assert image_file(tmp_path, {"file_name": name}, "x", "val")[0] == tmp_path / "val2017" / "000000000139.jpg"
    # v1 records have no file_name: the folder and name come from coco_url, whatever the split
    url = {"coco_url": "http://images.cocodataset.org/train2017/000000391895.jpg"}
    assert image_file(tmp_path, url, "x", "val") == (tmp_path / "train2017" / "000000391895.jpg", "v1")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["annotations"][2].pop("bbox"), r"annotations\[2\]: missing field 'bbox'"),
    (lambda d: d["annotations"][1].__setitem__("image_id", 12345678), r"annotations\[1\]: image_id 12345678"),
    (lambda d: d["annotations"][0].__setitem__("category_id", 999), r"annotations\[0\]: category_id 999"),
    (lambda d: d["annotations"][0].__setitem__("bbox", [1, 2, 3]), r"annotations\[0\]: field 'bbox'"),
    (lambda d: d["images"][3].pop("coco_url"), r"images\[3\]: missing field 'coco_url' \(LVIS v1\) or 'file_name'"),
    (lambda d: d["images"][0].__setitem__("neg_category_ids", "x"), r"images\[0\]: field 'neg_category_ids'"),
    (lambda d: d["categories"][4].__setitem__("frequency", "x"), r"categories\[4\]: field 'frequency'"),
    (lambda d: d.pop("categories"), r"missing field 'categories'"),
])
def test_bad_records_name_file_record_and_field(lvis_root, tmp_path, edit, message):
    root = copy_with(lvis_root, tmp_path, "lvis_v1_val.json", edit)
    with pytest.raises(ValueError, match=message) as err:
        read_lvis(root, "lvis_v1_val.json")
    assert "lvis_v1_val.json" in str(err.value)


def test_missing_and_broken_files(lvis_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="lvis_v1_test.json"):
        read_lvis(lvis_root, "lvis_v1_test.json")
    (tmp_path / "lvis_v1_val.json").write_text("{not json")
    with pytest.raises(ValueError, match="lvis_v1_val.json: not valid JSON"):
        read_lvis(tmp_path, "lvis_v1_val.json")


def test_degenerate_boxes_are_skipped_and_counted(lvis_root, tmp_path):
    def squash(d):
        d["annotations"][0]["bbox"][2] = 0
        d["annotations"][1]["bbox"][3] = -1.0
    root = copy_with(lvis_root, tmp_path, "lvis_v1_val.json", squash)
    split = read_lvis(root, "lvis_v1_val.json")
    assert split.skipped == {"degenerate_boxes": 2}
    assert sum(len(im.category_ids) for im in split.images) == len(split.data["annotations"]) - 2


def test_rare_categories_are_held_out_of_training(lvis_root):
    dm = LVISDataModule(str(lvis_root), image_size=64, jitter=(1.0, 1.0), num_workers=0, batch_size=4)
    rare = {c["id"] for c in dm.categories if c["frequency"] == "r"}
    assert rare and not rare & {c["id"] for c in dm.train_categories}
    assert len(dm.categories) == len(dm.train_categories) + len(rare)
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (4, 3, 64, 64)
    for t in batch["targets"]:
        assert ((t["labels"] >= 0) & (t["labels"] < len(dm.train_categories))).all()
        assert ((t["boxes"] >= 0) & (t["boxes"] <= 1)).all()
    dm_all = LVISDataModule(str(lvis_root), image_size=64, base_only=False, num_workers=0)
    assert len(dm_all.train_categories) == len(dm.categories)


def test_box_transforms_round_trip():
    rng = np.random.default_rng(0)
    b = xywh_to_xyxy(rng.uniform(0, 100, (10, 4)))
    for scale, off in ((0.5, (0, 0)), (1.7, (13, 4)), (0.1, (0, 0))):
        np.testing.assert_allclose(untransform_boxes(transform_boxes(b, scale, off), scale, off), b, rtol=1e-6)


def bright_box(canvas: torch.Tensor) -> list[float]:
    """Pixel extent of the white rectangle on a canvas (denormalised)."""
    img = canvas * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
    ys, xs = torch.nonzero(img.mean(0) > 0.5, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


@pytest.mark.parametrize("seed", range(6))
def test_boxes_move_with_the_image_under_jitter(seed):
    """A white rectangle drawn at a known box: after resize / jitter / crop / pad, the transformed
    box is where the white pixels are (to within the resampling blur)."""
    W, H, size = 90, 60, 64
    box = np.array([[30.0, 20.0, 70.0, 50.0]])  # xyxy
    arr = np.zeros((H, W, 3), np.uint8)
    arr[20:50, 30:70] = 255
    img = Image.fromarray(arr)
    rng = random.Random(seed) if seed else None  # seed 0: the evaluation geometry
    scale, resized, corner = jitter_geometry(W, H, size, rng, (0.6, 2.0))
    canvas = place_image(img, size, resized, corner)
    expected = np.clip(transform_boxes(box, scale, corner), 0, size)[0]
    np.testing.assert_allclose(bright_box(canvas), expected, atol=1.5)
    if rng is None:  # evaluation: long side = size, and predictions map back exactly
        assert scale == size / W and corner == (0, 0)
        np.testing.assert_allclose(untransform_boxes(transform_boxes(box, scale, corner), scale, corner), box)


def test_eval_dataset_reports_the_scale_back_to_annotation_pixels(lvis_root):
    split = read_lvis(lvis_root, "lvis_v1_val.json")
    item = LVISDetectionDataset(split.images[:1], 96, {}, train=False)[0]
    assert item["scale"] == pytest.approx(96 / split.images[0].width) and item["image"].shape == (3, 96, 96)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_lvis_json_reads_correctly_or_names_file_record_field(lvis_root, tmp_path_factory, data):
    """Any one mutation of a valid file: a consistent result, or one ValueError naming the file and,
    for a change inside an image / annotation / category record, the record and its field."""
    doc = json.loads((lvis_root / "lvis_v1_val.json").read_text())
    doc["images"], doc["annotations"] = doc["images"][:3], [a for a in doc["annotations"]
                                                             if a["image_id"] in {i["id"] for i in doc["images"][:3]}]
    m = data.draw(json_mutations(doc))
    root = tmp_path_factory.mktemp("fz")
    path = root / "lvis_v1_val.json"
    path.write_text(m.text)
    try:
        split = read_lvis(root, "lvis_v1_val.json")
    except (ValueError, FileNotFoundError) as err:
        if m.op == "delete" and len(m.path) == 2 and m.path[0] in ("images", "categories"):
            # a whole image / category record gone: its annotations now point nowhere, and the
            # error names the annotation and the id it misses
            assert_clear_error(err, path)
            assert "annotations[" in str(err) and "is not in the file's" in str(err), str(err)
        else:
            for key in ("images", "annotations", "categories"):
                assert_clear_error(err, path, m, list_key=key)
    else:
        assert split.images and split.categories
        ids = [im.id for im in split.images]
        assert len(set(ids)) == len(ids)
        for im in split.images:
            assert im.boxes.shape == (len(im.category_ids), 4) and (im.boxes[:, 2:] > 0).all()
    shutil.rmtree(root)


def test_train_class_image_counts_equal_lvis_image_count(lvis_root):
    """The federated loss' class weights: training images per base class, as LVIS' own `image_count`
    field of the category records (which the demo writes by LVIS' definition)."""
    dm = LVISDataModule(str(lvis_root), image_size=64)
    raw = json.loads((lvis_root / "lvis_v1_train.json").read_text())
    by_id = {c["id"]: c["image_count"] for c in raw["categories"]}
    assert all(c["frequency"] != "r" for c in dm.train_categories)
    assert dm.train_class_image_counts() == [by_id[c["id"]] for c in dm.train_categories]
    brute = [len({a["image_id"] for a in raw["annotations"] if a["category_id"] == c["id"]}) for c in dm.train_categories]
    assert dm.train_class_image_counts() == brute


def test_the_task_draws_federated_classes_by_seed_step_and_rank(lvis_root):
    """DetectionTask.loss_classes: off by default; on, the batch's classes plus a weighted draw that
    depends only on (seed, step, rank), so a resumed run draws what the first one did."""
    from types import SimpleNamespace

    from tests.helpers import SMALL_MODEL

    from mammut_pl import config as config_lib
    from mammut_pl.tasks.detection import DetectionTask

    dm = LVISDataModule(str(lvis_root), image_size=64)
    small = [*SMALL_MODEL, "detection.image_size=32"]

    def task(*extra):
        t = DetectionTask(config_lib.to_dict(config_lib.load("lvis", [*small, *extra])))
        t._trainer = SimpleNamespace(datamodule=dm, global_step=0, global_rank=0)
        return t

    targets = [{"labels": torch.tensor([1, 1])}, {"labels": torch.tensor([0])}]
    assert task().loss_classes(targets) is None
    fed = task("detection.federated_classes=4")
    draws = {}
    for step, rank in [(0, 0), (1, 0), (0, 1), (2, 0), (3, 0)]:
        fed._trainer.global_step, fed._trainer.global_rank = step, rank
        draws[step, rank] = fed.loss_classes(targets).tolist()
        assert len(draws[step, rank]) == 4 and {0, 1} <= set(draws[step, rank])
    again = task("detection.federated_classes=4")  # a resumed run at step 1
    again._trainer.global_step = 1
    assert again.loss_classes(targets).tolist() == draws[1, 0]
    assert len({tuple(d) for d in draws.values()}) > 1  # the draw changes with the step / rank
