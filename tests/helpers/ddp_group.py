"""A gloo process group for tests that spawn ranks themselves (torch.multiprocessing.spawn).

- Rendezvous through a FileStore in the test's tmp folder: no TCP port picked, freed and raced
  for by another process on a busy machine, and no store server thread living in rank 0.
- Torn down cleanly: every rank passes a barrier before any rank destroys the group, so no rank
  closes its connections while another still talks through them, then the rank process ends with
  os._exit(0) (a gloo rank used to abort at exit with "terminate called without an active
  exception"). Use it as the whole body of a spawned rank; an error still propagates normally."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path


@contextmanager
def gloo_group(rank: int, world: int, folder: str | Path) -> Iterator[None]:
    import torch.distributed as dist

    store = Path(folder) / "gloo_store"  # one per group: the test's own tmp folder
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(minutes=10))
    ok = False
    try:
        yield
        ok = True
    finally:
        if ok:  # after an error the other rank may never arrive: do not wait for it
            dist.barrier()
        dist.destroy_process_group()
    # The rank's work is done and its results are on disk. Leave without the interpreter's
    # teardown: gloo's C++ threads meeting static destructors at exit still aborted a rank
    # ("terminate called without an active exception", SIGABRT) in a fresh-clone CI run, after
    # the barrier and the destroy above. So the group must be the whole body of a spawned rank.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
