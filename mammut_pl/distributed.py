"""Ending a multi-process run cleanly.

Lightning destroys the torch.distributed group in an `atexit` hook, with no barrier: a rank that
finishes first tears its gloo connections (and, on rank 0, the TCP store) down while another
rank still uses them, and that rank can abort at exit ("terminate called without an active
exception"). The CLIs call `shutdown_process_group` when their work is done instead."""

from __future__ import annotations

from datetime import timedelta

import torch.distributed as dist

BARRIER_TIMEOUT = timedelta(minutes=10)  # a rank that never arrives: an error, not a hang


def shutdown_process_group(wait: bool = True) -> None:
    """Destroy this process' group, if any, after (wait) every rank has reached this point.
    After an error pass wait=False: the other ranks may never arrive."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if wait and dist.get_world_size() > 1:
            if dist.get_backend() == "gloo":  # gloo can time a barrier out and name the missing rank
                dist.monitored_barrier(timeout=BARRIER_TIMEOUT)
            else:
                dist.barrier()
    finally:
        dist.destroy_process_group()
