"""data/images.py: every PIL mode the readers meet -> 8-bit RGB, against hand-computed pixels."""

import io

import numpy as np
import pytest
from PIL import Image

from mammut_pl.data.images import BACKGROUND, ImageError, open_rgb, to_rgb
from mammut_pl.data.transforms import load_image


def _img(mode, pixels, **info):
    """A 1 x len(pixels) image of `mode` holding `pixels`."""
    img = Image.new(mode, (len(pixels), 1))
    img.putdata(pixels)
    img.info.update(info)
    return img


def _palette(mode):
    img = Image.new(mode, (2, 1))
    img.putpalette([10, 20, 30, 200, 100, 0] + [0] * (256 * 3 - 6))
    img.putdata([0, 1] if mode == "P" else [(0, 255), (1, 128)])
    return img


def _i16(mode):
    a = np.array([[0, 1000, 32768, 65535]], dtype=">u2" if mode == "I;16B" else "<u2")
    return Image.frombytes(mode, (4, 1), a.tobytes())


W = BACKGROUND[0]  # 255: composited on white
# (name, image, expected RGB pixels left to right, worked by hand)
CASES = [
    ("1", lambda: _img("1", [0, 255]), [(0, 0, 0), (255, 255, 255)]),
    ("L", lambda: _img("L", [0, 77]), [(0, 0, 0), (77, 77, 77)]),
    # alpha a: c * a/255 + 255 * (1 - a/255); a = 128: 77*128/255 + 255*127/255 = 38.65 + 127 = 165.65
    ("LA", lambda: _img("LA", [(77, 255), (77, 128), (77, 0)]), [(77,) * 3, (166,) * 3, (W,) * 3]),
    ("P", lambda: _palette("P"), [(10, 20, 30), (200, 100, 0)]),
    # palette entry 1 = (200, 100, 0) at a = 128: 100.4 + 127, 50.2 + 127, 0 + 127
    ("PA", lambda: _palette("PA"), [(10, 20, 30), (227, 177, 127)]),
    ("P+tRNS", lambda: (lambda im: (im.info.__setitem__("transparency", 0), im)[1])(_palette("P")),
     [(W,) * 3, (200, 100, 0)]),
    ("RGB", lambda: _img("RGB", [(1, 2, 3)]), [(1, 2, 3)]),
    ("RGBA", lambda: _img("RGBA", [(200, 100, 0, 128), (9, 8, 7, 255)]), [(227, 177, 127), (9, 8, 7)]),
    # (255 - C)(255 - K) / 255: 204 * 191 / 255 = 152.8, 153 * 191 / 255 = 114.6, 255 * 191 / 255 = 191
    ("CMYK", lambda: _img("CMYK", [(51, 102, 0, 64)]), [(153, 115, 191)]),
    # JFIF: R = Y + 1.402 (Cr-128) = 200.9, G = Y - 0.344 (Cb-128) - 0.714 (Cr-128) = 48.6, B = Y + 1.772 (Cb-128)
    ("YCbCr", lambda: _img("YCbCr", [(100, 128, 200)]), [(201, 49, 100)]),
    # 16-bit: v * 255 / 65535 -> 0, 3.89, 127.5, 255 (clipping would give 0, 255, 255, 255)
    ("I;16", lambda: _i16("I;16"), [(0,) * 3, (4,) * 3, (128,) * 3, (255,) * 3]),
    ("I;16B", lambda: _i16("I;16B"), [(0,) * 3, (4,) * 3, (128,) * 3, (255,) * 3]),
    # I within 0..65535: as 16-bit
    ("I 16-bit", lambda: _img("I", [0, 1000, 65535]), [(0,) * 3, (4,) * 3, (255,) * 3]),
    # I outside: own min..max (-100..300) -> (v + 100) * 255 / 400: 0, 63.75, 255
    ("I stretched", lambda: _img("I", [-100, 0, 300]), [(0,) * 3, (64,) * 3, (255,) * 3]),
    # F in 0..1: v * 255 -> 0, 63.75, 255
    ("F unit", lambda: _img("F", [0.0, 0.25, 1.0]), [(0,) * 3, (64,) * 3, (255,) * 3]),
    # F outside: min..max (-2..6) -> (v + 2) * 255 / 8: 0, 63.75, 255; NaN -> 0
    ("F stretched", lambda: _img("F", [-2.0, 0.0, 6.0, float("nan")]), [(0,) * 3, (64,) * 3, (255,) * 3, (0,) * 3]),
]


@pytest.mark.parametrize("name,make,expected", CASES, ids=[c[0] for c in CASES])
def test_every_mode_by_its_real_range(name, make, expected):
    out = to_rgb(make())
    assert out.mode == "RGB"
    got = np.asarray(out).reshape(-1, 3).astype(int)
    # YCbCr: PIL's fixed-point JFIF conversion may round the other way by one
    tol = 1 if name == "YCbCr" else 0
    np.testing.assert_allclose(got, np.array(expected), atol=tol, err_msg=name)


def test_sixteen_bit_png_file_keeps_its_contrast(tmp_path):
    """The file form of the issue's case: a 16-bit PNG of a dark-to-bright ramp is not white."""
    ramp = (np.linspace(0, 65535, 256)[None, :].repeat(4, 0)).astype(np.uint16)
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    out = np.asarray(load_image(str(path)))[0, :, 0].astype(int)
    np.testing.assert_allclose(out, np.round(ramp[0] / 257), atol=1)
    assert (out == 255).mean() < 0.01


def _rotated_jpeg() -> bytes:
    """A 4 x 2 (w x h) JPEG, left half black, right half white, tagged 'rotate 90 CW to view' (6)."""
    a = np.zeros((2, 4), np.uint8)
    a[:, 2:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(a).convert("RGB").save(buf, "JPEG", quality=100, exif=exif)
    return buf.getvalue()


def test_exif_orientation_only_where_asked():
    data = _rotated_jpeg()
    stored = open_rgb(data)
    assert stored.size == (4, 2)  # datasets: the stored pixel array, as their annotations describe
    upright = open_rgb(data, exif_transpose=True)
    assert upright.size == (2, 4)  # predict: as a viewer shows it
    # orientation 6 = rotate 90 degrees clockwise: the stored left (black) half becomes the top
    a = np.asarray(upright)[..., 0].astype(int)
    assert a[0].max() < 60 and a[-1].min() > 200


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        open_rgb(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="bad.png"):
        open_rgb(bad)
    with pytest.raises(ImageError, match="x.jpg of 4x2 pixels is larger than 5"):
        open_rgb(_rotated_jpeg(), max_pixels=5, name="x.jpg")
