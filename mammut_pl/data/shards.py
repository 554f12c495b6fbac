"""Reading img2dataset's webdataset shards: their URLs (local, http(s), fsspec; never `pipe:`),
their samples with every unreadable one skipped, logged and counted (SkipCounter), a sample's
image and caption decoded, and the shard sizes from their stats files. data/webdata.py streams
them into training batches."""

from __future__ import annotations

import io
import json
import logging
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import braceexpand
import fsspec
from PIL import Image
from webdataset.tariterators import group_by_keys, tar_file_expander

from mammut_pl.data.images import ImageError

log = logging.getLogger("mammut_pl.data.webdata")  # the reader's warnings keep their logger name
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
MAX_WARNINGS = 20  # per worker, then only counted
MAX_PIXELS = 50_000_000  # larger images are skipped (decompression bombs, absurd web images)


class SkipCounter:
    """Counts skipped samples in one worker process (tar errors and decode errors)."""

    def __init__(self) -> None:
        self.pending = 0
        self.total = 0
        self.warned = 0
        self.muted = False  # while replaying up to a resume position: counted before the kill

    def skip(self, what: str, err: BaseException) -> None:
        if self.muted:
            return
        self.pending += 1
        self.total += 1
        if self.warned < MAX_WARNINGS:
            self.warned += 1
            log.warning("skipping %s: %s: %s", what, type(err).__name__, err)

    def take(self) -> int:
        n, self.pending = self.pending, 0
        return n

    def tar_handler(self, err: BaseException) -> bool:  # webdataset handler: True = continue
        self.skip("unreadable shard data", err)
        return True


def _check_protocol(url: str, key: str) -> None:
    """A shard URL must be a local path, http(s) or an fsspec filesystem that is installed."""
    if url.startswith("pipe:"):
        raise ValueError(f"{key}: {url!r}: `pipe:` would run a shell command from the config; use a path or "
                         "an fsspec URL (s3://, gs://, hf://, ...)")
    protocol = url.split("://", 1)[0] if "://" in url else ""
    if protocol in ("", "http", "https"):
        return
    try:
        fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as err:  # unknown protocol, or its package (s3fs, gcsfs, ...) missing
        raise ValueError(f"{key}: {url!r}: cannot read {protocol}:// URLs: {err}") from None


def shard_urls(root: str, pattern: str = "") -> list[str]:
    """Shard paths or URLs: `pattern` (brace-expanded, relative to root unless absolute or a URL)
    or every *.tar in root. URLs other than http(s) (s3://, gs://, hf://, memory://, file://, ...)
    are read through fsspec, streamed; no shell is ever run."""
    if pattern:
        urls = []
        for p in braceexpand.braceexpand(pattern):
            _check_protocol(p, "data.webdata.shards")
            absolute = "://" in p or Path(p).is_absolute()
            urls.append(p if absolute else (f"{root.rstrip('/')}/{p}" if "://" in root else str(Path(root) / p)))
        missing = [u for u in urls if not _remote(u) and not _exists(u)]
        if missing:
            raise FileNotFoundError(f"data.webdata.shards: {len(missing)} shard(s) missing, e.g. {missing[0]}")
        return urls
    if "://" in root:
        _check_protocol(root, "data.root")
        fs, path = fsspec.core.url_to_fs(root)
        urls = sorted(fs.unstrip_protocol(p) for p in fs.glob(path.rstrip("/") + "/*.tar"))
        if not urls:
            raise FileNotFoundError(f"data.root: no *.tar shards at {root} (expected img2dataset's 00000.tar, ...)")
        return urls
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"data.root: webdataset shard folder not found: {base} (expected 00000.tar, 00001.tar, ...)")
    urls = sorted(str(p) for p in base.glob("*.tar"))
    if not urls:
        raise FileNotFoundError(f"data.root: no *.tar shards in {base} (expected img2dataset's 00000.tar, ...)")
    return urls


def _remote(url: str) -> bool:
    """Object stores and web servers: not checked shard by shard at start (thousands of requests)."""
    return "://" in url and not url.startswith(("file://", "memory://"))


def _exists(url: str) -> bool:
    if "://" in url:
        fs, path = fsspec.core.url_to_fs(url)
        return fs.isfile(path)
    return Path(url).is_file()


def open_shard(url: str) -> Any:
    """A readable binary stream of one shard: a local file, http(s) via urllib, anything else via
    fsspec (streamed in blocks; the filesystem's package, e.g. s3fs or gcsfs, must be installed)."""
    if url.startswith(("http://", "https://")):
        return urllib.request.urlopen(url, timeout=60)  # noqa: S310 - the scheme is checked
    if "://" in url:
        return fsspec.open(url, "rb").open()
    return open(url, "rb")


def shard_samples(urls: Any, counter: SkipCounter, give_up_after: int = 0) -> Iterator[dict[str, Any]]:
    """Raw webdataset samples ({"__key__", "__url__", "jpg": bytes, "txt": bytes, ...}) of the
    shards in order; unreadable shards and tar errors are counted by `counter`. `give_up_after`
    (for endless resampled shard lists): so many shards in a row without a sample is an error."""
    empty = 0
    for url in urls:
        try:
            stream = open_shard(url)
        except Exception as err:  # noqa: BLE001
            counter.skip(f"shard {url}", err)
            stream = None
        n = 0
        if stream is not None:
            with stream:
                files = tar_file_expander([{"url": url, "stream": stream}], handler=counter.tar_handler)
                for sample in group_by_keys(files, handler=counter.tar_handler):
                    n += 1
                    yield sample
        empty = 0 if n else empty + 1
        if give_up_after and empty >= give_up_after:
            raise ValueError(f"data.root: {empty} shards in a row held no readable sample (last: {url})")


def decode_sample(sample: dict[str, Any], transform) -> tuple[Any, str]:
    """(image tensor, caption) of one raw sample; raises ValueError/OSError if it is unusable."""
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise ValueError(f"no image member (.{'/.'.join(IMAGE_KEYS)})")
    if "txt" not in sample:
        raise ValueError("no caption member (.txt)")
    caption = sample["txt"].decode("utf-8").strip()
    if not caption:
        raise ValueError("empty caption")
    name = f".{key}"
    try:
        with Image.open(io.BytesIO(sample[key])) as img:  # reads the header only
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(f"image {name} of {img.width}x{img.height} pixels is larger than {MAX_PIXELS}")
            # the transform decodes (FastCrop: at a reduced DCT scale where it can) and converts the mode
            # (images.to_rgb); no EXIF rotation: open_clip's convention for shards (see data/images.py)
            return transform(img), caption
    except ImageError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as err:
        raise ImageError(f"cannot decode image {name}: {err}") from None


def read_shard_sizes(urls: list[str]) -> list[int] | None:
    """Samples in each shard, from img2dataset's `<shard>_stats.json` ("successes") or open_clip's
    `sizes.json` ({"00000.tar": n, ...}) beside it; None if any is unknown (or remote: not fetched)."""
    sizes: list[int] = []
    listings: dict[str, dict[str, Any]] = {}
    for url in urls:
        if _remote(url):
            return None
        folder, name = url.rsplit("/", 1) if "/" in url else (".", url)
        try:
            with fsspec.open(f"{folder}/{name.rsplit('.', 1)[0]}_stats.json", "rt") as f:
                sizes.append(int(json.load(f)["successes"]))
                continue
        except (OSError, KeyError, ValueError, TypeError):
            pass
        if folder not in listings:
            try:
                with fsspec.open(f"{folder}/sizes.json", "rt") as f:
                    listings[folder] = json.load(f)
            except (OSError, ValueError):
                listings[folder] = {}
        if name not in listings[folder]:
            return None
        sizes.append(int(listings[folder][name]))
    return sizes
