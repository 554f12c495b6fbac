"""COCO (Karpathy) and webdataset readers on the embedded demo data, plus broken inputs."""

import io
import json
import tarfile

import pytest
import torch
from PIL import Image

from mammut_pl.data.coco import CocoCaptionsDataModule, read_karpathy
from mammut_pl.data.tokenizer import build_tokenizer
from mammut_pl.data.webdata import WebDataModule, shard_urls


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    from mammut_pl.data.demo import write_demo

    return write_demo(tmp_path_factory.mktemp("demo"), tiny=True)


@pytest.fixture(scope="session")
def tok(demo):
    return build_tokenizer(str(demo / "tokenizer.json"))


def test_karpathy_reader_round_trip(demo):
    """Everything the demo writer put in dataset_coco.json comes back, images exist."""
    raw = json.loads((demo / "coco" / "dataset_coco.json").read_text())
    images = read_karpathy(demo / "coco")
    assert len(images) == len(raw["images"])
    for rec, im in zip(raw["images"], images):
        assert im.captions == [s["raw"].strip() for s in rec["sentences"]]
        assert im.split == rec["split"]
        assert im.image_id == rec["cocoid"]
        Image.open(im.path).verify()


def test_coco_retrieval_batches_hold_every_caption(demo, tok):
    dm = CocoCaptionsDataModule(str(demo / "coco"), tok, image_size=32, context_length=24,
                                batch_size=4, eval_batch_size=3, num_workers=0)
    val = dm.split("val")
    batches = list(dm.val_dataloader())
    assert sum(len(b["image_ids"]) for b in batches) == len(val)
    assert sum(len(b["text_ids"]) for b in batches) == sum(len(im.captions) for im in val)
    b = batches[0]
    assert b["images"].shape[1:] == (3, 32, 32)
    assert b["tokens"].shape[0] == len(b["text_ids"]) == len(b["text_image_ids"])
    # each text points at its own image
    for i, caps in enumerate(b["captions"]):
        assert (b["text_image_ids"] == b["image_ids"][i]).sum() == len(caps)
    train = next(iter(dm.train_dataloader()))
    assert train["images"].shape == (4, 3, 32, 32) and train["tokens"].shape[0] == 4


def test_missing_karpathy_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset_coco.json"):
        read_karpathy(tmp_path)


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d["images"][0].pop("sentences"), "images\\[0\\]: missing field 'sentences'"),
    (lambda d: d["images"][1].update(filename=7), "images\\[1\\]: field 'filename' should be str"),
    (lambda d: d.pop("images"), "missing field 'images'"),
    (lambda d: d["images"][0]["sentences"][0].update(raw=None), "sentences\\[0\\]: field 'raw'"),
])
def test_karpathy_schema_errors_name_file_and_field(demo, tmp_path, mutate, match):
    data = json.loads((demo / "coco" / "dataset_coco.json").read_text())
    mutate(data)
    (tmp_path / "dataset_coco.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match) as err:
        read_karpathy(tmp_path)
    assert "dataset_coco.json" in str(err.value)


def test_truncated_json_is_named(tmp_path):
    (tmp_path / "dataset_coco.json").write_text('{"images": [')
    with pytest.raises(ValueError, match="dataset_coco.json: not valid JSON"):
        read_karpathy(tmp_path)


# --- webdataset -----------------------------------------------------------------------------------
def count_samples(urls):
    n = 0
    for u in urls:
        with tarfile.open(u) as tf:
            n += sum(m.name.endswith(".txt") for m in tf.getmembers())
    return n


def test_webdata_epoch_sees_every_sample_once(demo, tok):
    dm = WebDataModule(str(demo / "webdata"), tok, image_size=32, context_length=24, batch_size=1,
                       num_workers=0, shuffle_buffer=0)
    batches = list(dm.train_dataloader())
    assert len(batches) == count_samples(dm.urls)
    assert all(int(b["skipped"]) == 0 for b in batches)
    # every caption decodes back to the .txt member
    texts = sorted(tok.decode(b["tokens"][0].tolist()) for b in batches)
    assert len(set(texts)) > 1


def _write_shard(path, samples):
    with tarfile.open(path, "w") as tf:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def _jpeg(color=(200, 30, 30)):
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), color).save(buf, "JPEG")
    return buf.getvalue()


def test_corrupt_web_samples_are_skipped_and_counted(tmp_path, tok, caplog):
    good = {"jpg": _jpeg(), "txt": b"a red square", "json": b"{}"}
    _write_shard(tmp_path / "00000.tar", [
        ("000000000", good),
        ("000000001", {"jpg": b"not a jpeg at all", "txt": b"a red square"}),  # undecodable image
        ("000000002", {"jpg": _jpeg()[:50], "txt": b"a red square"}),  # truncated image
        ("000000003", {"jpg": _jpeg(), "txt": b"   "}),  # empty caption
        ("000000004", {"jpg": _jpeg(), "txt": b"\xff\xfe\xfa"}),  # not UTF-8
        ("000000005", {"txt": b"caption without image"}),
        ("000000006", good),
    ])
    (tmp_path / "00001.tar").write_bytes(b"")  # zero-size shard
    _write_shard(tmp_path / "00002.tar", [("000020000", good)])
    dm = WebDataModule(str(tmp_path), tok, image_size=32, context_length=24, batch_size=1,
                       num_workers=0, shuffle_buffer=0)
    batches = list(dm.train_dataloader())
    assert len(batches) == 3  # the three good samples
    assert sum(int(b["skipped"]) for b in batches) >= 5  # five bad samples (+ the empty shard)
    assert "skipping sample '000000001'" in caplog.text


def test_missing_shards_named(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="no \\*.tar shards"):
        shard_urls(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="data.root"):
        shard_urls(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="data.webdata.shards: 2 shard"):
        shard_urls(str(tmp_path), "{00000..00001}.tar")
