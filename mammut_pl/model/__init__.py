"""The MaMMUT model: plain PyTorch, no Lightning, no MLflow."""

from mammut_pl.model.config import MaMMUTConfig
from mammut_pl.model.mammut import MaMMUT

__all__ = ["MaMMUT", "MaMMUTConfig"]
