"""Image classification data in the ImageFolder layout (one folder per class), as torchvision
and timm read it:

    ROOT/n01440764/ILSVRC2012_val_00000293.JPEG
    ROOT/n01443537/ILSVRC2012_val_00000236.JPEG
    ...

The class index is the position of the folder name in sorted order (torchvision's rule). For
ImageNet-1k val (the 1000 WordNet-id folders, e.g. after the usual `valprep.sh`) the sorted wnids
ARE the standard class indices 0..999: the order of open_clip's IMAGENET_CLASSNAMES and of timm's
imagenet_synsets.txt. Images are streamed in file order (no shuffle) by a plain DataLoader.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.datasets import DatasetFolder

from mammut_pl.data.transforms import image_transform, load_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ClassFolders(DatasetFolder):
    """torchvision's ImageFolder with the suite's image loader (errors name the file) and clear
    errors for a missing root, a root without class folders and an empty class folder."""

    def __init__(self, root: str | Path, transform: Callable | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root} (expected ROOT/CLASS/IMAGE files)")
        try:
            super().__init__(str(root), load_image, IMAGE_EXTENSIONS, transform=transform)
        except FileNotFoundError as err:  # no class folder, or a class folder without images
            raise ValueError(f"{root}: not an ImageFolder layout (one sub-folder of images per class): {err}") from None

    @property
    def folders(self) -> list[str]:
        """Class folder names; index = class id."""
        return list(self.classes)


def image_folder_loader(root: str | Path, image_size: int = 224, batch_size: int = 64, num_workers: int = 2,
                        transform: Callable[..., Tensor] | None = None) -> DataLoader:
    """Images of an ImageFolder in a fixed order, batched as (images (B, 3, H, W), labels (B,)).
    `transform` defaults to the suite's evaluation transform (resize + centre crop, CLIP mean/std)."""
    dataset = ClassFolders(root, transform or image_transform(image_size, train=False))
    # its own generator: iterating never draws from the global RNG (training randomness stays as it was)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(0))
