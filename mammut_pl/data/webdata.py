"""ALIGN-like web image-text pairs in img2dataset's webdataset shards.

Shards are split across nodes and DataLoader workers by webdataset; a sample that
cannot be read (corrupt tar member, undecodable image, empty or non-UTF-8
caption) is skipped, logged and counted: each batch carries the number of
samples skipped since the previous batch of its worker, and the task logs the
running total as `train/skipped_samples`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import braceexpand
import lightning as L
import torch
import webdataset as wds
from PIL import Image

from mammut_pl.data.tokenizer import Tokenizer
from mammut_pl.data.transforms import image_transform

log = logging.getLogger(__name__)
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
MAX_WARNINGS = 20  # per worker, then only counted


class SkipCounter:
    """Counts skipped samples in one worker process (tar errors and decode errors)."""

    def __init__(self) -> None:
        self.pending = 0
        self.warned = 0

    def skip(self, what: str, err: BaseException) -> None:
        self.pending += 1
        if self.warned < MAX_WARNINGS:
            self.warned += 1
            log.warning("skipping %s: %s: %s", what, type(err).__name__, err)

    def take(self) -> int:
        n, self.pending = self.pending, 0
        return n

    def tar_handler(self, err: BaseException) -> bool:  # webdataset handler: True = continue
        self.skip("unreadable shard data", err)
        return True


def shard_urls(root: str, pattern: str = "") -> list[str]:
    """Shard paths: `pattern` (brace-expanded, relative to root) or every *.tar in root."""
    base = Path(root)
    if pattern:
        urls = []
        for p in braceexpand.braceexpand(pattern):
            urls.append(p if "://" in p or p.startswith("pipe:") or Path(p).is_absolute() else str(base / p))
        missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not Path(u).is_file()]
        if missing:
            raise FileNotFoundError(f"data.shards: {len(missing)} shard(s) missing, e.g. {missing[0]}")
        return urls
    if not base.is_dir():
        raise FileNotFoundError(f"data.root: webdataset shard folder not found: {base} (expected 00000.tar, 00001.tar, ...)")
    urls = sorted(str(p) for p in base.glob("*.tar"))
    if not urls:
        raise FileNotFoundError(f"data.root: no *.tar shards in {base} (expected img2dataset's 00000.tar, ...)")
    return urls


def decode_pairs(samples: Iterator[dict[str, Any]], transform, counter: SkipCounter) -> Iterator[dict[str, Any]]:
    """webdataset sample dicts (raw bytes) -> {"image", "caption", "skipped"}; bad ones skipped."""
    for sample in samples:
        what = f"sample {sample.get('__key__')!r} in {sample.get('__url__')}"
        try:
            key = next((k for k in IMAGE_KEYS if k in sample), None)
            if key is None:
                raise ValueError(f"no image member (.{'/.'.join(IMAGE_KEYS)})")
            if "txt" not in sample:
                raise ValueError("no caption member (.txt)")
            caption = sample["txt"].decode("utf-8").strip()
            if not caption:
                raise ValueError("empty caption")
            with Image.open(io.BytesIO(sample[key])) as img:
                img.load()
                image = transform(img.convert("RGB"))
        except Exception as err:  # noqa: BLE001 - web data is dirty by nature: skip, count, go on
            counter.skip(what, err)
            continue
        yield {"image": image, "caption": caption, "skipped": counter.take()}


class PairBatcher:
    def __init__(self, tokenizer: Tokenizer, context_length: int) -> None:
        self.tokenizer, self.context_length = tokenizer, context_length

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "images": torch.stack([it["image"] for it in items]),
            "tokens": self.tokenizer([it["caption"] for it in items], self.context_length, pad_to_longest=True),
            "skipped": torch.tensor(sum(it["skipped"] for it in items)),
        }


class WebDataModule(L.LightningDataModule):
    """Pretraining pairs from shards; zero-shot retrieval on a COCO-format val set (`val`)."""

    def __init__(self, root: str, tokenizer: Tokenizer, image_size: int, context_length: int,
                 batch_size: int = 32, num_workers: int = 2, shards: str = "", resampled: bool = False,
                 steps_per_epoch: int = 0, shuffle_buffer: int = 1000, augment: bool = True,
                 crop_scale_min: float = 0.8, seed: int = 0, val: L.LightningDataModule | None = None) -> None:
        super().__init__()
        self.root, self.tokenizer = root, tokenizer
        self.image_size, self.context_length = image_size, context_length
        self.batch_size, self.num_workers = batch_size, num_workers
        self.shards, self.resampled, self.steps_per_epoch = shards, resampled, steps_per_epoch
        self.shuffle_buffer, self.augment, self.crop_scale_min, self.seed = shuffle_buffer, augment, crop_scale_min, seed
        self.val = val
        self.urls = shard_urls(root, shards)  # fail at construction: before any work starts

    def train_dataloader(self) -> wds.WebLoader:
        counter = SkipCounter()
        transform = image_transform(self.image_size, True, self.augment, self.crop_scale_min)
        source = (wds.ResampledShards(self.urls, seed=self.seed) if self.resampled
                  else wds.SimpleShardList(self.urls))
        split = [] if self.resampled else [wds.split_by_node]
        shuffle = [wds.shuffle(self.shuffle_buffer, seed=self.seed)] if self.shuffle_buffer > 1 else []
        pipeline = wds.DataPipeline(
            source, *split, wds.split_by_worker,
            wds.tarfile_to_samples(handler=counter.tar_handler),
            *shuffle,
            wds.pipelinefilter(decode_pairs)(transform, counter),
            wds.batched(self.batch_size, collation_fn=PairBatcher(self.tokenizer, self.context_length), partial=False),
        )
        loader = wds.WebLoader(pipeline, batch_size=None, num_workers=self.num_workers,
                               persistent_workers=self.num_workers > 0)
        return loader.with_epoch(self.steps_per_epoch) if self.resampled else loader

    def val_dataloader(self):
        return self.val.val_dataloader() if self.val is not None else []

    def test_dataloader(self):
        return self.val.test_dataloader() if self.val is not None else []
