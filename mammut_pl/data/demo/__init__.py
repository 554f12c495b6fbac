"""The embedded demo world: coloured shapes, written in every real dataset format the suite reads.

    python -m mammut_pl.data.demo --out data/demo [--seed 0] [--tiny] [--force]

A small, learnable, deterministic world: 64x64 images of 1-3 shapes (5 shapes x 7 colours) at five
positions on a dark, noisy background, with captions, questions and boxes that describe exactly what
was drawn, and short clips of moving shapes whose questions need motion. Each dataset lands in its own
folder, in its published layout, so a reader written for the real data reads the demo unchanged:

    DIR/tokenizer.json   WordPiece vocabulary of all train-split texts (+ "question", "answer", ":")
    DIR/coco/            captions_{train,val}2017.json, {train,val}2017/*.jpg, dataset_coco.json (Karpathy)
    DIR/webdata/         img2dataset webdataset shards 0000N.tar (+ 0000N_stats.json): alt-text pairs
    DIR/vqav2/           v2_OpenEnded_mscoco_*_questions.json, v2_mscoco_*_annotations.json, images
    DIR/msrvtt/          videos/videoN.mp4, {train,val,test}_qa.json, MSRVTT_data.json, 1k-A test csv
    DIR/lvis/            lvis_v1_{train,val}.json, {train,val}2017/*.jpg; r/c/f categories
    DIR/zeroshot/        val/{colour}_{shape}/*.jpg (ImageFolder: one shape per image, 35 classes), templates.txt
    DIR/manifest.json    written last: its presence marks a finished world

Same seed -> byte-identical files (JSON, JPEG, tar and, with the same PyAV/x264 build, mp4). Every dataset
draws from its own RNG stream, so changing one writer does not change the others.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from mammut_pl.data.demo.coco import write_coco
from mammut_pl.data.demo.lvis import write_lvis
from mammut_pl.data.demo.msrvtt import write_msrvtt
from mammut_pl.data.demo.vqav2 import write_vqav2
from mammut_pl.data.demo.webdata import write_webdata
from mammut_pl.data.demo.world import (COLORS, DEMO_SIZES, IMAGE_SIZE, NUMBER_WORDS, POSITIONS, SHAPES, TAR_MTIME,
                                       TINY_SIZES, VERSION, VIDEO_FPS, VIDEO_FRAMES, VIDEO_SIZE, WHERE, DemoSizes,
                                       dump_json)
from mammut_pl.data.demo.zeroshot import write_zeroshot
from mammut_pl.data.tokenizer import train_tokenizer

__all__ = ["write_demo", "write_coco", "write_webdata", "write_vqav2", "write_msrvtt", "write_lvis", "write_zeroshot",
           "DemoSizes", "DEMO_SIZES", "TINY_SIZES", "VERSION", "COLORS", "SHAPES", "POSITIONS", "VIDEO_FRAMES",
           "VIDEO_FPS", "VIDEO_SIZE", "IMAGE_SIZE", "NUMBER_WORDS", "WHERE", "TAR_MTIME"]


def _manifest_matches(out: Path, seed: int, tiny: bool) -> bool:
    try:
        m = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return m.get("version") == VERSION and m.get("seed") == seed and m.get("tiny") == tiny


def _is_ours(out: Path) -> bool:
    try:
        return json.loads((out / "manifest.json").read_text()).get("created_by") == "mammut_pl.data.demo"
    except (OSError, ValueError):
        return False


def write_demo(out: str | Path, seed: int = 0, tiny: bool = False, force: bool = False) -> Path:
    """Write the demo world to `out` (see `_write_demo`). Safe to call from several processes at once
    (DDP ranks, sweep workers): one writes while the others wait on a lock of the parent folder, then
    reuse its world."""
    out = Path(out)
    if not force and _manifest_matches(out, seed, tiny):
        print(f"demo data already at {out}")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out.parent, os.O_RDONLY)  # a folder can be locked: no lock file is left behind
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when closed, or when the process dies
        return _write_demo(out, seed, tiny, force)
    finally:
        os.close(fd)


def _write_demo(out: str | Path, seed: int = 0, tiny: bool = False, force: bool = False) -> Path:
    """Write the demo world to `out` (cached: returns at once if a finished world with the same seed,
    tiny flag and version is there). Another demo world in `out` is replaced; a folder that is not a demo
    world is only replaced with `force=True`."""
    out = Path(out)
    if not force and _manifest_matches(out, seed, tiny):
        print(f"demo data already at {out}")
        return out
    if out.exists() and any(out.iterdir()) and not (force or _is_ours(out)):
        raise FileExistsError(f"{out} exists and is not a mammut_pl demo world (no manifest.json of ours); "
                              f"pass force=True / --force to replace it, or choose another --out")
    sz = TINY_SIZES if tiny else DEMO_SIZES
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    try:
        counts: dict[str, Any] = {}
        texts: list[str] = ["question", "answer", ":"]
        for name, writer in (("coco", write_coco), ("webdata", write_webdata), ("vqav2", write_vqav2),
                             ("msrvtt", write_msrvtt), ("lvis", write_lvis), ("zeroshot", write_zeroshot)):
            counts[name], t = writer(tmp / name, seed, sz)
            texts += t
        tok = train_tokenizer(texts, tmp / "tokenizer.json", vocab_size=1000)
        counts["tokenizer"] = {"vocab_size": tok.vocab_size}
        dump_json({"version": VERSION, "seed": seed, "tiny": tiny, "counts": counts, "created_by": "mammut_pl.data.demo"},
              tmp / "manifest.json")
        if not force and _manifest_matches(out, seed, tiny):  # another process (a DDP rank) finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return out
        if out.exists():  # an older/other demo world (or forced): move it aside, then swap
            old = out.parent / f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}"
            out.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(out)
        except OSError:
            if _manifest_matches(out, seed, tiny):  # another process (e.g. a DDP rank) finished first
                shutil.rmtree(tmp, ignore_errors=True)
                return out
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"demo data written to {out} in {time.perf_counter() - t0:.1f}s")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m mammut_pl.data.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder to write (each dataset in a subfolder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="a few images per dataset, for tests (< 2 s)")
    p.add_argument("--force", action="store_true",
                   help="rewrite even if a matching world is there; replace a folder that is not a demo world")
    a = p.parse_args(argv)
    write_demo(a.out, seed=a.seed, tiny=a.tiny, force=a.force)

