"""The MSRVTT writer: clips of one moving and one static shape (mp4), MSRVTT-QA questions, captions."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mammut_pl.data.demo.world import (article, background, COLORS, DATE, DemoSizes, dump_json, make_obj, Obj, render,
                                       rng_stream, SHAPES, VERSION, VIDEO_FPS, VIDEO_FRAMES, VIDEO_SIZE)

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


@dataclass(frozen=True)
class Clip:
    mover: Obj  # position field unused; (cx, cy) is its position at frame 0
    static: Obj
    direction: str
    travel: float  # pixels moved over the clip
    appear: tuple[int, int]  # first visible frame of (mover, static)

    def frame_objs(self, t: int) -> list[Obj]:
        dx, dy = DIRECTIONS[self.direction]
        f = t / (VIDEO_FRAMES - 1)
        m = self.mover
        moved = Obj(m.shape, m.color, "", m.size, m.cx + dx * f * self.travel, m.cy + dy * f * self.travel, m.r, m.rgb)
        return [o for o, a in ((moved, self.appear[0]), (self.static, self.appear[1])) if t >= a]

    @property
    def first(self) -> Obj:
        return self.mover if self.appear[0] < self.appear[1] else self.static

    @property
    def last(self) -> Obj:
        return self.static if self.appear[0] < self.appear[1] else self.mover


def sample_clip(rng: np.random.Generator, size: int = VIDEO_SIZE) -> Clip:
    """One shape moving in a direction, another standing still; they appear at different frames.
    Start points vary so a single frame's position does not give the direction away."""
    while True:
        c1, c2 = (str(c) for c in rng.choice(list(COLORS), 2, replace=False))
        s1, s2 = (str(s) for s in rng.choice(SHAPES, 2, replace=False))
        direction = str(rng.choice(list(DIRECTIONS)))
        dx, dy = DIRECTIONS[direction]
        travel = float(rng.uniform(0.35, 0.45) * size)
        along = rng.uniform(0.15, 0.85 - travel / size) * size  # start coordinate along the motion axis
        if dx + dy < 0:
            along = size - along
        across = rng.uniform(0.2, 0.8) * size
        start = (along, across) if dx else (across, along)
        mover = make_obj(rng, s1, c1, "", size, centre=start)
        static = make_obj(rng, s2, c2, "", size, centre=tuple(rng.uniform(0.18, 0.82, 2) * size))
        t0 = int(rng.integers(0, 5))
        t1 = int(rng.integers(t0 + 3, 11))
        appear = (t0, t1) if rng.random() < 0.5 else (t1, t0)
        clip = Clip(mover, static, direction, travel, appear)
        # keep the two shapes apart all the time, so colour centroids measure each one alone
        gap = min(math.dist((o.cx, o.cy), (static.cx, static.cy)) for o in
                  (clip.frame_objs(t)[0] for t in range(VIDEO_FRAMES) if t >= appear[0]))
        if gap > mover.r + static.r + 3:
            return clip


def clip_questions(rng: np.random.Generator, clip: Clip) -> list[tuple[str, str]]:
    """Two questions that need the time axis: the direction of motion and the order of appearance."""
    m = clip.mover
    order = [("what appears first?", clip.first.shape), ("what appears last?", clip.last.shape),
             ("what color appears first?", clip.first.color)]
    return [(f"which way does the {m.color} {m.shape} move?", clip.direction), order[int(rng.integers(len(order)))]]


def clip_captions(rng: np.random.Generator, clip: Clip, n: int = 5) -> list[str]:
    m, s = clip.mover, clip.static
    moving = f"{article(f'{m.color} {m.shape}')} moves {clip.direction if clip.direction in ('up', 'down') else 'to the ' + clip.direction}"
    first, last = (article(f"{o.color} {o.shape}") for o in (clip.first, clip.last))
    templates = [f"{moving} and {article(f'{s.color} {s.shape}')} stays still",
                 f"first {first} appears and then {last}",
                 f"{last} appears after {first}",
                 f"{article(f'{m.color} {m.shape}')} moving {clip.direction}",
                 f"{moving} on a dark background"]
    return [templates[i] for i in rng.permutation(len(templates))[:n]]


def write_video(path: Path, frames: Sequence[np.ndarray]) -> str:
    """H.264 (libx264) when the PyAV wheel has it, else MPEG-4 part 2; returns the codec used."""
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w", format="mp4") as container:
        # Identical bytes run to run: one thread, and no MB-tree rate control, whose output on such small
        # frames was seen to depend on uninitialised memory (differed between processes).
        options = ({"crf": "25", "preset": "medium", "threads": "1", "x264-params": "mbtree=0"}
                   if codec == "libx264" else {"threads": "1"})
        stream = container.add_stream(codec, rate=VIDEO_FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = VIDEO_SIZE, VIDEO_SIZE, "yuv420p"
        if codec == "mpeg4":
            stream.bit_rate = 400_000
        for t, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts = t  # explicit timestamps (time base 1/fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return codec


def write_msrvtt(root: Path, seed: int, sz: DemoSizes) -> tuple[dict[str, Any], list[str]]:
    """MSRVTT videos + MSRVTT-QA json + MSRVTT_data.json + the 1k-A test csv (JSFusion)."""
    rng = rng_stream(seed, 4)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    splits = ["train"] * sz.msrvtt_train + ["validate"] * sz.msrvtt_val + ["test"] * sz.msrvtt_test
    qa: dict[str, list] = {"train": [], "validate": [], "test": []}
    videos, sentences, texts, codec = [], [], [], ""
    for vid, split in enumerate(splits):
        clip = sample_clip(rng)
        bg = background(rng, VIDEO_SIZE)
        codec = write_video(root / "videos" / f"video{vid}.mp4",
                            [np.asarray(render(clip.frame_objs(t), bg)) for t in range(VIDEO_FRAMES)])
        videos.append({"category": int(rng.integers(20)), "url": f"https://www.youtube.com/watch?v=demo{vid:05d}",
                       "video_id": f"video{vid}", "start time": 0.0, "end time": VIDEO_FRAMES / VIDEO_FPS,
                       "split": split, "id": vid})
        caps, qas = clip_captions(rng, clip), clip_questions(rng, clip)
        for cap in caps:
            sentences.append({"caption": cap, "video_id": f"video{vid}", "sen_id": len(sentences)})
        for q, a in qas:
            qa[split].append({"answer": a, "id": len(qa[split]), "question": q, "video_id": vid, "category_id": 0})
        if split == "train":
            texts += caps + [x for qa_pair in qas for x in qa_pair]
    for split, name in (("train", "train"), ("validate", "val"), ("test", "test")):
        dump_json(qa[split], root / f"{name}_qa.json")
    dump_json({"info": {"contributor": "mammut_pl.data.demo", "data_created": DATE, "version": str(VERSION),
                    "description": "mammut_pl synthetic demo clips in the MSR-VTT format", "year": "2017"},
           "videos": videos, "sentences": sentences}, root / "MSRVTT_data.json")
    with open(root / "MSRVTT_JSFUSION_test.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["key", "vid_key", "video_id", "sentence"])
        test_sents = {}
        for s in sentences:
            test_sents.setdefault(s["video_id"], s["caption"])  # one sentence per test video, like 1k-A
        for i, v in enumerate(v for v in videos if v["split"] == "test"):
            w.writerow([f"ret{i}", f"msr{v['id']}", v["video_id"], test_sents[v["video_id"]]])
    counts = {"videos": len(videos), "train": sz.msrvtt_train, "val": sz.msrvtt_val, "test": sz.msrvtt_test,
              "qa": {k: len(v) for k, v in qa.items()}, "sentences": len(sentences), "codec": codec,
              "frames": VIDEO_FRAMES, "fps": VIDEO_FPS, "size": VIDEO_SIZE}
    return counts, texts
