"""FLOPs of a piece of work, counted by torch.utils.flop_counter (matmuls, convolutions and
attention, forward and backward): `make bench`'s GFLOP/s and MFU, the scaling study's compute."""

from __future__ import annotations

from typing import Callable


def count_flops(step: Callable[[], None]) -> int:
    """The FLOPs `step()` runs (e.g. one training step: forward, loss, backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()
