"""Make ``import torchvision`` work when a CUDA torchvision wheel meets a CPU torch.

Installed as a ``.pth`` hook by ``scripts/setup_venv.sh`` ONLY when the plain
import fails. torchvision registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` at import time; without its compiled library the schemas
do not exist and the import raises. Defining the two schemas first lets the
import finish. The compiled ops themselves stay unavailable: mammut_pl never
calls them (its NMS is pure torch).
"""

import importlib.abc
import sys

_LIB = None  # keep the Library object alive for the whole process


def _define_schemas() -> None:
    global _LIB
    if _LIB is not None:
        return
    import torch

    _LIB = torch.library.Library("torchvision", "DEF")
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.define(
        "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
    )


class _Finder(importlib.abc.MetaPathFinder):
    """Runs _define_schemas just before torchvision is first imported."""

    def find_spec(self, fullname, path, target=None):  # noqa: D401
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            _define_schemas()
        return None


sys.meta_path.insert(0, _Finder())
