"""The img2dataset webdataset writer: pretraining pairs with noisier alt-text."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

from mammut_pl.data.demo.world import (alt_text, background, DemoSizes, dump_json, IMAGE_SIZE, jpeg_bytes, render,
                                       rng_stream, sample_scene, TAR_MTIME)

def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), TAR_MTIME, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def write_webdata(root: Path, seed: int, sz: DemoSizes) -> tuple[dict[str, Any], list[str]]:
    """img2dataset output: 0000N.tar with KEY.jpg/.txt/.json (keys = shard*10000 + index; failed
    downloads leave gaps), and 0000N_stats.json. The pretraining pairs: noisier alt-text."""
    rng = rng_stream(seed, 2)
    root.mkdir(parents=True, exist_ok=True)
    texts, total = [], 0
    for shard in range(sz.web_shards):
        n_failed = int(rng.integers(0, max(2, sz.web_per_shard // 15)))
        count = sz.web_per_shard + n_failed
        failed = set(int(i) for i in rng.choice(count, n_failed, replace=False))
        errors: dict[str, int] = {}
        with tarfile.open(root / f"{shard:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(count):
                if i in failed:
                    msg = str(rng.choice(["HTTP Error 404: Not Found", "<urlopen error timed out>"]))
                    errors[msg] = errors.get(msg, 0) + 1
                    continue
                key = f"{shard * 10000 + i:09d}"
                objs = sample_scene(rng)
                jpg = jpeg_bytes(render(objs, background(rng, IMAGE_SIZE)))
                text = alt_text(rng, objs)
                orig = int(rng.choice([128, 256, 320, 480, 640]))
                meta = {"url": f"https://shapes.example.invalid/{key}.jpg", "caption": text, "key": key,
                        "status": "success", "error_message": None, "width": IMAGE_SIZE, "height": IMAGE_SIZE,
                        "original_width": orig, "original_height": orig, "exif": "{}",
                        "sha256": hashlib.sha256(jpg).hexdigest()}
                _tar_add(tar, f"{key}.jpg", jpg)
                _tar_add(tar, f"{key}.txt", text.encode())
                _tar_add(tar, f"{key}.json", json.dumps(meta).encode())
                texts.append(text)
        total += sz.web_per_shard
        dump_json({"count": count, "successes": sz.web_per_shard, "failed_to_download": n_failed, "failed_to_resize": 0,
               "duration": round(0.05 * count, 3), "start_time": TAR_MTIME, "end_time": TAR_MTIME + 0.05 * count,
               "status_dict": {"success": sz.web_per_shard, **dict(sorted(errors.items()))}},
              root / f"{shard:05d}_stats.json")
    return {"shards": sz.web_shards, "pairs": total}, texts
