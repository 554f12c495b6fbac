import os

import pytest
import torch

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_cfg():
    from mammut_pl.model import MaMMUTConfig

    return MaMMUTConfig.from_name("test")


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (DDP rendezvous, a local MLflow server)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
