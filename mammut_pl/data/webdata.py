"""ALIGN-like web image-text pairs in img2dataset's webdataset shards.

Shards are split across nodes and DataLoader workers; a sample that cannot be read
(corrupt or truncated tar, undecodable or oversized image, missing, empty or non-UTF-8
caption) is skipped, logged and counted: each batch carries the number of samples
skipped since the previous batch of its worker, and the task logs the running total
as `train/skipped_samples`. The `.json` sidecar is not read; members are never
unpickled; shards are local files, http(s) URLs or fsspec URLs (s3://, gs://, hf://, ...), streamed
without a shell (`pipe:` is refused). Reading the shards: data/shards.py.

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
from collections.abc import Iterator
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
import torch
from torch.utils.data import DataLoader, IterableDataset
from webdataset.filters import _shuffle

from mammut_pl.data.coco import PairCollator
from mammut_pl.data.shards import SkipCounter, decode_sample, read_shard_sizes, shard_samples, shard_urls
from mammut_pl.data.tokenizer import Tokenizer
from mammut_pl.data.transforms import FastCrop
from mammut_pl.resume import derive_seed, lightning_epoch, seeded

log = logging.getLogger(__name__)
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
                 start: dict[str, Any] | None = None, rank: int | None = None, world: int | None = None,
                 num_workers: int = 0, shard_sizes: list[int] | None = None) -> None:
        super().__init__()
        # this rank, taken where the loader is built: a DataLoader worker started by spawn or forkserver
        # (not fork) has no process group, and would read every rank's shards
        self.rank, self.world = (rank, world) if rank is not None and world is not None else _rank_world()
        self.urls, self.transform, self.batcher, self.batch_size = urls, transform, batcher, batch_size
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.resampled, self.batches_per_epoch = resampled, batches_per_epoch
        self.epoch = epoch  # of the next __iter__ (each worker keeps its own copy in step)
        self.start = start
        self.num_workers, self.shard_sizes = num_workers, shard_sizes

    def __len__(self) -> int:
        """Batches this rank yields in an epoch (the DataLoader's length: the progress bar's total and
        time estimate). Resampled: batches_per_epoch. Otherwise each DataLoader worker yields
        floor(its shards' samples / batch) batches, counted from img2dataset's `_stats.json`
        ("successes") or a `sizes.json` beside the shards; samples skipped as unreadable make an
        epoch end a little earlier. Unknown sizes (remote shards without them): TypeError, which
        DataLoader and Lightning read as "no length" (an endless-looking bar, as before)."""
        if self.resampled:
            return self.batches_per_epoch
        if self.shard_sizes is None:
            raise TypeError("WebPairStream: samples per shard unknown (no img2dataset _stats.json / sizes.json)")
        mine = self.shard_sizes[self.rank::self.world]
        workers = max(1, self.num_workers)
        return sum(sum(mine[w::workers]) // self.batch_size for w in range(workers))

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
        self.sizes = None if resampled else read_shard_sizes(self.urls)  # the loader's length
        self._position: dict[str, Any] = {"epoch": -1, "last": -1, "pos": {}}  # of consumed batches
        self._resume: dict[str, Any] | None = None

    @property
    def has_eval_data(self) -> bool:
        """Without data.webdata.val_root there is no validation / test loop."""
        return self.val is not None

    def train_dataloader(self) -> DataLoader:
        # uint8 (B, 3, H, W) batches: the task normalises them on the device (normalize_batch)
        transform = FastCrop(self.image_size, train=self.augment, scale=(self.crop_scale_min, 1.0))
        world = _rank_world()[1]
        if world > 1 and not self.resampled:
            if len(self.urls) < world:
                raise ValueError(f"data.webdata.shards: {len(self.urls)} shard(s) for {world} ranks: a rank without "
                                 "a shard would wait for the others forever; use data.webdata.resampled=true "
                                 "data.webdata.steps_per_epoch=N")
            rank_zero_warn(f"{world} ranks read disjoint shards (each sample once per epoch); ranks that get "
                           "fewer samples end their epoch first and DDP waits for them forever. Unless every "
                           "rank's shards hold the same number of samples, use data.webdata.resampled=true "
                           "data.webdata.steps_per_epoch=N (every rank then trains N steps per epoch)")
        epoch = lightning_epoch(self)
        start = self._resume
        if start is not None and epoch is not None and start["epoch"] != epoch:
            start = None  # the saved epoch had finished: the next one starts from its beginning
        stream = WebPairStream(self.urls, transform, PairBatcher(self.tokenizer, self.context_length),
                               self.batch_size, self.shuffle_buffer, self.seed, self.resampled,
                               self.steps_per_epoch, epoch=epoch if epoch is not None else (start or {}).get("epoch", 0),
                               start=start, num_workers=self.num_workers, shard_sizes=self.sizes)
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
