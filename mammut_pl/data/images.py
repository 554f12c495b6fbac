"""Every image the suite reads becomes 8-bit RGB here, by the range its mode really has.

PIL's own `convert("RGB")` clips 16-bit grayscale at 255 (a 16-bit photo turns white) and
drops alpha (transparent pixels show whatever colour they happen to store). `to_rgb` instead:

| mode                    | rule                                                                  |
|-------------------------|-----------------------------------------------------------------------|
| RGB                     | unchanged                                                             |
| 1                       | 0 -> 0, 1 -> 255, grey                                                |
| L                       | grey (v, v, v)                                                        |
| I;16, I;16B, I;16L      | 16-bit range scaled: round(v * 255 / 65535), grey                     |
| I (32-bit int)          | all in 0..65535: as 16-bit (what PNG/TIFF decoders emit for 16-bit    |
|                         | data); otherwise the image's own min..max stretched to 0..255         |
| F (32-bit float)        | all finite values in 0..1: round(v * 255); otherwise own min..max     |
|                         | stretched to 0..255; NaN/inf -> 0; a constant image -> 0              |
| LA, PA, RGBA, P + tRNS  | composited on BACKGROUND (white): round(c * a + 255 * (1 - a))        |
| P (no transparency)     | its palette colour                                                    |
| CMYK                    | PIL's multiplicative rule: R = (255 - C)(255 - K) / 255 (JPEG Adobe   |
|                         | inversion undone by the decoder; ICC profiles are not applied)        |
| YCbCr                   | JFIF full-range BT.601: R = Y + 1.402 (Cr - 128), ...                 |
| any other PIL mode      | PIL's convert("RGB"); a mode it cannot convert is an ImageError       |

EXIF orientation (`open_rgb(..., exif_transpose=True)`) is a per-reader convention:
- datasets (COCO captions, VQAv2, LVIS, webdataset shards): NOT applied. Their annotations
  (LVIS boxes, the width/height fields) describe the stored pixel array, and open_clip's
  training pipeline does not rotate either, so a model sees what it was trained on.
- `predict` (a person's own photos): applied, so the image is upright as a viewer shows it and
  detection boxes are in that upright frame.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

BACKGROUND = (255, 255, 255)  # what transparent pixels are composited on


class ImageError(OSError, ValueError):
    """An image file that cannot be decoded (an OSError for old callers, a ValueError so that the
    CLIs report it as bad input: one line naming the file, exit code 2)."""


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB version of `img` by the rules of the table above (RGB is returned as is)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16"):
        a = np.asarray(img).astype(np.uint32)
        return _grey((a * 255 + 32767) // 65535)
    if mode == "I":
        a = np.asarray(img).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            return _grey(_stretch(a.astype(np.float64)))
        return _grey((a * 255 + 32767) // 65535)
    if mode == "F":
        a = np.asarray(img).astype(np.float64)
        finite = np.isfinite(a)
        vals = a[finite]
        if vals.size and vals.min() >= 0.0 and vals.max() <= 1.0:
            out = np.where(finite, np.floor(np.where(finite, a, 0.0) * 255.0 + 0.5), 0.0)
        else:
            out = _stretch(a)
        return _grey(out)
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode in ("P", "L", "RGB") and "transparency" in img.info):
        return _composite(img.convert("RGBA"))
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageError(f"cannot convert an image of mode {mode!r} to RGB: {err}") from None


def _grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L").convert("RGB")


def _stretch(a: np.ndarray) -> np.ndarray:
    """The finite values' min..max linearly onto 0..255 (non-finite -> 0, constant -> 0)."""
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape)
    lo, hi = a[finite].min(), a[finite].max()
    span = hi - lo if hi > lo else 1.0
    return np.where(finite, np.floor((np.where(finite, a, lo) - lo) * 255.0 / span + 0.5), 0.0)


def _composite(rgba: Image.Image) -> Image.Image:
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")


def open_rgb(source: str | Path | bytes, *, exif_transpose: bool = False, max_pixels: int | None = None,
             name: str | None = None) -> Image.Image:
    """Open, fully decode and convert an image file (a path, or its bytes) to 8-bit RGB.

    exif_transpose: apply the EXIF orientation tag (see the module docstring for who does).
    max_pixels: refuse larger images before decoding them.
    Raises FileNotFoundError / ImageError naming the file (`name`, else the path)."""
    where = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ImageError(f"image {where} of {img.width}x{img.height} pixels is larger than {max_pixels}")
            img.load()
            if exif_transpose:
                img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {where}") from None
    except ImageError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as err:
        raise ImageError(f"cannot decode image {where}: {err}") from None
