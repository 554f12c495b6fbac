"""Image loading and transforms (CLIP normalisation, train-time random resized crop)."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image
from torch import Tensor
from torchvision import transforms as T

from mammut_pl.data.images import ImageError, open_rgb, to_rgb  # noqa: F401  (ImageError: re-exported)

# CLIP's normalisation, the usual one for image-text models
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def image_transform(size: int, train: bool, augment: bool = True, crop_scale_min: float = 0.8) -> Callable[[Image.Image], Tensor]:
    """PIL image -> (3, size, size) float tensor. Training: random resized crop (no flip:
    captions mention left and right). Evaluation: resize + centre crop."""
    if train and augment:
        geometry = [T.RandomResizedCrop(size, scale=(crop_scale_min, 1.0), interpolation=T.InterpolationMode.BICUBIC)]
    else:
        geometry = [T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)]
    return T.Compose([T.Lambda(to_rgb), *geometry, T.ToTensor(), T.Normalize(MEAN, STD)])


def load_image(path: str, exif_transpose: bool = False) -> Image.Image:
    """Open and fully decode an image as 8-bit RGB (`images.open_rgb`: every PIL mode by its real
    range); raises FileNotFoundError / ImageError naming the file."""
    return open_rgb(path, exif_transpose=exif_transpose)

