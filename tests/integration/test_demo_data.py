"""The demo world: every file in its published schema, consistent with its pixels, cached and deterministic."""

from __future__ import annotations

import collections
import csv
import hashlib
import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mammut_pl.data import demo
from mammut_pl.data.demo import COLORS, POSITIONS, SHAPES, write_demo
from mammut_pl.data.tokenizer import build_tokenizer
from tests.helpers import TEST_DATA


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "world"
    write_demo(out, seed=0, tiny=True)  # its speed is not a unit test's business (a busy machine)
    return out


def load(path: Path):
    return json.loads(path.read_text())


def check_image(path: Path, size: tuple[int, int] = (demo.IMAGE_SIZE, demo.IMAGE_SIZE)) -> np.ndarray:
    assert path.is_file(), path
    with Image.open(path) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == size
        return np.asarray(im.convert("RGB"))


def colour_mask(rgb: np.ndarray, colour: str, tol: float = 45.0) -> np.ndarray:
    """Pixels close to a named colour (drawn colours are jittered by at most 12 per channel)."""
    return np.linalg.norm(rgb.astype(np.float32) - np.array(COLORS[colour], np.float32), axis=-1) < tol


def vqa_normalise(answer: str) -> str:
    """The gist of the official VQA answer normalisation: lower case, punctuation, articles, number words."""
    words = re.sub(r"[.,!?]", "", answer.lower()).split()
    digits = {w: str(i) for i, w in enumerate(demo.NUMBER_WORDS)}
    return " ".join(digits.get(w, w) for w in words if w not in ("a", "an", "the"))


# --- layout ------------------------------------------------------------------------------------------------

EXPECTED = [
    "tokenizer.json", "manifest.json",
    "coco/annotations/captions_train2017.json", "coco/annotations/captions_val2017.json", "coco/dataset_coco.json",
    "webdata/00000.tar", "webdata/00001.tar", "webdata/00000_stats.json", "webdata/00001_stats.json",
    "vqav2/v2_OpenEnded_mscoco_train2014_questions.json", "vqav2/v2_OpenEnded_mscoco_val2014_questions.json",
    "vqav2/v2_OpenEnded_mscoco_test-dev2015_questions.json", "vqav2/v2_OpenEnded_mscoco_test2015_questions.json",
    "vqav2/v2_mscoco_train2014_annotations.json", "vqav2/v2_mscoco_val2014_annotations.json",
    "msrvtt/train_qa.json", "msrvtt/val_qa.json", "msrvtt/test_qa.json", "msrvtt/MSRVTT_data.json",
    "msrvtt/MSRVTT_JSFUSION_test.csv",
    "lvis/lvis_v1_train.json", "lvis/lvis_v1_val.json",
]


def test_files_exist_and_parse(root):
    for rel in EXPECTED:
        assert (root / rel).is_file(), rel
        if rel.endswith(".json"):
            load(root / rel)
    m = load(root / "manifest.json")
    assert m["version"] == demo.VERSION and m["seed"] == 0 and m["tiny"] is True
    assert m["created_by"] == "mammut_pl.data.demo"
    assert set(m["counts"]) >= {"coco", "webdata", "vqav2", "msrvtt", "lvis", "tokenizer"}
    assert not list(root.parent.glob(".world.tmp-*"))  # the temporary folder is gone
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size < 1_000_000, size


# --- COCO ----------------------------------------------------------------------------------------------------

def test_coco(root):
    coco, ann_ids, all_ids = root / "coco", set(), set()
    for folder in ("train2017", "val2017"):
        d = load(coco / "annotations" / f"captions_{folder}.json")
        assert set(d) == {"info", "licenses", "images", "annotations"}
        ids = {im["id"] for im in d["images"]}
        assert not ids & all_ids
        all_ids |= ids
        for im in d["images"]:
            assert set(im) == {"id", "file_name", "width", "height", "license", "coco_url", "date_captured", "flickr_url"}
            assert im["file_name"] == f"{im['id']:012d}.jpg" and im["coco_url"].endswith(f"{folder}/{im['file_name']}")
            assert check_image(coco / folder / im["file_name"]).shape == (im["height"], im["width"], 3)
        per_image = collections.Counter(a["image_id"] for a in d["annotations"])
        assert set(per_image) == ids and set(per_image.values()) == {5}
        for a in d["annotations"]:
            assert set(a) == {"id", "image_id", "caption"} and isinstance(a["caption"], str) and a["caption"]
            assert a["id"] not in ann_ids
            ann_ids.add(a["id"])
    assert ids != set(range(len(ids)))  # ids are not 0..n-1


def test_karpathy(root):
    coco = root / "coco"
    k = load(coco / "dataset_coco.json")
    assert k["dataset"] == "coco"
    captions = {}
    for folder in ("train2017", "val2017"):
        for a in load(coco / "annotations" / f"captions_{folder}.json")["annotations"]:
            captions.setdefault(a["image_id"], []).append(a["caption"])
    sentids = set()
    for i, im in enumerate(k["images"]):
        assert set(im) == {"filepath", "filename", "imgid", "sentids", "split", "sentences", "cocoid"}
        assert im["imgid"] == i and im["split"] in ("train", "val", "test", "restval")
        assert (coco / im["filepath"] / im["filename"]).is_file()
        assert im["filepath"] == ("train2017" if im["split"] == "train" else "val2017")
        assert [s["raw"] for s in im["sentences"]] == captions[im["cocoid"]]
        assert im["sentids"] == [s["sentid"] for s in im["sentences"]]
        for s in im["sentences"]:
            assert s["imgid"] == i and s["tokens"] == re.findall(r"[a-z0-9]+", s["raw"].lower())
        sentids.update(im["sentids"])
    assert sentids == set(range(len(sentids)))
    splits = collections.Counter(im["split"] for im in k["images"])
    assert all(splits[s] > 0 for s in ("train", "val", "test", "restval"))


def test_captions_describe_pixels(root):
    """'a red circle on the left' -> red pixels in the left region."""
    coco = root / "coco"
    d = load(coco / "annotations" / "captions_train2017.json")
    where = {v: k for k, v in demo.WHERE.items()}
    pattern = re.compile(rf"(?:a|an) (?:small |large )?({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) ({'|'.join(where)})")
    checked = 0
    for a in d["annotations"]:
        for colour, shape, phrase in pattern.findall(a["caption"]):
            rgb = check_image(coco / "train2017" / f"{a['image_id']:012d}.jpg")
            fx, fy = POSITIONS[where[phrase]]
            cx, cy = int(fx * rgb.shape[1]), int(fy * rgb.shape[0])
            assert colour_mask(rgb[cy - 3: cy + 4, cx - 3: cx + 4], colour).sum() >= 5, (a, colour, phrase)
            checked += 1
    assert checked >= 20


# --- webdataset ----------------------------------------------------------------------------------------------

def test_webdata_tarfile(root):
    web = root / "webdata"
    shards = sorted(web.glob("*.tar"))
    assert [p.name for p in shards] == ["00000.tar", "00001.tar"]
    for shard_no, shard in enumerate(shards):
        with tarfile.open(shard) as tar:
            members = tar.getmembers()
            assert all(m.mtime == demo.TAR_MTIME for m in members)
            files = {m.name: tar.extractfile(m).read() for m in members}
        keys = sorted({n.split(".")[0] for n in files})
        for key in keys:
            assert re.fullmatch(r"\d{9}", key) and int(key) // 10000 == shard_no
            meta = json.loads(files[f"{key}.json"])
            assert set(meta) == {"url", "caption", "key", "status", "error_message", "width", "height",
                                 "original_width", "original_height", "exif", "sha256"}
            assert meta["key"] == key and meta["status"] == "success" and meta["error_message"] is None
            assert meta["caption"] == files[f"{key}.txt"].decode()
            assert meta["sha256"] == hashlib.sha256(files[f"{key}.jpg"]).hexdigest()
            assert meta["exif"] == "{}"
        stats = load(web / f"{shard_no:05d}_stats.json")
        assert stats["successes"] == len(keys) and stats["count"] == stats["successes"] + stats["failed_to_download"]
        assert stats["status_dict"]["success"] == len(keys)


def test_webdata_webdataset(root):
    import webdataset as wds

    urls = [str(p) for p in sorted((root / "webdata").glob("*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("jpg", "txt"))
    assert len(samples) == load(root / "manifest.json")["counts"]["webdata"]["pairs"]
    for img, txt in samples:
        assert img.size == (demo.IMAGE_SIZE, demo.IMAGE_SIZE) and isinstance(txt, str) and txt


# --- VQA v2 --------------------------------------------------------------------------------------------------

def test_vqav2(root):
    vqa = root / "vqav2"
    folders = {"train2014": ("train2014", "COCO_train2014_"), "val2014": ("val2014", "COCO_val2014_"),
               "test-dev2015": ("test2015", "COCO_test2015_"), "test2015": ("test2015", "COCO_test2015_")}
    questions = {}
    for sub, (folder, prefix) in folders.items():
        q = load(vqa / f"v2_OpenEnded_mscoco_{sub}_questions.json")
        assert set(q) == {"info", "task_type", "data_type", "license", "data_subtype", "questions"}
        assert (q["task_type"], q["data_type"], q["data_subtype"]) == ("Open-Ended", "mscoco", sub)
        for x in q["questions"]:
            assert set(x) == {"image_id", "question", "question_id"} and x["question"].endswith("?")
            assert x["question_id"] // 10 == x["image_id"]
            check_image(vqa / folder / f"{prefix}{x['image_id']:012d}.jpg")
        questions[sub] = {x["question_id"]: x for x in q["questions"]}
    assert set(questions["test-dev2015"]) < set(questions["test2015"])

    all_answers = []
    for sub in ("train2014", "val2014"):
        a = load(vqa / f"v2_mscoco_{sub}_annotations.json")
        assert set(a) == {"info", "license", "data_subtype", "annotations"} and a["data_subtype"] == sub
        anns = {x["question_id"]: x for x in a["annotations"]}
        assert set(anns) == set(questions[sub])  # every question has an annotation
        for qid, x in anns.items():
            assert set(x) == {"question_type", "multiple_choice_answer", "answers", "image_id", "answer_type",
                              "question_id"}
            assert x["image_id"] == questions[sub][qid]["image_id"]
            assert x["answer_type"] in ("yes/no", "number", "other")
            assert questions[sub][qid]["question"].startswith(x["question_type"])
            assert [y["answer_id"] for y in x["answers"]] == list(range(1, 11))
            assert all(y["answer_confidence"] in ("yes", "maybe", "no") for y in x["answers"])
            # human variation normalises back: the multiple-choice answer is the normalised majority
            votes = collections.Counter(vqa_normalise(y["answer"]) for y in x["answers"])
            assert votes.most_common(1)[0][0] == x["multiple_choice_answer"]
            if x["answer_type"] == "yes/no":
                assert x["multiple_choice_answer"] in ("yes", "no")
            if x["answer_type"] == "number":
                assert x["multiple_choice_answer"].isdigit()
            all_answers.append(x["multiple_choice_answer"])
    majority = collections.Counter(all_answers).most_common(1)[0][1] / len(all_answers)
    assert majority < 0.4, collections.Counter(all_answers).most_common(3)


# --- MSRVTT --------------------------------------------------------------------------------------------------

def decode_video(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_msrvtt_files(root):
    ms = root / "msrvtt"
    data = load(ms / "MSRVTT_data.json")
    assert set(data) == {"info", "videos", "sentences"}
    videos = {v["id"]: v for v in data["videos"]}
    for v in data["videos"]:
        assert set(v) == {"video_id", "category", "url", "start time", "end time", "split", "id"}
        assert v["video_id"] == f"video{v['id']}" and v["split"] in ("train", "validate", "test")
        frames = decode_video(ms / "videos" / f"{v['video_id']}.mp4")
        assert len(frames) == demo.VIDEO_FRAMES
        assert frames[0].shape == (demo.VIDEO_SIZE, demo.VIDEO_SIZE, 3)
    per_video = collections.Counter(s["video_id"] for s in data["sentences"])
    assert set(per_video) == {v["video_id"] for v in data["videos"]}
    assert [s["sen_id"] for s in data["sentences"]] == list(range(len(data["sentences"])))
    for split, name in (("train", "train"), ("validate", "val"), ("test", "test")):
        qa = load(ms / f"{name}_qa.json")
        assert qa and [x["id"] for x in qa] == list(range(len(qa)))
        for x in qa:
            assert set(x) == {"question", "answer", "video_id", "id", "category_id"}
            assert isinstance(x["video_id"], int) and videos[x["video_id"]]["split"] == split
    with open(ms / "MSRVTT_JSFUSION_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["key", "vid_key", "video_id", "sentence"]
    test_ids = {v["video_id"] for v in data["videos"] if v["split"] == "test"}
    assert {r["video_id"] for r in rows} == test_ids
    for i, r in enumerate(rows):
        assert r["key"] == f"ret{i}" and r["vid_key"] == "msr" + r["video_id"][len("video"):] and r["sentence"]


def test_msrvtt_answers_need_and_match_motion(root):
    """Direction answers match the colour centroid's motion; order answers match first appearance."""
    ms = root / "msrvtt"
    qa = [x for name in ("train", "val", "test") for x in load(ms / f"{name}_qa.json")]
    by_video = collections.defaultdict(list)
    for x in qa:
        by_video[x["video_id"]].append(x)
    move = re.compile(rf"which way does the ({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) move\?")
    axis = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}  # (x=0 / y=1, sign)
    for vid, items in by_video.items():
        frames = decode_video(ms / "videos" / f"video{vid}.mp4")
        (colour, shape), direction = next((move.fullmatch(x["question"]).groups(), x["answer"])
                                          for x in items if move.fullmatch(x["question"]))
        masks = [colour_mask(f, colour) for f in frames]
        visible = [t for t, m in enumerate(masks) if m.sum() >= 6]
        assert len(visible) >= 4, (vid, colour)
        ys, xs = np.nonzero(masks[visible[0]])
        start = (xs.mean(), ys.mean())
        ys, xs = np.nonzero(masks[visible[-1]])
        end = (xs.mean(), ys.mean())
        a, sign = axis[direction]
        shift = [end[0] - start[0], end[1] - start[1]]
        assert sign * shift[a] > 4 and abs(shift[a]) > 2 * abs(shift[1 - a]), (vid, direction, shift)

        # the other object: the remaining strong colour of the last frame
        others = [c for c in COLORS if c != colour and colour_mask(frames[-1], c, 30).sum() >= 8]
        assert len(others) == 1, (vid, others)
        other_first = next(t for t, f in enumerate(frames) if colour_mask(f, others[0], 30).sum() >= 8)
        mover_first = visible[0]
        assert abs(other_first - mover_first) >= 2
        first_colour = colour if mover_first < other_first else others[0]
        for x in items:
            if x["question"] == "what color appears first?":
                assert x["answer"] == first_colour
            elif x["question"] == "what appears first?" and x["answer"] == shape:
                assert mover_first < other_first
            elif x["question"] == "what appears last?" and x["answer"] == shape:
                assert mover_first > other_first


# --- LVIS ----------------------------------------------------------------------------------------------------

def test_lvis(root):
    lv = root / "lvis"
    train, val = load(lv / "lvis_v1_train.json"), load(lv / "lvis_v1_val.json")
    assert train["categories"] == val["categories"]
    cats = {c["id"]: c for c in train["categories"]}
    for c in cats.values():
        assert set(c) == {"id", "name", "synonyms", "def", "frequency", "synset", "image_count", "instance_count"}
        assert re.fullmatch(r"[a-z]+_[a-z]+", c["name"]) and c["synonyms"] == [c["name"].replace("_", " ")]
        assert c["frequency"] in ("r", "c", "f")
    assert [c["name"] for c in train["categories"]] == sorted(c["name"] for c in train["categories"])
    for split, d in (("train", train), ("val", val)):
        assert set(d) == {"info", "licenses", "images", "annotations", "categories"}
        images = {im["id"]: im for im in d["images"]}
        present = collections.defaultdict(set)
        for a in d["annotations"]:
            assert set(a) == {"id", "image_id", "category_id", "bbox", "area", "segmentation"}
            im = images[a["image_id"]]
            x, y, w, h = a["bbox"]
            assert all(isinstance(v, float) for v in a["bbox"])
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= im["width"] and y + h <= im["height"]
            poly = np.array(a["segmentation"][0]).reshape(-1, 2)
            assert np.allclose([poly[:, 0].min(), poly[:, 1].min(), poly[:, 0].max(), poly[:, 1].max()],
                               [x, y, x + w, y + h], atol=0.02)  # tight around the drawn polygon
            assert 0 < a["area"] <= w * h + 0.01
            present[a["image_id"]].add(a["category_id"])
        for im in d["images"]:
            assert set(im) == {"id", "width", "height", "coco_url", "flickr_url", "license", "date_captured",
                               "neg_category_ids", "not_exhaustive_category_ids"}
            assert im["coco_url"] == f"http://images.cocodataset.org/{split}2017/{im['id']:012d}.jpg"
            assert present[im["id"]], "every image has an object"
            assert not set(im["neg_category_ids"]) & present[im["id"]]  # negatives verifiably absent
            check_image(lv / f"{split}2017" / f"{im['id']:012d}.jpg")
    # counts match the train annotations
    img_sets, inst = collections.defaultdict(set), collections.Counter()
    for a in train["annotations"]:
        img_sets[a["category_id"]].add(a["image_id"])
        inst[a["category_id"]] += 1
    for cid, c in cats.items():
        assert c["image_count"] == len(img_sets[cid]) and c["instance_count"] == inst[cid], c["name"]
    rare = [c for c in cats.values() if c["frequency"] == "r"]
    assert rare and all(1 <= c["image_count"] <= 10 for c in rare)
    assert {c["frequency"] for c in cats.values()} == {"r", "c", "f"}
    # open vocabulary: rare categories recombine colours and shapes seen in base categories
    base = [c["name"].split("_") for c in cats.values() if c["frequency"] != "r"]
    for c in rare:
        colour, shape = c["name"].split("_")
        assert any(b[0] == colour for b in base) and any(b[1] == shape for b in base)
    # every category, rare included, is in val
    assert {a["category_id"] for a in val["annotations"]} == set(cats)


def test_lvis_boxes_match_pixels(root):
    """Pixels of a category's colour lie inside that colour's boxes, and every box holds some."""
    lv = root / "lvis"
    d = load(lv / "lvis_v1_train.json")
    names = {c["id"]: c["name"] for c in d["categories"]}
    anns = collections.defaultdict(list)
    for a in d["annotations"]:
        anns[a["image_id"]].append(a)
    for im in d["images"][:20]:
        rgb = check_image(lv / "train2017" / f"{im['id']:012d}.jpg")
        for colour in {names[a["category_id"]].split("_")[0] for a in anns[im["id"]]}:
            inside = np.zeros(rgb.shape[:2], bool)
            for a in anns[im["id"]]:
                if names[a["category_id"]].startswith(colour + "_"):
                    x, y, w, h = a["bbox"]
                    assert colour_mask(rgb[int(y): int(y + h) + 1, int(x): int(x + w) + 1], colour).sum() >= 3
                    inside[max(0, int(y) - 1): int(y + h) + 2, max(0, int(x) - 1): int(x + w) + 2] = True
            assert not (colour_mask(rgb, colour, 30) & ~inside).any(), (im["id"], colour)


# --- tokenizer, caching, determinism -------------------------------------------------------------------------

def test_tokenizer_covers_train_texts(root):
    tok = build_tokenizer(root / "tokenizer.json")
    assert tok.vocab_size < 1000
    for text in ["question: how many circles are there? answer: 2", "a large orange star at the bottom",
                 "which way does the blue cross move?"]:
        assert tok.unk_id not in tok.encode(text)
        assert tok.decode(tok([text], 64)[0]) == text
    for word in ["question", "answer", "red", "circle", "crosses", "left", "appears"]:
        assert len(tok.encode(word)) == 1, word  # whole words, not characters
    caps = load(root / "coco/annotations/captions_train2017.json")["annotations"]
    for a in caps[:50]:
        assert tok.decode(tok.encode(a["caption"])) == a["caption"]


def test_idempotent(root, capsys):
    manifest = root / "manifest.json"
    before = {p: p.stat().st_mtime_ns for p in (manifest, root / "coco/dataset_coco.json")}
    assert write_demo(root, seed=0, tiny=True) == root
    assert "demo data already at" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_deterministic_and_seeded(tmp_path, root):
    a = write_demo(tmp_path / "a", seed=0, tiny=True)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    for rel in files:  # JSON, JPEG, tar and mp4 alike
        assert (a / rel).read_bytes() == (root / rel).read_bytes(), rel
    b = write_demo(tmp_path / "b", seed=1, tiny=True)
    assert (b / "coco/dataset_coco.json").read_bytes() != (a / "coco/dataset_coco.json").read_bytes()


def test_replace_and_force(tmp_path, capsys):
    out = tmp_path / "w"
    write_demo(out, seed=0, tiny=True)
    write_demo(out, seed=1, tiny=True)  # another demo world: replaced
    assert load(out / "manifest.json")["seed"] == 1
    os.utime(out / "manifest.json", ns=(0, 0))  # marked old: a rewrite shows, whatever the clock's resolution
    demo.main(["--out", str(out), "--seed", "1", "--tiny", "--force"])
    assert (out / "manifest.json").stat().st_mtime_ns != 0
    assert "written to" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp or old folders left


def test_refuses_foreign_folder(tmp_path):
    out = tmp_path / "real_data"
    out.mkdir()
    (out / "precious.txt").write_text("not demo data")
    with pytest.raises(FileExistsError, match="--force"):
        write_demo(out, tiny=True)
    assert (out / "precious.txt").exists()


HASHES = TEST_DATA / "demo_hashes.json"


def file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_unchanged_world(root):
    """The tiny seed-0 world, file by file, as written before the demo package was split per writer
    (tests/data/demo_hashes.json). A deliberate change to the world bumps demo.VERSION and rewrites that
    file: python -c "from tests.test_demo_data import *; write_hashes()" (mp4 bytes also follow the
    PyAV/x264 build, JPEG bytes the Pillow/libjpeg build: regenerate after upgrading those)."""
    want, got = json.loads(HASHES.read_text()), file_hashes(root)
    changed = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    assert not changed, f"{len(changed)} demo files differ from {HASHES}: {changed[:10]}"


def write_hashes() -> None:
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        HASHES.write_text(json.dumps(file_hashes(write_demo(Path(tmp) / "world", seed=0, tiny=True)), indent=1) + "\n")
