"""Fuzzing the readers with hypothesis (helpers in tests/helpers/fuzz.py, reusable by other readers).

webdataset shards (noisy web data): every bad sample or shard is skipped and counted, never a
crash, and every sample that comes out is exactly one that went in (its own image with its own
caption). COCO Karpathy JSON and images (curated data): either a correct result or one
ValueError / FileNotFoundError naming the file, the record and the field."""

import json
import logging
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mammut_pl.data.coco import CaptionPairs, open_image, read_karpathy
from mammut_pl.data.transforms import MEAN, STD, ImageError, image_transform
from mammut_pl.data.webdata import WebPairStream
from mammut_pl.runtime import error_message
from tests.helpers.fuzz import (PALETTE, assert_clear_error, bad_image_bytes, corrupt_file, image_bytes, json_mutations,
                  tar_corruption, write_tar)

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


@pytest.fixture(autouse=True, scope="module")
def quiet_skips():
    """Thousands of skip warnings: quiet here, restored for the other test modules."""
    logger = logging.getLogger("mammut_pl.data.webdata")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


# --- webdataset shards ------------------------------------------------------------------------------
SAMPLE_KINDS = ["good", "good", "good", "bad_image", "empty_caption", "space_caption", "non_utf8_caption",
                "no_txt", "no_image", "garbled_json"]


def sample_members(i, kind, bad_jpg=b"\xff\xd8 cut", garbled_json=b"{not json"):
    """The tar members of sample i of the given kind; good ones carry a caption naming their colour."""
    color = i % len(PALETTE)
    members = {"jpg": image_bytes(PALETTE[color]), "txt": f"sample {i:03d} colour {color} end".encode(),
               "json": b'{"url": "http://x", "w": 16}'}
    if kind == "bad_image":
        members["jpg"] = bad_jpg
    elif kind == "empty_caption":
        members["txt"] = b""
    elif kind == "space_caption":
        members["txt"] = b" \t\n "
    elif kind == "non_utf8_caption":
        members["txt"] = b"\xff\xfe caption \xc3\x28"
    elif kind == "no_txt":
        del members["txt"]
    elif kind == "no_image":
        del members["jpg"]
    elif kind == "garbled_json":  # the sidecar is not read: the pair is still good
        members["json"] = garbled_json
    return members


@st.composite
def shard_spec(draw):
    """A shard: a list of (kind, members) samples."""
    kinds = draw(st.lists(st.sampled_from(SAMPLE_KINDS), min_size=1, max_size=8))
    return [(kind, sample_members(i, kind, draw(bad_image_bytes()), draw(st.binary(max_size=30))))
            for i, kind in enumerate(kinds)]


def good_captions(spec):
    return [m["txt"].decode() for kind, m in spec if kind in ("good", "garbled_json")]


def read_stream(urls):
    """(samples, skips counted) of the training stream, batch size 1, no shuffling."""
    def unit(items):  # a batch of one sample, untouched
        return {"item": items[0], "skipped": sum(it["skipped"] for it in items)}

    stream = WebPairStream(urls, image_transform(16, train=False), unit, batch_size=1, shuffle_buffer=0, seed=0)
    out, reported = [], 0
    for batch in stream:
        out.append(batch["item"])
        reported += batch["skipped"]
    # the batches report every skip (the last one also those after it) -- when there is a batch at all
    assert reported == (stream.counter.total if out else 0)
    return out, stream.counter.total


def assert_genuine(item):
    """The image is the one written with this caption (its colour), not another sample's."""
    color = PALETTE[int(item["caption"].split()[3])]
    expected = (torch.tensor(color) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    got = item["image"].mean(dim=(1, 2))
    assert torch.allclose(got, expected, atol=0.15), (item["caption"], got, expected)


@FUZZ
@given(specs=st.lists(shard_spec(), min_size=1, max_size=3),
       corruptions=st.lists(tar_corruption(), min_size=3, max_size=3))
def test_fuzzed_web_shards_never_crash_and_never_mix_samples(tmp_path_factory, specs, corruptions):
    root = tmp_path_factory.mktemp("shards")
    urls, expected, intact, bad_shards = [], [], [], 0
    for s, spec in enumerate(specs):
        members = [(f"{s:05d}{i:04d}.{ext}", data) for i, (_, m) in enumerate(spec) for ext, data in m.items()]
        path = write_tar(root / f"{s:05d}.tar", members)
        corrupt_file(path, corruptions[s])
        urls.append(str(path))
        expected += good_captions(spec)
        intact.append(corruptions[s][0] == "none")
        bad_shards += corruptions[s][0] in ("zero", "garbage")
    items, skipped = read_stream(urls)  # never raises

    captions = [it["caption"] for it in items]
    for it in items:
        assert_genuine(it)  # its own image, whatever happened around it
    if all(intact):
        assert captions == expected
        assert skipped == sum(len(spec) for spec in specs) - len(expected)  # every bad sample counted once
    else:  # damaged shards: what comes out is a subsequence of the good samples, in order
        remaining = iter(expected)
        assert all(any(c == e for e in remaining) for c in captions), (captions, expected)
        assert skipped >= bad_shards  # an unreadable shard is counted too
    shutil.rmtree(root)


def test_every_bad_kind_is_skipped_and_counted(tmp_path):
    """Each kind of bad sample, and each kind of bad shard, once (the deterministic cousin of the fuzz test)."""
    members = [(f"{i:09d}.{ext}", data) for i, kind in enumerate(SAMPLE_KINDS + ["good"])
               for ext, data in sample_members(i, kind).items()]
    good = write_tar(tmp_path / "00000.tar", members)
    (tmp_path / "00001.tar").write_bytes(b"")  # zero-size
    (tmp_path / "00002.tar").write_bytes(good.read_bytes()[:2000])  # truncated
    (tmp_path / "00003.tar").write_bytes(b"not a tar at all" * 100)  # garbage
    items, skipped = read_stream([str(tmp_path / f"0000{i}.tar") for i in range(4)])
    n_good = sum(k in ("good", "garbled_json") for k in SAMPLE_KINDS) + 1
    assert len(items) == n_good  # only shard 0's good samples: the truncated copy is cut before them
    for it in items:
        assert_genuine(it)
    n_bad = len(SAMPLE_KINDS) + 1 - n_good
    assert skipped >= n_bad + 3  # 6 bad samples + 3 bad shards (+ the samples the truncation cut)


# --- COCO Karpathy JSON --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    from mammut_pl.data.demo import write_demo

    return write_demo(tmp_path_factory.mktemp("world"), tiny=True) / "coco"


def small_karpathy(coco):
    doc = json.loads((coco / "dataset_coco.json").read_text())
    doc["images"] = doc["images"][:4]
    for rec in doc["images"]:
        rec["sentences"] = rec["sentences"][:2]
    return doc


def check_result(images, doc_images):
    assert images, "a successful read returns images"
    ids = [im.image_id for im in images]
    assert len(set(ids)) == len(ids)
    for im in images:
        assert type(im.image_id) is int and isinstance(im.path, str) and im.split.strip()
        assert im.captions and all(isinstance(c, str) and c == c.strip() and c for c in im.captions)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_karpathy_json_reads_correctly_or_names_file_record_field(coco, tmp_path_factory, data):
    doc = small_karpathy(coco)
    m = data.draw(json_mutations(doc))
    root = tmp_path_factory.mktemp("k")
    (root / "images").mkdir()
    path = root / "dataset_coco.json"
    path.write_text(m.text)
    try:
        images = read_karpathy(root)
    except (ValueError, FileNotFoundError) as err:
        assert_clear_error(err, path, m)
    else:
        check_result(images, m.doc)
    shutil.rmtree(root)


@pytest.mark.parametrize("text, why", [
    (b"", "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"images": {}}', "field 'images' should be list"),
    (b'{"images": [{"filename": "a.jpg", "split": "train", "cocoid": true, "sentences": [{"raw": "x"}]}]}',
     r"images\[0\]: needs an integer 'cocoid'"),
    (b'{"images": [{"filename": "a.jpg", "split": "", "cocoid": 1, "sentences": [{"raw": "x"}]}]}',
     r"images\[0\]: field 'split' is empty"),
    (b'{"images": [{"filename": "a.jpg", "split": "train", "cocoid": 1, "sentences": [{"raw": " "}]}]}',
     r"images\[0\]: no non-empty caption"),
])
def test_karpathy_edge_cases(tmp_path, text, why):
    (tmp_path / "dataset_coco.json").write_bytes(text)
    with pytest.raises(ValueError, match=why) as err:
        read_karpathy(tmp_path)
    assert_clear_error(err.value, tmp_path / "dataset_coco.json")


def test_duplicate_ids_are_an_error(coco, tmp_path):
    doc = small_karpathy(coco)
    doc["images"][2]["cocoid"] = doc["images"][0]["cocoid"]
    (tmp_path / "dataset_coco.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"images\[2\]: field 'cocoid': image id \d+ repeats images\[0\]"):
        read_karpathy(tmp_path)


# --- images in map-style datasets ---------------------------------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=bad_image_bytes())
def test_undecodable_images_name_the_image_and_record(coco, tmp_path_factory, bad):
    root = tmp_path_factory.mktemp("c")
    shutil.copytree(coco, root / "coco")
    images = read_karpathy(root / "coco")
    victim = images[1]
    open(victim.path, "wb").write(bad)
    with pytest.raises(ImageError) as err:
        open_image(victim)
    msg = str(err.value)
    assert victim.path in msg and "images[1]" in msg and "dataset_coco.json" in msg
    assert isinstance(err.value, ValueError) and isinstance(err.value, OSError)
    shutil.rmtree(root)


def test_missing_and_corrupt_images_through_a_worker_are_one_line(coco, tmp_path):
    """In a DataLoader worker the error comes back wrapped in the worker's traceback; the CLIs
    print only the original line (runtime.error_message)."""
    shutil.copytree(coco, tmp_path / "coco")
    images = read_karpathy(tmp_path / "coco")
    train = [im for im in images if im.split == "train"][:2]
    open(train[1].path, "wb").write(b"GIF89a broken")
    loader = torch.utils.data.DataLoader(CaptionPairs(train, image_transform(16, train=False)), batch_size=None,
                                         num_workers=1)
    with pytest.raises(ValueError) as err:
        list(loader)
    assert "Original Traceback" in str(err.value)
    line = error_message(err.value)
    assert line.startswith(f"cannot decode image {train[1].path}") and train[1].source in line
    assert "\n" not in line
    (tmp_path / "coco" / train[0].path).unlink()
    with pytest.raises(FileNotFoundError, match=f"image file not found: {train[0].path}.*images"):
        CaptionPairs(train, image_transform(16, train=False))[0]


# --- VQAv2 questions + annotations JSON ----------------------------------------------------------------
def small_vqa(world, n=4):
    """The first n train questions and their annotations, from the demo world's official-format files."""
    from mammut_pl.data.vqav2 import annotation_file, question_file

    root = world / "vqav2"
    q = json.loads(question_file(root, "train2014").read_text())
    a = json.loads(annotation_file(root, "train2014").read_text())
    q["questions"] = q["questions"][:n]
    keep = {r["question_id"] for r in q["questions"]}
    a["annotations"] = [r for r in a["annotations"] if r["question_id"] in keep]
    return q, a


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_vqav2_json_reads_what_the_files_say_or_names_file_record_field(coco, tmp_path_factory, data):
    from mammut_pl.data.vqav2 import annotation_file, question_file, read_vqav2

    docs = dict(zip(("questions", "annotations"), small_vqa(coco.parent)))
    target = data.draw(st.sampled_from(sorted(docs)))  # which of the two files is damaged
    m = data.draw(json_mutations(docs[target]))
    root = tmp_path_factory.mktemp("v")
    paths = {"questions": question_file(root, "train2014"), "annotations": annotation_file(root, "train2014")}
    for name, doc in docs.items():
        paths[name].write_text(m.text if name == target else json.dumps(doc))
    try:
        questions = read_vqav2(root, "train2014")
    except (ValueError, FileNotFoundError) as err:
        if m.op == "delete" and len(m.path) == 2:  # a whole record gone: its partner in the other file is named
            assert_clear_error(err, paths[target])
            assert "question_id" in str(err)
        else:
            assert_clear_error(err, paths[target], m, list_key=target)
    else:  # every question is exactly what the (possibly mutated) files say
        docs[target] = json.loads(m.text)  # (a garbled text can still be valid JSON)
        anns = {a["question_id"]: a for a in docs["annotations"]["annotations"]}
        assert [q.question_id for q in questions] == [r["question_id"] for r in docs["questions"]["questions"]]
        for q, rec in zip(questions, docs["questions"]["questions"]):
            ann = anns[q.question_id]
            assert (q.image_id, q.question) == (rec["image_id"], rec["question"].strip()) and q.question
            assert q.answers == [x["answer"] for x in ann["answers"]] and q.answers
            assert q.target == ann["multiple_choice_answer"].strip() and q.target
            assert (q.answer_type, q.question_type) == (ann["answer_type"], ann["question_type"])
            assert q.image_path.endswith(f"COCO_train2014_{rec['image_id']:012d}.jpg")
    shutil.rmtree(root)
