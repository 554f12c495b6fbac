"""Fixtures shared by every test folder: unit/ (one function or module), integration/ (several library
parts together: datamodules on generated data, tasks with a trainer, DDP), e2e/ (whole command lines,
marked `e2e`). Helper functions and modules are in tests/helpers/ (`from tests.helpers import ...`)."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_cfg():
    from mammut_pl.model import MaMMUTConfig

    return MaMMUTConfig.from_name("test")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The tiny demo world (every dataset in its published layout, tokenizer.json), written once per
    test module: a module may change its copy (a broken file, a fresh run) without touching another's."""
    from mammut_pl.data.demo import write_demo

    return write_demo(tmp_path_factory.mktemp("world"), tiny=True)
