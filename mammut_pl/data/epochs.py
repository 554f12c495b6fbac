"""Map-style training data that resumes at the exact batch (COCO pairs, VQAv2 questions, ...).

The order of an epoch is drawn from (seed, epoch) alone and each item's augmentation from
(seed, epoch, rank, position), so the batches after a resume are the ones the uninterrupted
run would have seen. A datamodule mixes in `ResumableTrainData`, builds its training loader
with `resumable_loader`, lets its dataset accept a `SampleRef` (`seeded_item`) and its
collator add `batch_position(items)`; `resume.ResumeState` does the rest.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mammut_pl.resume import derive_seed, lightning_epoch, seeded

log = logging.getLogger(__name__)


class SampleRef(NamedTuple):
    """What EpochSampler yields: the item, its augmentation seed and its place in the epoch."""
    index: int
    seed: int
    epoch: int
    position: int


class EpochSampler(DistributedSampler):
    """A random order per epoch drawn from (seed, epoch) alone; under DDP every rank takes its
    slice of the same order (a DistributedSampler, so Lightning does not replace it). `start`
    skips the first items of epoch `epoch` (a resumed run). Yields SampleRefs."""

    def __init__(self, size: int, seed: int, epoch: int = 0, start: int = 0) -> None:
        rank, world = ((torch.distributed.get_rank(), torch.distributed.get_world_size())
                       if torch.distributed.is_available() and torch.distributed.is_initialized() else (0, 1))
        super().__init__(range(size), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.size, self.epoch, self.start = size, epoch, start

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.start = epoch, 0

    def __len__(self) -> int:
        return self.size // self.num_replicas

    def __iter__(self):
        epoch, start = self.epoch, self.start
        self.start = 0  # only the resumed epoch starts late
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        order = torch.randperm(self.size, generator=g)[self.rank::self.num_replicas][: len(self)].tolist()
        for k in range(start, len(order)):
            yield SampleRef(order[k], derive_seed(self.seed, epoch, self.rank, k), epoch, k)


def seeded_item(i: int | SampleRef, transform: Callable[[Any], torch.Tensor], image: Any) -> tuple[torch.Tensor, dict]:
    """(pixels, extra item fields): under a SampleRef the augmentation depends on its seed only
    and the item carries its place in the epoch (`position`) for the collator."""
    if not isinstance(i, SampleRef):
        return transform(image), {}
    with seeded(i.seed):
        pixels = transform(image)
    return pixels, {"position": (i.epoch, i.position)}


def item_index(i: int | SampleRef) -> int:
    return i.index if isinstance(i, SampleRef) else i


def batch_position(items: list[dict[str, Any]]) -> dict[str, Any]:
    """{"data_position": ...} of a batch: where its last item stood (empty outside training)."""
    if "position" not in items[-1]:
        return {}
    epoch, position = items[-1]["position"]
    return {"data_position": {"epoch": epoch, "index": position + 1}}


class ResumableTrainData:
    """Mixin for a LightningDataModule whose training set is a map-style Dataset.

    Needs `self.seed` and `self.batch_size`; call `init_resume()` in __init__."""

    seed: int
    batch_size: int
    num_workers: int

    def init_resume(self) -> None:
        self._position: dict[str, int] = {"epoch": -1, "index": 0}  # of the last consumed batch
        self._resume: dict[str, Any] | None = None

    def train_size(self) -> int:
        """Items in the training set (what the checkpoint records to detect a changed dataset)."""
        raise NotImplementedError

    def resumable_loader(self, ds: Dataset, collate_fn: Callable) -> DataLoader:
        epoch = lightning_epoch(self)
        start, r = 0, self._resume
        if r is not None and (epoch is None or r["epoch"] == epoch):
            if (r["size"], r["batch_size"]) == (len(ds), self.batch_size):
                epoch, start = r["epoch"], r["index"]
            else:
                log.warning("data position not restored (%d training items, batch %d in the checkpoint; now %d, %d): "
                            "epoch %d restarts from its first batch", r["size"], r["batch_size"], len(ds),
                            self.batch_size, r["epoch"])
        sampler = EpochSampler(len(ds), self.seed, epoch=epoch or 0, start=start)
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          collate_fn=collate_fn, generator=torch.Generator().manual_seed(self.seed))

    # --- what ResumeState calls: where the last consumed training batch ended ---------------------
    def consumed(self, position: dict[str, int]) -> None:
        self._position = {"epoch": position["epoch"], "index": position["index"]}

    def state_dict(self) -> dict[str, Any]:
        if self._position["epoch"] < 0:
            return {}
        return {**self._position, "size": self.train_size(), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and state.get("epoch", -1) >= 0:
            self._resume = dict(state)
            self._position = {"epoch": state["epoch"], "index": state["index"]}
