"""The fast web-shard image path (FastCrop + device normalisation), shards from fsspec URLs, and
the training loader's length. References: open_clip's own train transform (PSNR on the same crop
parameters), torchvision's RandomResizedCrop (the crop distribution), torchvision's
ToTensor + Normalize (the normalisation), and batches counted by iterating the loader."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from scipy import stats
from torchvision import transforms as T

from bench import data as bench_data
from mammut_pl.data.transforms import MEAN, STD, FastCrop, image_transform, normalize_batch, normalize_images
from mammut_pl.data.webdata import PairBatcher, WebDataModule, WebPairStream, read_shard_sizes, shard_urls
from mammut_pl.tasks.base import MaMMUTTask


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0 ** 2 / mse)


def open_clip_pixels(out: torch.Tensor) -> np.ndarray:
    """open_clip's normalised (3, H, W) output back to [0, 255] floats."""
    return ((out * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]) * 255).numpy()


@pytest.mark.parametrize("size,mode,scale", [(256, "border", 1), (512, "keep_ratio_largest", 1),
                                             (512, "keep_ratio_largest", 2)])
def test_fast_crop_matches_open_clips_train_transform(size, mode, scale, monkeypatch):
    """Real photos as img2dataset stores them (JPEG q95), open_clip's train transform vs FastCrop on the
    SAME crop (same seed: both draw RandomResizedCrop.get_params from torch's RNG): >= 35 dB. scale=2:
    1024 px images, where the crop is >= 2x the output and the JPEG is decoded at a DCT scale (draft)."""
    import open_clip

    drafted = []
    real_draft = Image.Image.draft
    monkeypatch.setattr("PIL.JpegImagePlugin.JpegImageFile.draft",
                        lambda self, mode, size: drafted.append(size) or real_draft(self, mode, size), raising=False)
    reference = open_clip.image_transform(224, is_train=True, aug_cfg={"scale": (0.8, 1.0)})
    fast = FastCrop(224, scale=(0.8, 1.0))
    values = []
    for k, img in enumerate(bench_data.photo_variants(6, seed=3)):
        img = bench_data.img2dataset_resize(img, size, mode)
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.LANCZOS) if scale > 1 else img
        data = jpeg(img)
        torch.manual_seed(k)
        ref = open_clip_pixels(reference(Image.open(io.BytesIO(data)).convert("RGB")))
        torch.manual_seed(k)
        out = fast(Image.open(io.BytesIO(data)))
        assert out.dtype == torch.uint8 and out.shape == (3, 224, 224)
        values.append(psnr(ref, out.numpy()))
    assert min(values) >= 35, values
    if scale == 2:
        assert drafted, "the 1024 px JPEGs were never decoded at a reduced DCT scale"
    # another picture (the same one mirrored) is far off: the comparison can fail
    torch.manual_seed(k)
    other = fast(Image.open(io.BytesIO(jpeg(ImageOps.mirror(img)))))
    assert psnr(ref, other.numpy()) < 25


def test_pil_resize_backend_agrees_with_the_torch_one():
    img = bench_data.img2dataset_resize(next(iter(bench_data.photo_variants(1))), 512, "keep_ratio_largest")
    data = jpeg(img)
    a, b = (FastCrop(224, train=False, resize=r)(Image.open(io.BytesIO(data))) for r in ("torch", "pil"))
    assert psnr(a.numpy(), b.numpy()) > 40
    with pytest.raises(ValueError, match="resize must be"):
        FastCrop(224, resize="cv2")


def test_crop_boxes_follow_torchvisions_distribution():
    """FastCrop.box is RandomResizedCrop.get_params: area fraction and aspect ratio of 400 boxes match
    an independent draw of torchvision's own (KS tests), and lie inside scale / ratio."""
    img = Image.new("RGB", (500, 333))
    fast = FastCrop(224, scale=(0.5, 1.0))
    torch.manual_seed(1)
    boxes = [fast.box(img) for _ in range(400)]
    torch.manual_seed(2)
    ref = [T.RandomResizedCrop.get_params(img, [0.5, 1.0], [3 / 4, 4 / 3]) for _ in range(400)]
    area = [(x1 - x0) * (y1 - y0) / (500 * 333) for x0, y0, x1, y1 in boxes]
    area_ref = [h * w / (500 * 333) for _, _, h, w in ref]
    ratio = [(x1 - x0) / (y1 - y0) for x0, y0, x1, y1 in boxes]
    ratio_ref = [w / h for _, _, h, w in ref]
    assert stats.ks_2samp(area, area_ref).pvalue > 0.01 and stats.ks_2samp(ratio, ratio_ref).pvalue > 0.01
    assert all(0 <= x0 < x1 <= 500 and 0 <= y0 < y1 <= 333 for x0, y0, x1, y1 in boxes)


def test_device_normalisation_equals_torchvisions_and_happens_once():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8, generator=g)
    ref = torch.stack([T.Normalize(MEAN, STD)(x.float() / 255) for x in images])
    out = normalize_images(images)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert normalize_images(out) is out  # floats pass: normalised exactly once
    batch = {"images": images, "tokens": torch.ones(2, 3, dtype=torch.long)}
    hooked = MaMMUTTask.on_after_batch_transfer(None, batch, 0)  # what every task does after the transfer
    torch.testing.assert_close(hooked["images"], ref, atol=1e-5, rtol=1e-5)
    assert hooked["tokens"] is batch["tokens"] and batch["images"].dtype == torch.uint8  # input untouched
    again = normalize_batch(hooked)
    assert again["images"] is hooked["images"]
    assert normalize_batch([images]) == [images]  # not a dict batch: untouched


# --------------------------------------------------------------------------------------
# shards from fsspec URLs
# --------------------------------------------------------------------------------------
class Captions:
    def __call__(self, items):
        return {"images": torch.stack([it["image"] for it in items]), "captions": [it["caption"] for it in items],
                "skipped": torch.tensor(sum(it["skipped"] for it in items))}


def batches(urls, **kw):
    stream = WebPairStream(urls, FastCrop(32, scale=(0.8, 1.0)), Captions(), 3, shuffle_buffer=4, seed=0,
                           rank=0, world=1, **kw)
    return [(b["images"], b["captions"]) for b in stream]


def test_shards_from_memory_and_file_urls_read_like_local_files(tmp_path):
    local = bench_data.write_img2dataset_shards(tmp_path / "shards", 10, 64, "border", per_shard=5)
    fs = fsspec.filesystem("memory")
    for u in local:
        fs.pipe(f"/bucket/{Path(u).name}", Path(u).read_bytes())
    expected = batches(local)
    assert len(expected) == 3  # 10 samples, batches of 3: the last partial one is dropped
    for urls in (shard_urls("memory://bucket", "{00000..00001}.tar"), shard_urls("memory://bucket"),
                 shard_urls(str(tmp_path), "file://" + str(tmp_path / "shards" / "{00000..00001}.tar"))):
        got = batches(urls)
        assert len(got) == len(expected)
        for (a, ca), (b, cb) in zip(got, expected):
            assert ca == cb and torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="data.webdata.shards: 1 shard"):
        shard_urls("memory://bucket", "{00000..00002}.tar")
    with pytest.raises(FileNotFoundError, match="data.root: no \\*.tar shards at memory://nowhere"):
        shard_urls("memory://nowhere")
    with pytest.raises(ValueError, match="pipe:"):
        shard_urls(str(tmp_path), "pipe:curl -s http://x/{0..1}.tar")
    with pytest.raises(ValueError, match="data.webdata.shards: 'nosuch://b/0.tar': cannot read nosuch://"):
        shard_urls(str(tmp_path), "nosuch://b/0.tar")


# --------------------------------------------------------------------------------------
# the loader's length: the progress bar's total
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_length_is_the_number_of_batches_an_epoch_yields(tmp_path, num_workers):
    """Shards of 7, 7, 5 samples, batch 3: each worker drops its own partial batch, so the length
    depends on how the shards fall to workers; it must equal what iterating yields."""
    folder = tmp_path / "shards"
    urls = []
    for i, n in enumerate((7, 7, 5)):
        urls += bench_data.write_img2dataset_shards(tmp_path / f"s{i}", n, 48, "border")
    folder.mkdir()
    for i, u in enumerate(urls):
        Path(u).rename(folder / f"{i:05d}.tar")
        Path(u).with_name("00000_stats.json").rename(folder / f"{i:05d}_stats.json")
    from mammut_pl.data.tokenizer import ClipTokenizer

    dm = WebDataModule(str(folder), ClipTokenizer(), 32, 16, batch_size=3, num_workers=num_workers, shuffle_buffer=4)
    assert dm.sizes == [7, 7, 5]
    loader = dm.train_dataloader()
    got = list(loader)
    assert len(loader) == len(got) == ({0: 19 // 3, 2: (7 + 5) // 3 + 7 // 3}[num_workers])
    assert all(b["images"].dtype == torch.uint8 for b in got)


def test_loader_length_from_sizes_json_resampled_and_unknown(tmp_path):
    local = bench_data.write_img2dataset_shards(tmp_path / "a", 4, 48, "border", per_shard=2)
    for p in (tmp_path / "a").glob("*_stats.json"):
        p.unlink()
    assert read_shard_sizes(local) is None
    stream = WebPairStream(local, FastCrop(32), Captions(), 2, 0, 0, rank=0, world=1)
    with pytest.raises(TypeError):
        len(stream)
    (tmp_path / "a" / "sizes.json").write_text(json.dumps({"00000.tar": 2, "00001.tar": 2}))  # open_clip's file
    assert read_shard_sizes(local) == [2, 2]
    resampled = WebPairStream(local, FastCrop(32), Captions(), 2, 0, 0, resampled=True, batches_per_epoch=5,
                              rank=0, world=1)
    assert len(resampled) == 5 == len(list(resampled))
    assert read_shard_sizes(["s3://bucket/00000.tar"]) is None  # remote: not fetched shard by shard
