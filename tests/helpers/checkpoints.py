"""Checkpoint files written by hand: a fresh task as `fit` writes it, and one that runs code when
unpickled (what every weights-only read must refuse)."""

from __future__ import annotations

from pathlib import Path

import torch

from mammut_pl import config as config_lib
from mammut_pl.runtime import build_tokenizer_for
from mammut_pl.tasks import TASKS


def write_fresh_checkpoint(cfg, folder: Path) -> Path:
    """folder/run/checkpoints/last.ckpt: a freshly initialised task (seed 0) of `cfg`, as fit writes it."""
    build_tokenizer_for(cfg)
    torch.manual_seed(0)
    task = TASKS[cfg.task](config_lib.to_dict(cfg))
    path = folder / "run" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": {"cfg": config_lib.to_dict(cfg)}}, path)
    return path


class Payload:
    """Unpickling this runs code (creates a marker file): what a weights-only load must refuse."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_checkpoint(path, marker):
    torch.save({"state_dict": {"model.x": torch.ones(2)}, "optimizer_states": [], "loops": {},
                "hyper_parameters": {"cfg": {}}, "payload": Payload(marker)}, path)
    return path
