"""Image loading and transforms (CLIP normalisation, train-time random resized crop)."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image
from torch import Tensor
from torchvision import transforms as T

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
    return T.Compose([T.Lambda(_to_rgb), *geometry, T.ToTensor(), T.Normalize(MEAN, STD)])


def _to_rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


class ImageError(OSError, ValueError):
    """An image file that cannot be decoded (an OSError for old callers, a ValueError so that the
    CLIs report it as bad input: one line naming the file, exit code 2)."""


def load_image(path: str) -> Image.Image:
    """Open and fully decode an image; raises FileNotFoundError / ImageError naming the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"cannot decode image {path}: {err}") from None

