"""Image transforms and the shared text collation.

Two training paths: `image_transform` (PIL -> normalised float tensor, torchvision ops) and
`FastCrop` (PIL -> uint8 tensor, for web shards at GPU speed): the same RandomResizedCrop
distribution, but the crop and the bicubic resize in one PIL call, JPEG DCT-domain downscaling
(`Image.draft`) where the crop is >= 2x the output, and uint8 until the device, where
`normalize_images` turns the whole batch into floats (the task's `on_after_batch_transfer`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

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


class FastCrop:
    """An opened (not yet decoded) PIL image -> (3, size, size) uint8 tensor.

    Training (`train=True`): the crop box is drawn by torchvision's
    `RandomResizedCrop.get_params` (open_clip's train transform: same `scale`/`ratio`, same
    torch RNG draws). Evaluation: the centre square (Resize + CenterCrop). A JPEG whose crop is
    at least twice the output size on both sides is decoded at 1/2, 1/4 or 1/8 scale in the DCT
    domain first (`Image.draft`; the crop stays >= `size`). Then crop + bicubic antialiased
    resize in one call, on uint8: `resize="torch"` (default) runs torch's uint8 kernel on a view
    of the crop (the same filter as PIL's: > 60 dB from it, ~3x faster than PIL's on one core),
    `resize="pil"` runs `Image.resize(box=..., reducing_gap=...)`. No float conversion and no
    normalisation here: the device does it for the whole batch (`normalize_images`)."""

    def __init__(self, size: int, train: bool = True, scale: tuple[float, float] = (0.8, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), draft: bool = True, resize: str = "torch",
                 reducing_gap: float | None = 3.0) -> None:
        if resize not in ("torch", "pil"):
            raise ValueError(f"FastCrop: resize must be 'torch' or 'pil', got {resize!r}")
        self.size, self.train, self.scale, self.ratio = size, train, scale, ratio
        self.draft, self.resize, self.reducing_gap = draft, resize, reducing_gap

    def box(self, img: Image.Image) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of the region that becomes the output, in source pixels."""
        if self.train:
            top, left, h, w = T.RandomResizedCrop.get_params(img, list(self.scale), list(self.ratio))
            return left, top, left + w, top + h
        w, h = img.size  # Resize(size) + CenterCrop(size) ~ the centre square (up to a sub-pixel offset)
        side = min(w, h)
        left, top = int(round((w - side) / 2.0)), int(round((h - side) / 2.0))
        return left, top, left + side, top + side

    def __call__(self, img: Image.Image) -> Tensor:
        x0, y0, x1, y1 = self.box(img)
        if self.draft and img.format == "JPEG" and min(x1 - x0, y1 - y0) >= 2 * self.size:
            # the smallest DCT scale at which the crop still covers `size` pixels
            fx, fy = (x1 - x0) / self.size, (y1 - y0) / self.size
            full = img.size
            img.draft("RGB", (math.ceil(full[0] / fx), math.ceil(full[1] / fy)))
            sx, sy = img.size[0] / full[0], img.size[1] / full[1]
            x0, y0, x1, y1 = x0 * sx, y0 * sy, x1 * sx, y1 * sy
        img = to_rgb(img)  # every mode -> 8-bit RGB by its real range (images.to_rgb): the one conversion
        s = self.size
        if self.resize == "pil":
            out = img.resize((s, s), Image.Resampling.BICUBIC, box=(x0, y0, x1, y1), reducing_gap=self.reducing_gap)
            return torch.from_numpy(np.array(out)).permute(2, 0, 1)  # (3, H, W) uint8 view of HWC
        pixels = torch.from_numpy(np.array(img)).permute(2, 0, 1)  # (3, H, W) view of HWC (channels-last)
        x0, y0 = int(round(x0)), int(round(y0))
        x1, y1 = max(x0 + 1, int(round(x1))), max(y0 + 1, int(round(y1)))
        crop = pixels[None, :, y0:y1, x0:x1]  # (1, 3, h, w), a view
        if crop.shape[-2:] == (s, s):
            return crop[0].clone()
        return F.interpolate(crop, size=(s, s), mode="bicubic", antialias=True)[0]  # uint8 in, uint8 out


def normalize_images(images: Tensor) -> Tensor:
    """A uint8 batch (B, 3, H, W) in [0, 255] -> CLIP-normalised floats; float batches (already
    normalised by `image_transform`) are returned as they are, so this is safe to call on any batch."""
    if images.dtype != torch.uint8:
        return images
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    scale = 1.0 / (255.0 * std)
    return torch.addcmul(-mean / std, images.float(), scale)  # (x / 255 - mean) / std


def normalize_batch(batch: Any) -> Any:
    """`normalize_images` on a dict batch's "images" (a LightningModule's on_after_batch_transfer)."""
    if isinstance(batch, dict) and isinstance(batch.get("images"), Tensor) and batch["images"].dtype == torch.uint8:
        batch = {**batch, "images": normalize_images(batch["images"])}
    return batch


def load_image(path: str, exif_transpose: bool = False) -> Image.Image:
    """Open and fully decode an image as 8-bit RGB (`images.open_rgb`: every PIL mode by its real
    range); raises FileNotFoundError / ImageError naming the file."""
    return open_rgb(path, exif_transpose=exif_transpose)

