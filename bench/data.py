"""`make bench`'s data section: how many training images per second ONE CPU core turns out.

Shards in img2dataset's webdataset format (`000000000.jpg/.txt/.json`, JPEG quality 95) are made
from the real photographs that ship in installed packages (scikit-learn's sample images,
matplotlib's sample photo): random crops of them, resized as img2dataset resizes
  - 256 px, `resize_mode="border"` (LAION-400M's setting: longest side 256, padded to a square),
  - 512 px, `resize_mode="keep_ratio_largest"` (DataComp's: longest side 512).
Each pipeline turns them into training batches (224 px RandomResizedCrop, CLIP-normalised
floats, captions tokenised with the CLIP BPE) in one process with one torch thread (= one
DataLoader worker on one core), timed round-robin in the same run:
  - open_clip: `open_clip_train.data.get_wds_dataset` with open_clip's own train transform
    (`open_clip.image_transform(224, is_train=True)`, the suite's crop scale) and tokenizer;
  - mammut_pl fast: `WebPairStream` + `FastCrop` (uint8 until the device), plus
    `normalize_images` of each batch, timed here on the same core;
  - mammut_pl float: `WebPairStream` + `image_transform` (the torchvision chain, as before).
Also per core: the COCO and VQAv2 readers (640x480 JPEGs, the evaluation and training transforms)
and MSRVTT clip decoding (320x240 H.264/MPEG-4, 8 frames a clip).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import tarfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from bench.measure import CAPTIONS, interleaved
from bench.report import fmt_ratio

# img2dataset's two published settings
SHARD_SETTINGS = {"laion_256": (256, "border"), "datacomp_512": (512, "keep_ratio_largest")}
OUTPUT_SIZE = 224
CROP_SCALE = (0.8, 1.0)  # the suite's data.crop_scale_min, given to open_clip's transform too


PHOTO_FILES = (("sklearn", "datasets/images/china.jpg"), ("sklearn", "datasets/images/flower.jpg"),
               ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"))


@functools.lru_cache(maxsize=1)
def photos() -> tuple[Image.Image, ...]:
    """The real photographs that ship in the venv: scikit-learn's china.jpg and flower.jpg (640x427),
    matplotlib's grace_hopper.jpg (512x600), read from the packages' folders (importing either
    package takes seconds)."""
    out = []
    for package, rel in PHOTO_FILES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"bench data: package {package} (for its sample photo {rel}) is not installed")
        with Image.open(Path(spec.submodule_search_locations[0]) / rel) as img:
            out.append(img.convert("RGB"))
    return tuple(out)


def img2dataset_resize(img: Image.Image, size: int, mode: str) -> Image.Image:
    """img2dataset's resizer: `border` = longest side to `size`, padded to a white square;
    `keep_ratio_largest` = longest side to `size`. Area filter down, Lanczos up (as its cv2 code)."""
    w, h = img.size
    s = size / max(w, h)
    new = (max(1, round(w * s)), max(1, round(h * s)))
    img = img.resize(new, Image.Resampling.BOX if s < 1 else Image.Resampling.LANCZOS)
    if mode == "keep_ratio_largest":
        return img
    if mode == "border":
        canvas = Image.new("RGB", (size, size), (255, 255, 255))
        canvas.paste(img, ((size - new[0]) // 2, (size - new[1]) // 2))
        return canvas
    raise ValueError(f"unknown img2dataset resize_mode {mode!r}")


def photo_variants(n: int, seed: int = 0) -> Iterable[Image.Image]:
    """n different views of the photos: random crops (60-100% of each side), mirrored half the time."""
    base = photos()
    rng = np.random.default_rng(seed)
    for i in range(n):
        photo = base[i % len(base)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = photo.crop((x, y, x + cw, y + ch))
        yield ImageOps.mirror(img) if rng.random() < 0.5 else img


def write_img2dataset_shards(folder: Path, n_images: int, size: int, mode: str, per_shard: int = 0,
                             captions: list[str] | None = None) -> list[str]:
    """Shards 00000.tar ... in img2dataset's layout (key = shard id + index, 9 digits): .jpg (q95),
    .txt (the caption), .json (its metadata), and 00000_stats.json. Returns the shard paths."""
    captions = captions or CAPTIONS
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = per_shard or n_images
    urls: list[str] = []
    tar = None
    for i, img in enumerate(photo_variants(n_images)):
        if i % per_shard == 0:
            if tar is not None:
                tar.close()
            urls.append(str(folder / f"{len(urls):05d}.tar"))
            tar = tarfile.open(urls[-1], "w")
            count = min(per_shard, n_images - i)
            (folder / f"{len(urls) - 1:05d}_stats.json").write_text(json.dumps(
                {"count": count, "successes": count, "failed_to_download": 0, "failed_to_resize": 0}))
        key = f"{len(urls) - 1:05d}{i % per_shard:04d}"
        out = img2dataset_resize(img, size, mode)
        buf = io.BytesIO()
        out.save(buf, "JPEG", quality=95)
        meta = {"key": key, "caption": captions[i % len(captions)], "width": out.width, "height": out.height,
                "original_width": img.width, "original_height": img.height, "status": "success"}
        for ext, data in (("jpg", buf.getvalue()), ("txt", meta["caption"].encode()), ("json", json.dumps(meta).encode())):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    if tar is not None:
        tar.close()
    return urls


# --------------------------------------------------------------------------------------
# the pipelines: each a function that makes one pass over the shards, returning images seen
# --------------------------------------------------------------------------------------
def open_clip_pass(urls: list[str], n_images: int, batch: int) -> Callable[[], int]:
    """open_clip's own training pipeline: get_wds_dataset (shard + sample shuffle, pilrgb
    decode, its train transform, its tokenizer, batching) driven in this process (workers=0)."""
    import functools

    import open_clip
    import open_clip_train.data as oc_data
    from webdataset.tariterators import tar_file_expander

    # open_clip_train 3.x pins webdataset <= 0.2.86; webdataset 1.x ends each shard with an
    # empty EOF marker that its group_by_keys_nothrow cannot read (KeyError 'fname'): the
    # expander is given 0.2's behaviour, everything else is open_clip's own code
    oc_data.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)
    transform = open_clip.image_transform(OUTPUT_SIZE, is_train=True, aug_cfg={"scale": CROP_SCALE})
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    args = SimpleNamespace(train_data="::".join(urls), val_data=None, dataset_resampled=False,
                           train_num_samples=n_images, train_data_upsampling_factors=None, seed=0,
                           batch_size=batch, workers=0, world_size=1)

    def one_pass() -> int:
        loader = oc_data.get_wds_dataset(args, transform, is_train=True, tokenizer=tokenizer).dataloader
        return sum(images.shape[0] for images, _ in loader)
    return one_pass


@functools.lru_cache(maxsize=1)
def _clip_tokenizer():
    from mammut_pl.data.tokenizer import ClipTokenizer

    return ClipTokenizer()


def suite_pass(urls: list[str], batch: int, fast: str = "") -> Callable[[], int]:
    """mammut_pl's WebPairStream: FastCrop with resize `fast` ("torch" or "pil": uint8 batches,
    normalised later on the device), or with fast="" the float torchvision chain (image_transform)."""
    from mammut_pl.data.transforms import FastCrop, image_transform
    from mammut_pl.data.webdata import PairBatcher, WebPairStream

    transform = (FastCrop(OUTPUT_SIZE, scale=CROP_SCALE, resize=fast) if fast
                 else image_transform(OUTPUT_SIZE, True, True, CROP_SCALE[0]))
    batcher = PairBatcher(_clip_tokenizer(), 76)

    def one_pass() -> int:
        n = 0
        for b in WebPairStream(urls, transform, batcher, batch, shuffle_buffer=1000, seed=0, rank=0, world=1):
            n += b["images"].shape[0]
        return n
    return one_pass


def interleaved_rates(passes: dict[str, Callable[[], int]], warmup: int, rounds: int) -> dict[str, Any]:
    counts: dict[str, int] = {}
    steps = {name: (lambda name=name, f=f: counts.__setitem__(name, f())) for name, f in passes.items()}
    times = interleaved(steps, warmup, rounds)
    rows = {}
    for name, t in times.items():
        t = dict(t)
        cpu = t.pop("cpu")
        rows[name] = {"images": counts[name], "time_s": t, "cpu_s": cpu, "images_per_s": counts[name] / t["median"],
                      "images_per_cpu_s": counts[name] / cpu["median"]}
    return rows


# --------------------------------------------------------------------------------------
# the other readers: COCO / VQAv2 images, MSRVTT clips
# --------------------------------------------------------------------------------------
def reader_rates(tmp: Path, n_images: int, n_clips: int, rounds: int) -> dict[str, Any]:
    from mammut_pl.data.coco import CaptionedImage, CaptionPairs, RetrievalImages
    from mammut_pl.data.video_decode import ClipReader, ClipTransform, eval_clip_reader
    from mammut_pl.data.transforms import image_transform
    from mammut_pl.data.vqav2 import VQADataset, VQAQuestion

    folder = tmp / "coco"
    folder.mkdir(parents=True, exist_ok=True)
    records, questions = [], []
    for i, img in enumerate(photo_variants(n_images, seed=1)):
        path = folder / f"COCO_train2014_{i:012d}.jpg"
        img.resize((640, 480), Image.Resampling.BICUBIC).save(path, "JPEG", quality=90)
        records.append(CaptionedImage(i, str(path), [CAPTIONS[i % len(CAPTIONS)]], "train"))
        questions.append(VQAQuestion(i, i, str(path), "What is in the picture?", ["x"] * 10, "other", "what", "x"))
    video = tmp / "video0.mp4"
    frames = [np.asarray(img.resize((320, 240), Image.Resampling.BILINEAR))
              for img in photo_variants(min(30, 4 * n_clips + 4), seed=2)]
    write_video_sized(video, frames)
    train_clips = ClipReader(ClipTransform(OUTPUT_SIZE, train=True), 8, 0.0, random=True)
    eval_clips = eval_clip_reader(OUTPUT_SIZE, 8, 0.0)
    train_pairs = CaptionPairs(records, image_transform(OUTPUT_SIZE, True))
    eval_images = RetrievalImages(records, image_transform(OUTPUT_SIZE, False))
    vqa = VQADataset(questions, image_transform(OUTPUT_SIZE, True))

    def over(ds) -> Callable[[], int]:
        return lambda: sum(1 for i in range(len(ds)) if ds[i] is not None)

    def clips(reader) -> Callable[[], int]:
        return lambda: sum(reader.load(str(video)).shape[0] > 0 for _ in range(n_clips))

    rows = interleaved_rates({"coco_train": over(train_pairs), "coco_eval": over(eval_images),
                              "vqav2_train": over(vqa), "msrvtt_train_clip": clips(train_clips),
                              "msrvtt_eval_clip": clips(eval_clips)}, int(rounds > 1), rounds)
    return rows


def write_video_sized(path: Path, frames: list[np.ndarray], fps: int = 30) -> None:
    """An MSRVTT-sized clip (frames are H x W x 3, e.g. 240 x 320) in H.264 where PyAV has it."""
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps, options={"threads": "1"})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for t, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            frame.pts = t
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def section_data(plan: Any, device: torch.device) -> dict[str, Any]:
    """Images/s per core of each pipeline on both shard settings, and the other readers."""
    import tempfile

    from mammut_pl.data.transforms import normalize_images

    n, rounds = plan.data_images, plan.data_rounds
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    out: dict[str, Any] = {"output_size": OUTPUT_SIZE, "crop_scale": list(CROP_SCALE), "workers": 1, "torch_threads": 1,
                           "images_per_pass": n, "rounds": rounds, "shards": {}}
    try:
        with tempfile.TemporaryDirectory(prefix="mammut_bench_data_") as tmp:
            for name, (size, mode) in SHARD_SETTINGS.items():
                urls = write_img2dataset_shards(Path(tmp) / name, n, size, mode, per_shard=max(1, n // 2))
                rows = interleaved_rates({"open_clip": open_clip_pass(urls, n, plan.data_batch),
                                          "fast": suite_pass(urls, plan.data_batch, "torch"),
                                          "fast_pil": suite_pass(urls, plan.data_batch, "pil"),
                                          "float": suite_pass(urls, plan.data_batch)}, int(rounds > 1), rounds)
                oc = rows["open_clip"]
                out["shards"][name] = {
                    "image_size": size, "resize_mode": mode, "rows": rows,
                    "ratios": {f"{k}/open_clip": r["images_per_s"] / oc["images_per_s"] for k, r in rows.items() if k != "open_clip"}
                    | {f"cpu {k}/open_clip": r["images_per_cpu_s"] / oc["images_per_cpu_s"] for k, r in rows.items() if k != "open_clip"}}
            # what the device does for the fast path, timed on this core for scale
            batch = torch.randint(0, 256, (plan.data_batch, 3, OUTPUT_SIZE, OUTPUT_SIZE), dtype=torch.uint8)
            t0 = time.perf_counter()
            for _ in range(3):
                normalize_images(batch)
            out["normalize_on_cpu_images_per_s"] = 3 * plan.data_batch / (time.perf_counter() - t0)
            out["readers"] = reader_rates(Path(tmp) / "readers", max(2, n // 4), max(1, n // 16), rounds)
    finally:
        torch.set_num_threads(threads)
    return out


def markdown_rows(da: dict[str, Any]) -> list[str]:
    """The data section's lines of bench.report.markdown's table."""
    lines = []
    names = {"fast": "mammut_pl fast (FastCrop, uint8)", "fast_pil": "mammut_pl fast, PIL resize",
             "float": "mammut_pl float (torchvision chain)"}
    for name, sh in da.get("shards", {}).items():
        oc = sh["rows"]["open_clip"]
        head = (f"data, {sh['image_size']} px shards ({sh['resize_mode']}) -> {da['output_size']} px, per core: "
                f"open_clip get_wds_dataset {oc['images_per_s']:.0f} img/s")
        for key, label in names.items():
            r = sh["rows"][key]
            target = {"laion_256": 1.2, "datacomp_512": 2.0}.get(name) if key == "fast" else None
            lines.append(f"| {head}; {label} {r['images_per_s']:.0f} img/s: ratio | "
                         f"{fmt_ratio(sh['ratios'][key + '/open_clip'], target, at_least=True)} | "
                         f"{fmt_ratio(sh['ratios']['cpu ' + key + '/open_clip'])} |")
    rd = da.get("readers", {})
    if rd:
        clips = {k: v for k, v in rd.items() if k.startswith("msrvtt")}
        imgs = {k: v for k, v in rd.items() if not k.startswith("msrvtt")}
        lines.append("| data readers per core, 640x480 JPEG -> 224 px: " + ", ".join(
            f"{k} {v['images_per_s']:.0f} img/s" for k, v in imgs.items()) + "; MSRVTT 320x240 clips, 8 frames: "
            + ", ".join(f"{k} {v['images_per_s']:.1f} clips/s" for k, v in clips.items()) + " | | |")
    return lines
