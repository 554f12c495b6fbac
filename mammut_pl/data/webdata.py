"""ALIGN-like web image-text pairs in img2dataset's webdataset shards.

Shards are split across nodes and DataLoader workers; a sample that cannot be read
(corrupt or truncated tar, undecodable or oversized image, missing, empty or non-UTF-8
caption) is skipped, logged and counted: each batch carries the number of samples
skipped since the previous batch of its worker, and the task logs the running total
as `train/skipped_samples`. The `.json` sidecar is not read; members are never
unpickled; shards are local files or http(s) URLs read without a shell (`pipe:` is refused).

Resumable: each worker's stream is a pure function of (seed, epoch, rank, worker) -- the
shuffle buffer and every sample's augmentation are seeded from them -- and each batch
carries its `data_position`. The datamodule checkpoints the position of the last
consumed batch of every worker; a resumed run replays each worker's stream up to it
(reading, not decoding) and continues with exactly the batches an uninterrupted run
would have produced (same num_workers, batch size and shards; see README "Reliability").
"""

from __future__ import annotations

import logging
import random
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import braceexpand
import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
import torch
from torch.utils.data import DataLoader, IterableDataset
from webdataset.filters import _shuffle
from webdataset.tariterators import group_by_keys, tar_file_expander

from mammut_pl.data.coco import PairCollator
from mammut_pl.data.images import open_rgb
from mammut_pl.data.tokenizer import Tokenizer
from mammut_pl.data.transforms import image_transform
from mammut_pl.resume import derive_seed, lightning_epoch, seeded

log = logging.getLogger(__name__)
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
MAX_WARNINGS = 20  # per worker, then only counted
MAX_PIXELS = 50_000_000  # larger images are skipped (decompression bombs, absurd web images)


class SkipCounter:
    """Counts skipped samples in one worker process (tar errors and decode errors)."""

    def __init__(self) -> None:
        self.pending = 0
        self.total = 0
        self.warned = 0
        self.muted = False  # while replaying up to a resume position: counted before the kill

    def skip(self, what: str, err: BaseException) -> None:
        if self.muted:
            return
        self.pending += 1
        self.total += 1
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
            if p.startswith("pipe:") or ("://" in p and not p.startswith(("http://", "https://"))):
                raise ValueError(f"data.shards: {p!r}: only local paths and http(s) URLs are read "
                                 "(`pipe:` would run a shell command from the config; mount or copy the shards)")
            urls.append(p if "://" in p or Path(p).is_absolute() else str(base / p))
        missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
        if missing:
            raise FileNotFoundError(f"data.shards: {len(missing)} shard(s) missing, e.g. {missing[0]}")
        return urls
    if not base.is_dir():
        raise FileNotFoundError(f"data.root: webdataset shard folder not found: {base} (expected 00000.tar, 00001.tar, ...)")
    urls = sorted(str(p) for p in base.glob("*.tar"))
    if not urls:
        raise FileNotFoundError(f"data.root: no *.tar shards in {base} (expected img2dataset's 00000.tar, ...)")
    return urls


def shard_samples(urls: Any, counter: SkipCounter, give_up_after: int = 0) -> Iterator[dict[str, Any]]:
    """Raw webdataset samples ({"__key__", "__url__", "jpg": bytes, "txt": bytes, ...}) of the
    shards in order; unreadable shards and tar errors are counted by `counter`. `give_up_after`
    (for endless resampled shard lists): so many shards in a row without a sample is an error."""
    empty = 0
    for url in urls:
        try:
            stream = urllib.request.urlopen(url, timeout=60) if "://" in url else open(url, "rb")  # noqa: S310
        except Exception as err:  # noqa: BLE001
            counter.skip(f"shard {url}", err)
            stream = None
        n = 0
        if stream is not None:
            with stream:
                files = tar_file_expander([{"url": url, "stream": stream}], handler=counter.tar_handler)
                for sample in group_by_keys(files, handler=counter.tar_handler):
                    n += 1
                    yield sample
        empty = 0 if n else empty + 1
        if give_up_after and empty >= give_up_after:
            raise ValueError(f"data.root: {empty} shards in a row held no readable sample (last: {url})")


def decode_sample(sample: dict[str, Any], transform) -> tuple[Any, str]:
    """(image tensor, caption) of one raw sample; raises ValueError/OSError if it is unusable."""
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise ValueError(f"no image member (.{'/.'.join(IMAGE_KEYS)})")
    if "txt" not in sample:
        raise ValueError("no caption member (.txt)")
    caption = sample["txt"].decode("utf-8").strip()
    if not caption:
        raise ValueError("empty caption")
    # no EXIF rotation: open_clip's convention for shards (see data/images.py)
    return transform(open_rgb(sample[key], max_pixels=MAX_PIXELS, name=f".{key}")), caption


class WebPairStream(IterableDataset):
    """The training batches of one rank. Each DataLoader worker reads its shards (split by
    node, then by worker, as webdataset does) in order -- or, `resampled`, draws shards with
    replacement -- shuffles them with a buffer, decodes, and batches. Everything random is
    seeded from (seed, epoch, rank, worker[, sample index]), so a worker's stream is the
    same whenever it is replayed.

    `start`: a resume position {"epoch", "rotation", "pos": {worker: [index, batches]}}
    (see WebDataModule.state_dict). In that epoch worker w skips (reads, does not decode)
    its first `index` shuffled samples, and DataLoader worker 0 plays logical worker
    `rotation`, so the round-robin order of batches continues where it stopped."""

    def __init__(self, urls: list[str], transform, batcher, batch_size: int, shuffle_buffer: int, seed: int,
                 resampled: bool = False, batches_per_epoch: int = 0, epoch: int = 0,
                 start: dict[str, Any] | None = None, rank: int | None = None, world: int | None = None) -> None:
        super().__init__()
        # this rank, taken where the loader is built: a DataLoader worker started by spawn or forkserver
        # (not fork) has no process group, and would read every rank's shards
        self.rank, self.world = (rank, world) if rank is not None and world is not None else _rank_world()
        self.urls, self.transform, self.batcher, self.batch_size = urls, transform, batcher, batch_size
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.resampled, self.batches_per_epoch = resampled, batches_per_epoch
        self.epoch = epoch  # of the next __iter__ (each worker keeps its own copy in step)
        self.start = start

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.epoch
        self.epoch += 1
        info = torch.utils.data.get_worker_info()
        num_workers, wid = (info.num_workers, info.id) if info is not None else (1, 0)
        rank, world = self.rank, self.world
        resume = self.start if self.start is not None and self.start["epoch"] == epoch else None
        worker = (wid + (resume["rotation"] if resume else 0)) % num_workers
        index, batches = (resume["pos"].get(worker, (0, 0)) if resume else (0, 0))
        counter = self.counter = SkipCounter()  # (the last epoch's, for inspection)
        stream = self._shuffled(epoch, rank, world, worker, num_workers, counter)
        quota = self._quota(worker, num_workers) if self.resampled else None
        counter.muted = True
        for _ in range(index):  # replay up to the resume position, without decoding
            if next(stream, None) is None:
                break
        counter.muted = False
        items: list[dict[str, Any]] = []
        held = None  # each batch waits for the next: the last one also reports the skips after it
        while quota is None or batches < quota:
            sample = next(stream, None)
            if sample is None:
                break  # the partial last batch is dropped, as before
            index += 1
            try:
                with seeded(derive_seed(self.seed, epoch, rank, worker, index)):
                    image, caption = decode_sample(sample, self.transform)
            except Exception as err:  # noqa: BLE001 - web data is dirty by nature: skip, count, go on
                counter.skip(f"sample {sample.get('__key__')!r} in {sample.get('__url__')}", err)
                continue
            items.append({"image": image, "caption": caption, "skipped": counter.take()})
            if len(items) == self.batch_size:
                batches += 1
                batch = self.batcher(items)
                batch["data_position"] = {"epoch": epoch, "worker": worker, "index": index, "batches": batches}
                items = []
                if held is not None:
                    yield held
                held = batch
        if held is not None:
            held["skipped"] = held["skipped"] + counter.take() + sum(it["skipped"] for it in items)
            yield held

    def _shuffled(self, epoch: int, rank: int, world: int, worker: int, num_workers: int,
                  counter: SkipCounter) -> Iterator[dict[str, Any]]:
        if self.resampled:  # shards with replacement, every worker from all of them
            rng = random.Random(derive_seed(self.seed, epoch, rank, worker, 1))
            urls: Any = (rng.choice(self.urls) for _ in iter(int, 1))
        else:
            urls = self.urls[rank::world][worker::num_workers]
        samples = shard_samples(urls, counter, give_up_after=10 * len(self.urls) if self.resampled else 0)
        if self.shuffle_buffer > 1:
            rng = random.Random(derive_seed(self.seed, epoch, rank, worker, 2))
            samples = _shuffle(samples, self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=rng)
        return iter(samples)

    def _quota(self, worker: int, num_workers: int) -> int:
        """Resampled: batches per epoch of this worker (they add up to batches_per_epoch)."""
        n = self.batches_per_epoch
        return n // num_workers + (1 if worker < n % num_workers else 0)


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class PairBatcher(PairCollator):
    """Web pairs: images, tokens and how many samples the reader skipped before them."""

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {**self.pairs(items), "skipped": torch.tensor(sum(it["skipped"] for it in items))}


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
        self._position: dict[str, Any] = {"epoch": -1, "last": -1, "pos": {}}  # of consumed batches
        self._resume: dict[str, Any] | None = None

    @property
    def has_eval_data(self) -> bool:
        """Without data.val_root there is no validation / test loop."""
        return self.val is not None

    def train_dataloader(self) -> DataLoader:
        transform = image_transform(self.image_size, True, self.augment, self.crop_scale_min)
        world = _rank_world()[1]
        if world > 1 and not self.resampled:
            if len(self.urls) < world:
                raise ValueError(f"data.shards: {len(self.urls)} shard(s) for {world} ranks: a rank without a shard "
                                 "would wait for the others forever; use data.resampled=true data.steps_per_epoch=N")
            rank_zero_warn(f"{world} ranks read disjoint shards (each sample once per epoch); ranks that get "
                           "fewer samples end their epoch first and DDP waits for them forever. Unless every "
                           "rank's shards hold the same number of samples, use data.resampled=true "
                           "data.steps_per_epoch=N (every rank then trains N steps per epoch)")
        epoch = lightning_epoch(self)
        start = self._resume
        if start is not None and epoch is not None and start["epoch"] != epoch:
            start = None  # the saved epoch had finished: the next one starts from its beginning
        stream = WebPairStream(self.urls, transform, PairBatcher(self.tokenizer, self.context_length),
                               self.batch_size, self.shuffle_buffer, self.seed, self.resampled,
                               self.steps_per_epoch, epoch=epoch if epoch is not None else (start or {}).get("epoch", 0),
                               start=start)
        # batching happens in the stream; the generator keeps worker seeds off the global RNG
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0,  # workers keep their epoch count
                          generator=torch.Generator().manual_seed(self.seed))

    # --- resuming: the position of the last consumed batch of every worker -----------------------
    def consumed(self, position: dict[str, int]) -> None:
        """Called (by mammut_pl.resume.ResumeState) after each training step."""
        if position["epoch"] != self._position["epoch"]:
            self._position = {"epoch": position["epoch"], "last": -1, "pos": {}}
        self._position["pos"][position["worker"]] = [position["index"], position["batches"]]
        self._position["last"] = position["worker"]

    def state_dict(self) -> dict[str, Any]:
        workers = max(1, self.num_workers)
        p = self._position
        return {"epoch": p["epoch"], "rotation": (p["last"] + 1) % workers, "pos": dict(p["pos"]),
                "workers": workers, "batch_size": self.batch_size, "shards": len(self.urls),
                "resampled": self.resampled, "world_size": _rank_world()[1]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state or state.get("epoch", -1) < 0:
            return
        now = {"workers": max(1, self.num_workers), "batch_size": self.batch_size, "shards": len(self.urls),
               "resampled": self.resampled, "world_size": _rank_world()[1]}
        changed = {k: (state.get(k), v) for k, v in now.items() if state.get(k) != v}
        if changed:
            log.warning("data position not restored (%s changed since the checkpoint): epoch %d restarts "
                        "from its first sample", ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()),
                        state["epoch"])
            return
        if now["world_size"] > 1:
            log.warning("data position restored from rank 0's counts on every rank (exact when no rank "
                        "skipped more bad samples than rank 0)")
        self._resume = {"epoch": state["epoch"], "rotation": state["rotation"],
                        "pos": {int(k): tuple(v) for k, v in state["pos"].items()}}
        self._position = {"epoch": state["epoch"], "last": (state["rotation"] - 1) % now["workers"],
                          "pos": {int(k): list(v) for k, v in state["pos"].items()}}

    def val_dataloader(self):
        return self.val.val_dataloader() if self.val is not None else []

    def test_dataloader(self):
        return self.val.test_dataloader() if self.val is not None else []
