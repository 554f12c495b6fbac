"""Kill anywhere, resume without loss.

- `AtomicCheckpointIO`: checkpoints are written to a temporary file in the same folder,
  fsynced, then `os.replace`d over the target, so a kill during a save leaves the previous
  complete file; every checkpoint the Trainer reads (resume) is loaded with
  `weights_only=True`, and a file that cannot be used raises one `CheckpointError` naming it.
- `ResumeState`: a callback that stores the torch / numpy / Python RNG states in every
  checkpoint and restores them just before the first resumed step, and hands each consumed
  training batch's `data_position` to the datamodule (which stores it in the checkpoint).
- `derive_seed` / `seeded`: data augmentation is a function of (seed, epoch, position) only,
  never of what ran before, so a resumed stream draws exactly what the uninterrupted one did.

The datamodules (`data/webdata.py`, `data/coco.py`) implement `consumed` / `state_dict` /
`load_state_dict` with these pieces; see README "Reliability" for what is exact.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import pickle
import random
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)
TMP_MARK = ".tmp-"  # ".last.ckpt.tmp-PID": a save in progress (or killed mid-way)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and why."""


class DiskFullError(OSError):
    """A checkpoint save that found no space left on the device; the message names the file.
    The previous checkpoint of that name is untouched (saves are atomic)."""


# --- reading checkpoints safely ----------------------------------------------------------------
def read_checkpoint(path: str | Path, *, mmap: bool = False, map_location: Any = "cpu") -> dict[str, Any]:
    """torch.load(weights_only=True): tensors and plain data only, no code from the file runs.
    A missing, truncated, foreign or object-carrying file raises `CheckpointError` naming it.
    `mmap=True` maps the tensors instead of reading them (cheap inspection of big files)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - every way a file can be unusable -> one clear message
        raise CheckpointError(f"{p}: {_why_unreadable(err, p)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p}: not a checkpoint (holds a {type(obj).__name__}, expected a dict)")
    return obj


def _why_unreadable(err: BaseException, path: Path) -> str:
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in text:
        found = re.search(r"(?:GLOBAL|global):? ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (f"refused: it holds pickled Python objects{what}; checkpoints are loaded with "
                "weights_only=True, so no code from the file runs")
    if ("central directory" in text or "zip archive" in text or isinstance(err, (EOFError, KeyError))
            or not zipfile.is_zipfile(path)):
        return ("truncated or not a PyTorch checkpoint (zip archive unreadable); it was probably "
                "cut short by a crash or an incomplete copy")
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"cannot be read as a checkpoint ({type(err).__name__}: {first[:200]})"


# model settings that change the weights' shapes: resuming with other values cannot work
SHAPE_KEYS = ("encoder", "encoder_kwargs", "image_size", "width", "depth", "heads", "mlp_ratio", "num_cross_attn",
              "cross_attn_placement", "vocab_size", "context_length", "embed_dim")


def check_resume_checkpoint(path: str | Path, model_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate a checkpoint to resume from before any work starts: readable (weights only,
    memory-mapped), a full training checkpoint, and the same model architecture."""
    ckpt = read_checkpoint(path, mmap=True)
    missing = [k for k in ("state_dict", "optimizer_states", "loops") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a full training checkpoint (no {', '.join(missing)}); "
                              "to start from its weights use model.init_from=PATH instead of ckpt_path")
    stored = ckpt.get("hyper_parameters", {}).get("cfg", {})
    stored_model = stored.get("model") if isinstance(stored, dict) else None
    if model_config is not None and isinstance(stored_model, dict):
        diff = [f"model.{k}: checkpoint {stored_model[k]!r}, now {v!r}" for k, v in model_config.items()
                if k in SHAPE_KEYS and k in stored_model and stored_model[k] != v]
        if diff:
            from mammut_pl.config import ConfigError

            raise ConfigError(f"ckpt_path={path}: the checkpoint's model differs from this config: "
                              + "; ".join(diff[:6]) + ". Resume with the same model settings.")
    return ckpt


def remove_stale_temporaries(ckpt_dir: str | Path) -> list[Path]:
    """Temporary files a killed save left behind (never read; removed when the run resumes)."""
    removed = []
    d = Path(ckpt_dir)
    if d.is_dir():
        for p in d.glob(f".*{TMP_MARK}*"):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Atomic local saves (temp file + fsync + os.replace) and weights-only loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote filesystems: Lightning's own save
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            if _disk_full(err):
                raise _disk_full_error(path) from None
            raise
        _fsync_dir(path.parent)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        # always weights_only=True, whatever the caller asked for: resume never unpickles objects
        return read_checkpoint(path, map_location=map_location if map_location is not None else "cpu")


def _disk_full(err: BaseException | None) -> bool:
    """ENOSPC / EDQUOT anywhere in the chain: torch.save reports a failed write as a RuntimeError
    ("PytorchStreamWriter failed writing file" / "unexpected pos") whose context is the OSError."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def _disk_full_error(path: Path) -> DiskFullError:
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    kept = f"the previous {path.name} is kept" if path.exists() else f"no earlier {path.name} exists"
    err = DiskFullError(f"no space left on device: cannot save checkpoint {path} ({free}); {kept}; "
                        "free some space and resume with ckpt_path=last")
    err.errno = errno.ENOSPC
    return err


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- deterministic randomness ------------------------------------------------------------------
def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, rank, worker, sample index, ...): independent
    streams that depend on nothing but these numbers."""
    words = [int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's CPU RNG set to `seed`; the caller's RNG state is restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def capture_rng() -> dict[str, Any]:
    """torch (CPU, CUDA), numpy and Python RNG states, in types a weights-only load accepts."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeState(Callback):
    """RNG state into every checkpoint, restored right before the first resumed training step;
    each consumed batch's `data_position` to the datamodule (`consumed`), which checkpoints it.
    Two epochs in a row without a batch (every sample skipped) stop the run with a clear error
    instead of spinning through empty epochs forever."""

    def __init__(self) -> None:
        self._rng_to_restore: dict[str, Any] | None = None
        self._batches = 0  # in this epoch
        self._empty_epochs = 0
        self._saved_step: int | None = None

    @property
    def state_key(self) -> str:
        return "ResumeState"

    def state_dict(self) -> dict[str, Any]:
        return {"rng": capture_rng()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng_to_restore = state_dict.get("rng")

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # restored here rather than at load time: building the optimizers, loaders and loops
        # between the load and the first step must not shift the stream
        if self._rng_to_restore is not None:
            restore_rng(self._rng_to_restore)
            self._rng_to_restore = None

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._batches += 1
        dm = getattr(trainer, "datamodule", None)
        if isinstance(batch, dict) and "data_position" in batch and hasattr(dm, "consumed"):
            dm.consumed(batch["data_position"])

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._batches = 0

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self._saved_step = checkpoint.get("global_step")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        # Lightning updates last.ckpt only every checkpoint_every_n_steps (or after validation):
        # the steps since then would be lost when training ends between two saves. A ModelCheckpoint
        # that has not saved yet in this run writes last.ckpt in its own on_train_end (called after
        # this one): saving here as well would make it write a second file, last-v1.ckpt
        saver = next((cb for cb in trainer.checkpoint_callbacks if getattr(cb, "save_last", False)), None)
        if (self._saved_step != trainer.global_step and getattr(saver, "_last_checkpoint_saved", "")
                and (path := _last_path(trainer)) is not None):
            trainer.save_checkpoint(path)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """SIGTERM (preemption, `kill`): Lightning stops at the end of the current step; save
        last.ckpt there, so that nothing since the last periodic checkpoint is lost."""
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if not isinstance(exception, SIGTERMException):
            return  # e.g. a non-finite loss: keep the last good checkpoint as it is
        if (path := _last_path(trainer)) is not None:
            trainer.save_checkpoint(path)
            log.warning("SIGTERM: saved %s at global step %d; resume with ckpt_path=last", path, trainer.global_step)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        # one empty epoch is normal after resuming from its last batch; two in a row are not
        self._empty_epochs = self._empty_epochs + 1 if self._batches == 0 else 0
        if self._empty_epochs >= 2:
            raise ValueError(f"the training data gave no batch in {self._empty_epochs} epochs in a row "
                             "(every sample skipped? see the warnings above and train/skipped_samples)")


def _last_path(trainer: Any) -> Path | None:
    """last.ckpt of the run (the ModelCheckpoint with save_last), if any."""
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "save_last", False) and cb.dirpath:
            return Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
    return None


def lightning_epoch(datamodule: Any) -> int | None:
    """The epoch the attached Trainer is about to train (None outside a Trainer): a saved data
    position applies only if it belongs to this epoch."""
    trainer = getattr(datamodule, "trainer", None)
    if trainer is None:
        return None
    return int(trainer.fit_loop.epoch_progress.current.processed)
