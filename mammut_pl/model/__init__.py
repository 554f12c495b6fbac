"""The MaMMUT model: plain PyTorch, no Lightning, no MLflow."""

from mammut_pl.model.config import MaMMUTConfig
from mammut_pl.model.mammut import MaMMUT
from mammut_pl.model.openmammut import load_openmammut, save_openmammut

__all__ = ["MaMMUT", "MaMMUTConfig", "load_openmammut", "save_openmammut"]
