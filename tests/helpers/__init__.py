"""What the test modules share, imported as `from tests.helpers import ...` (fixtures are in
tests/conftest.py): the repository's paths, free ports, the small model the CLI tests train, and
the command-line arguments that point an experiment at the tiny demo world.

Modules beside it: checkpoints.py (checkpoint files written by hand), references.py (independent
references several test modules check against), ddp_group.py (a gloo group for spawned ranks),
fuzz.py (hypothesis strategies for bad inputs), notebook_utils.py (run the ablations notebook)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository
TEST_DATA = ROOT / "tests" / "data"
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"  # the lead's ../shared, where it is checked out

# a model small enough for a CLI run of a few steps on a loaded 2-core machine (over model.preset=tiny)
SMALL_MODEL = ["model.width=64", "model.depth=2", "model.heads=2", "model.num_cross_attn=1", "model.embed_dim=32",
               "model.image_size=32", "model.encoder_kwargs.depth=1", "model.context_length=24"]


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (DDP rendezvous, a local MLflow server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_world_args(world: Path, dataset: str, tmp: Path, mlflow: bool = True) -> list[str]:
    """`data.root` / `data.tokenizer` of the tiny demo world written to `world` (its `dataset` folder), the
    run's outputs and MLflow store under `tmp`, no workers and no progress bar: what every CLI test sets."""
    store = [f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db"] if mlflow else ["mlflow.enabled=false"]
    return [f"data.root={world}/{dataset}", f"data.tokenizer={world}/tokenizer.json", f"output_dir={tmp}/outputs",
            *store, "data.num_workers=0", "trainer.enable_progress_bar=false"]


def logged_runs(tmp: Path) -> tuple[Any, list[Any]]:
    """The MLflow client of the store demo_world_args(..., tmp) points at, and the runs of its
    experiment `mammut_pl`, newest first."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    return client, client.search_runs([client.get_experiment_by_name("mammut_pl").experiment_id])
