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
import csv
import fcntl
import hashlib
import io
import json
import math
import os
import re
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from mammut_pl.data.tokenizer import train_tokenizer

__all__ = ["write_demo", "DemoSizes", "DEMO_SIZES", "TINY_SIZES", "VERSION", "COLORS", "SHAPES", "POSITIONS",
           "VIDEO_FRAMES", "VIDEO_FPS", "VIDEO_SIZE", "IMAGE_SIZE"]

VERSION = 2  # bump when the output changes, so cached worlds are regenerated
IMAGE_SIZE = 64
VIDEO_SIZE = 64
VIDEO_FRAMES = 16
VIDEO_FPS = 8
JPEG_QUALITY = 90
TAR_MTIME = 1_700_000_000  # fixed member mtime: byte-identical shards
DATE = "2017-09-01 00:00:00"


@dataclass(frozen=True)
class DemoSizes:
    coco_train: int
    coco_restval: int  # Karpathy "restval", "val" and "test" images all live in val2017
    coco_val: int
    coco_test: int
    web_shards: int
    web_per_shard: int
    vqa_train: int
    vqa_val: int
    vqa_test: int  # test2015 images; the first half also form test-dev2015
    vqa_questions: int  # per image
    msrvtt_train: int
    msrvtt_val: int
    msrvtt_test: int
    lvis_train: int
    lvis_val: int
    lvis_targets: dict[str, tuple[int, int]]  # train images per category, by frequency: {"r": (lo, hi), "c": ..., "f": ...}
    lvis_val_target: tuple[int, int]  # val images per category (every category, rare included)
    lvis_thresholds: bool = True  # frequency from LVIS' train-image thresholds (r <= 10 < c <= 100 < f)
    zeroshot_per_class: int = 10  # ImageFolder images per colour-shape class


DEMO_SIZES = DemoSizes(
    coco_train=1200, coco_restval=30, coco_val=100, coco_test=100,
    web_shards=8, web_per_shard=120,
    vqa_train=600, vqa_val=100, vqa_test=100, vqa_questions=3,
    msrvtt_train=300, msrvtt_val=60, msrvtt_test=60,
    lvis_train=600, lvis_val=100,
    lvis_targets={"r": (2, 8), "c": (14, 40), "f": (105, 150)}, lvis_val_target=(3, 6),
)
TINY_SIZES = DemoSizes(
    coco_train=24, coco_restval=4, coco_val=6, coco_test=6,
    web_shards=2, web_per_shard=10,
    vqa_train=16, vqa_val=8, vqa_test=8, vqa_questions=3,
    msrvtt_train=8, msrvtt_val=2, msrvtt_test=2,
    lvis_train=40, lvis_val=16,
    # Too few images for LVIS' thresholds (c: 11-100, f: >100): tiny keeps the tiers, scaled down.
    lvis_targets={"r": (1, 2), "c": (2, 3), "f": (5, 7)}, lvis_val_target=(1, 1), lvis_thresholds=False,
    zeroshot_per_class=1,
)

# =============================================================================================================
# The world: scenes, rendering, phrasing
# =============================================================================================================

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 235), "yellow": (235, 220, 50),
    "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "cross": "crosses"}
# Region centres as fractions of the image side; 0.32 apart so two large shapes never touch.
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.18, 0.5), "right": (0.82, 0.5), "top": (0.5, 0.18), "bottom": (0.5, 0.82), "center": (0.5, 0.5),
}
WHERE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
         "center": "in the center"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
SIZE_RANGES = {"small": (0.075, 0.095), "large": (0.11, 0.13)}  # shape radius / image side
JITTER = 0.02  # position jitter / image side


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    position: str  # a POSITIONS key ("" for moving video objects)
    size: str  # "small" | "large"
    cx: float  # centre and radius in pixels
    cy: float
    r: float
    rgb: tuple[int, int, int]  # the colour as drawn (jittered around COLORS[color])


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Outline of a shape as a polygon; every shape is drawn from its polygon, so boxes are exact."""
    def ring(n: int, radius: float, phase: float) -> list[tuple[float, float]]:
        return [(cx + radius * math.cos(phase + 2 * math.pi * k / n), cy + radius * math.sin(phase + 2 * math.pi * k / n))
                for k in range(n)]

    if shape == "circle":
        return ring(32, r, 0.0)
    if shape == "square":
        h = 0.82 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return ring(3, r, -math.pi / 2)  # pointing up
    if shape == "star":
        outer, inner = ring(5, r, -math.pi / 2), ring(5, 0.45 * r, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if shape == "cross":
        a, w = r, 0.34 * r
        pts = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]
        return [(cx + x, cy + y) for x, y in pts]
    raise ValueError(f"unknown shape {shape!r}")


def polygon_area(poly: Sequence[tuple[float, float]]) -> float:
    return 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(poly, [*poly[1:], poly[0]])))


def make_obj(rng: np.random.Generator, shape: str, color: str, position: str, size: int,
             size_word: str | None = None, centre: tuple[float, float] | None = None) -> Obj:
    size_word = size_word or str(rng.choice(["small", "large"]))
    lo, hi = SIZE_RANGES[size_word]
    if centre is None:
        fx, fy = POSITIONS[position]
        jx, jy = rng.uniform(-JITTER, JITTER, 2)
        centre = ((fx + jx) * size, (fy + jy) * size)
    rgb = tuple(int(np.clip(c + d, 0, 255)) for c, d in zip(COLORS[color], rng.integers(-12, 13, 3)))
    return Obj(shape, color, position, size_word, round(float(centre[0]), 2), round(float(centre[1]), 2),
               round(float(rng.uniform(lo, hi) * size), 2), rgb)


def sample_scene(rng: np.random.Generator, size: int = IMAGE_SIZE) -> list[Obj]:
    """1-3 shapes at distinct positions; a repeated shape keeps its colour ("two blue squares"),
    otherwise colours are distinct, so "the red shape" is always one kind of shape."""
    n = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    positions = [str(p) for p in rng.choice(list(POSITIONS), n, replace=False)]
    kinds: list[tuple[str, str]] = []
    for _ in range(n):
        if kinds and rng.random() < 0.3:
            kinds.append(kinds[int(rng.integers(len(kinds)))])
        else:
            free = [c for c in COLORS if c not in {k[0] for k in kinds}]
            kinds.append((str(rng.choice(free)), str(rng.choice(SHAPES))))
    return [make_obj(rng, shape, color, pos, size) for (color, shape), pos in zip(kinds, positions)]


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Dark base colour + smooth low-frequency blotches + faint pixel noise, (size, size, 3) uint8."""
    base = rng.integers(8, 45, 3).astype(np.float32)
    coarse = rng.normal(0.0, 9.0, (4, 4, 3)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(np.uint8(np.clip(coarse + 128, 0, 255))).resize((size, size), Image.BILINEAR),
                        dtype=np.float32) - 128
    fine = rng.normal(0.0, 1.5, (size, size, 3)).astype(np.float32)
    return np.uint8(np.clip(base + smooth + fine, 0, 255))


SUPERSAMPLE = 4


def render(objs: Iterable[Obj], bg: np.ndarray) -> Image.Image:
    """Draw the shapes at 4x (colour on black, and a coverage mask), box-reduce both to 1x: anti-aliased
    edges and exact geometry; the reduced colour is premultiplied by coverage, so blending is one line."""
    size = bg.shape[0]
    colour, mask = Image.new("RGB", (size * SUPERSAMPLE,) * 2), Image.new("L", (size * SUPERSAMPLE,) * 2)
    draw_colour, draw_mask = ImageDraw.Draw(colour), ImageDraw.Draw(mask)
    for o in objs:
        poly = [(x * SUPERSAMPLE, y * SUPERSAMPLE) for x, y in shape_polygon(o.shape, o.cx, o.cy, o.r)]
        draw_colour.polygon(poly, fill=o.rgb)
        draw_mask.polygon(poly, fill=255)
    premult = np.asarray(colour.reduce(SUPERSAMPLE), dtype=np.float32)
    alpha = np.asarray(mask.reduce(SUPERSAMPLE), dtype=np.float32)[..., None] / 255.0
    return Image.fromarray(np.uint8(np.clip(bg * (1.0 - alpha) + premult + 0.5, 0, 255)))


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)  # optimized Huffman tables: -25% bytes
    return buf.getvalue()


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def groups(objs: Sequence[Obj]) -> list[list[Obj]]:
    """Objects grouped by (colour, shape), in order of first appearance."""
    out: dict[tuple[str, str], list[Obj]] = {}
    for o in objs:
        out.setdefault((o.color, o.shape), []).append(o)
    return list(out.values())


def group_phrase(g: Sequence[Obj], where: bool, size: bool) -> str:
    o = g[0]
    if len(g) == 1:
        text = _article(f"{o.size + ' ' if size else ''}{o.color} {o.shape}")
        return f"{text} {WHERE[o.position]}" if where and o.position else text
    text = f"{NUMBER_WORDS[len(g)]} {o.color} {PLURAL[o.shape]}"
    return f"{text} {_join([WHERE[x.position] for x in g])}" if where else text


CAPTION_TEMPLATES = ("{pos}", "there is {pos_size}", "{plain} on a dark background", "a picture of {plain_size}",
                     "an image with {pos}")


def captions(rng: np.random.Generator, objs: Sequence[Obj], n: int = 5) -> list[str]:
    """n paraphrases (distinct templates); the order of the described groups varies per caption."""
    out = []
    for template in [CAPTION_TEMPLATES[i] for i in rng.permutation(len(CAPTION_TEMPLATES))[:n]]:
        gs = groups(objs)
        gs = [gs[i] for i in rng.permutation(len(gs))]
        out.append(template.format(
            pos=_join([group_phrase(g, True, False) for g in gs]),
            pos_size=_join([group_phrase(g, True, True) for g in gs]),
            plain=_join([group_phrase(g, False, False) for g in gs]),
            plain_size=_join([group_phrase(g, False, True) for g in gs]),
        ))
    return out


ALT_JUNK = ("stock image", "hd wallpaper", "free vector", "clipart", "illustration", "photo")


def alt_text(rng: np.random.Generator, objs: Sequence[Obj]) -> str:
    """Web alt-text: usually a caption, sometimes partial, padded with boilerplate, or capitalised."""
    u = rng.random()
    if u < 0.5:
        text = captions(rng, objs, 1)[0]
    elif u < 0.75:  # partial: one group only
        gs = groups(objs)
        text = group_phrase(gs[int(rng.integers(len(gs)))], bool(rng.random() < 0.5), False)
    elif u < 0.9:
        text = f"{captions(rng, objs, 1)[0]} {rng.choice(ALT_JUNK)}"
    else:
        text = f"{rng.choice(ALT_JUNK)}: {captions(rng, objs, 1)[0]}"
    return text.capitalize() if rng.random() < 0.3 else text


def tokens_of(sentence: str) -> list[str]:
    """Karpathy-split tokens: lower-cased words, punctuation dropped."""
    return re.findall(r"[a-z0-9]+", sentence.lower())


# --- questions (VQA) -----------------------------------------------------------------------------------------

def _questions_for(rng: np.random.Generator, objs: Sequence[Obj]) -> list[tuple[str, str, str, str]]:
    """Candidate (question, answer, answer_type, question_type) tuples answerable from the image."""
    kinds = {(o.color, o.shape) for o in objs}
    singles = [g[0] for g in groups(objs) if len(g) == 1]
    shapes_present = sorted({o.shape for o in objs})
    colours_present = sorted({o.color for o in objs})
    out: list[tuple[str, str, str, str]] = []
    # yes/no, balanced: a present or an absent (colour, shape)
    if rng.random() < 0.5:
        c, s = sorted(kinds)[int(rng.integers(len(kinds)))]
        out.append((f"is there {_article(f'{c} {s}')}?", "yes", "yes/no", "is there a"))
    else:
        absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in kinds]
        c, s = absent[int(rng.integers(len(absent)))]
        out.append((f"is there {_article(f'{c} {s}')}?", "no", "yes/no", "is there a"))
    if singles:
        o = singles[int(rng.integers(len(singles)))]
        pos = o.position if rng.random() < 0.5 else str(rng.choice([p for p in POSITIONS if p != o.position]))
        out.append((f"is the {o.color} {o.shape} {WHERE[pos]}?", "yes" if pos == o.position else "no", "yes/no", "is the"))
    # number
    shape = str(rng.choice(shapes_present)) if rng.random() < 0.75 else str(rng.choice(SHAPES))
    out.append((f"how many {PLURAL[shape]} are there?", str(sum(o.shape == shape for o in objs)), "number", "how many"))
    out.append(("how many shapes are there?", str(len(objs)), "number", "how many"))
    colour = str(rng.choice(colours_present))
    out.append((f"how many {colour} shapes are there?", str(sum(o.color == colour for o in objs)), "number", "how many"))
    # other: colour, shape, position
    for s in shapes_present:
        if len({o.color for o in objs if o.shape == s}) == 1:
            c = next(o.color for o in objs if o.shape == s)
            out.append((f"what color is the {s}?", c, "other", "what color is the"))
    o = objs[int(rng.integers(len(objs)))]
    out.append((f"what shape is {WHERE[o.position]}?", o.shape, "other", "what shape is"))
    out.append((f"what color is the shape {WHERE[o.position]}?", o.color, "other", "what color is the"))
    if singles:
        o = singles[int(rng.integers(len(singles)))]
        out.append((f"where is the {o.color} {o.shape}?", o.position, "other", "where is the"))
    return out


def sample_questions(rng: np.random.Generator, objs: Sequence[Obj], k: int) -> list[tuple[str, str, str, str]]:
    """k distinct questions, answer types drawn ~ 1/3 each so no single answer dominates."""
    cands = _questions_for(rng, objs)
    chosen: list[tuple[str, str, str, str]] = []
    for _ in range(k):
        left = [q for q in cands if q not in chosen]
        kinds = sorted({q[2] for q in left})
        kind = kinds[int(rng.integers(len(kinds)))]
        pool = [q for q in left if q[2] == kind]
        chosen.append(pool[int(rng.integers(len(pool)))])
    return chosen


def _variant(rng: np.random.Generator, answer: str, answer_type: str) -> str:
    """A way a person might type the same answer; VQA's answer normalisation maps it back."""
    options = [answer.capitalize(), answer + "."]
    if answer_type == "number" and answer.isdigit() and int(answer) < len(NUMBER_WORDS):
        options.append(NUMBER_WORDS[int(answer)])
    if answer in SHAPES:
        options.append("a " + answer)
    if answer in POSITIONS:
        options.append("the " + answer)
    return str(rng.choice(options))


def _wrong(rng: np.random.Generator, answer: str, answer_type: str) -> str:
    if answer_type == "yes/no":
        return "no" if answer == "yes" else "yes"
    if answer_type == "number":
        return str(max(0, int(answer) + int(rng.choice([-1, 1]))))
    for pool in (list(COLORS), list(SHAPES), list(POSITIONS)):
        if answer in pool:
            return str(rng.choice([p for p in pool if p != answer]))
    return answer


def human_answers(rng: np.random.Generator, answer: str, answer_type: str) -> list[dict[str, Any]]:
    """10 answers: mostly the canonical one, some variants, at most 2 wrong (so the majority is right)."""
    out, wrong = [], 0
    for i in range(10):
        u = rng.random()
        if u < 0.03 and wrong < 2:
            wrong += 1
            text, conf = _wrong(rng, answer, answer_type), str(rng.choice(["maybe", "no", "yes"]))
        else:
            text = answer if u < 0.8 else _variant(rng, answer, answer_type)
            conf = "yes" if rng.random() < 0.9 else "maybe"
        out.append({"answer": text, "answer_confidence": conf, "answer_id": i + 1})
    return out


# --- clips (MSRVTT) ------------------------------------------------------------------------------------------

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
    moving = f"{_article(f'{m.color} {m.shape}')} moves {clip.direction if clip.direction in ('up', 'down') else 'to the ' + clip.direction}"
    first, last = (_article(f"{o.color} {o.shape}") for o in (clip.first, clip.last))
    templates = [f"{moving} and {_article(f'{s.color} {s.shape}')} stays still",
                 f"first {first} appears and then {last}",
                 f"{last} appears after {first}",
                 f"{_article(f'{m.color} {m.shape}')} moving {clip.direction}",
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


# =============================================================================================================
# Writers: one per published format
# =============================================================================================================

def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def _dump(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, separators=(",", ":")), encoding="utf-8")  # compact, like the published files


def _unique_ids(rng: np.random.Generator, n: int, high: int = 600_000) -> list[int]:
    """n distinct, irregular image ids (real ids are not 0..n-1; readers must not assume so)."""
    return sorted(int(i) + 1 for i in rng.choice(high - 1, n, replace=False))


def _info(name: str) -> dict[str, Any]:
    return {"description": f"mammut_pl synthetic demo world in the {name} format", "url": "",
            "version": str(VERSION), "year": 2017, "contributor": "mammut_pl.data.demo", "date_created": DATE}


LICENSES = [{"url": "https://creativecommons.org/publicdomain/zero/1.0/", "id": 1, "name": "CC0 (synthetic)"}]


def write_coco(root: Path, seed: int, sz: DemoSizes) -> tuple[dict[str, Any], list[str]]:
    """COCO captions 2017 + the Karpathy split file (train in train2017; restval/val/test in val2017)."""
    rng = _rng(seed, 1)
    n_val_folder = sz.coco_restval + sz.coco_val + sz.coco_test
    ids = [int(i) for i in rng.permutation(_unique_ids(rng, sz.coco_train + n_val_folder))]
    folders = {"train2017": sorted(ids[: sz.coco_train]), "val2017": sorted(ids[sz.coco_train:])}
    karpathy_split = {i: "train" for i in folders["train2017"]}
    for i, split in zip(rng.permutation(folders["val2017"]),
                        ["restval"] * sz.coco_restval + ["val"] * sz.coco_val + ["test"] * sz.coco_test):
        karpathy_split[int(i)] = split
    ann_id, sent_id, karpathy, train_texts = 1, 0, [], []
    for folder, img_ids in folders.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for image_id in img_ids:
            objs = sample_scene(rng)
            fname = f"{image_id:012d}.jpg"
            (root / folder / fname).write_bytes(jpeg_bytes(render(objs, background(rng, IMAGE_SIZE))))
            images.append({"license": 1, "file_name": fname, "coco_url": f"http://images.cocodataset.org/{folder}/{fname}",
                           "height": IMAGE_SIZE, "width": IMAGE_SIZE, "date_captured": DATE,
                           "flickr_url": f"http://farm.example.invalid/{fname}", "id": image_id})
            caps = captions(rng, objs)
            sentences = []
            for cap in caps:
                anns.append({"image_id": image_id, "id": ann_id, "caption": cap})
                sentences.append({"tokens": tokens_of(cap), "raw": cap, "imgid": len(karpathy), "sentid": sent_id})
                ann_id, sent_id = ann_id + 1, sent_id + 1
            split = karpathy_split[image_id]
            if split in ("train", "restval"):
                train_texts += caps
            karpathy.append({"filepath": folder, "sentids": [s["sentid"] for s in sentences], "filename": fname,
                             "imgid": len(karpathy), "split": split, "sentences": sentences, "cocoid": image_id})
        _dump({"info": _info("COCO captions"), "licenses": LICENSES, "images": images, "annotations": anns},
              root / "annotations" / f"captions_{folder}.json")
    _dump({"images": karpathy, "dataset": "coco"}, root / "dataset_coco.json")
    splits = [k["split"] for k in karpathy]
    counts = {"train2017": len(folders["train2017"]), "val2017": len(folders["val2017"]), "captions": ann_id - 1,
              "karpathy": {s: splits.count(s) for s in ("train", "restval", "val", "test")}}
    return counts, train_texts


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), TAR_MTIME, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def write_webdata(root: Path, seed: int, sz: DemoSizes) -> tuple[dict[str, Any], list[str]]:
    """img2dataset output: 0000N.tar with KEY.jpg/.txt/.json (keys = shard*10000 + index; failed
    downloads leave gaps), and 0000N_stats.json. The pretraining pairs: noisier alt-text."""
    rng = _rng(seed, 2)
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
        _dump({"count": count, "successes": sz.web_per_shard, "failed_to_download": n_failed, "failed_to_resize": 0,
               "duration": round(0.05 * count, 3), "start_time": TAR_MTIME, "end_time": TAR_MTIME + 0.05 * count,
               "status_dict": {"success": sz.web_per_shard, **dict(sorted(errors.items()))}},
              root / f"{shard:05d}_stats.json")
    return {"shards": sz.web_shards, "pairs": total}, texts


VQA_FILES = {"train2014": ("train2014", "COCO_train2014_"), "val2014": ("val2014", "COCO_val2014_"),
             "test2015": ("test2015", "COCO_test2015_")}


def write_vqav2(root: Path, seed: int, sz: DemoSizes) -> tuple[dict[str, Any], list[str]]:
    """VQA v2 questions/annotations; question_id = image_id * 10 + k; test-dev is the first half of test."""
    rng = _rng(seed, 3)
    ids = [int(i) for i in rng.permutation(_unique_ids(rng, sz.vqa_train + sz.vqa_val + sz.vqa_test))]
    split_ids = {"train2014": sorted(ids[: sz.vqa_train]),
                 "val2014": sorted(ids[sz.vqa_train: sz.vqa_train + sz.vqa_val]),
                 "test2015": sorted(ids[sz.vqa_train + sz.vqa_val:])}
    license_ = {"url": "http://creativecommons.org/licenses/by/4.0/", "name": "Creative Commons Attribution 4.0 International License"}
    texts, counts = ["question", "answer", ":"], {}
    for subtype, img_ids in split_ids.items():
        folder, prefix = VQA_FILES[subtype]
        (root / folder).mkdir(parents=True, exist_ok=True)
        questions, anns = [], []
        for image_id in img_ids:
            objs = sample_scene(rng)
            (root / folder / f"{prefix}{image_id:012d}.jpg").write_bytes(jpeg_bytes(render(objs, background(rng, IMAGE_SIZE))))
            for k, (q, a, atype, qtype) in enumerate(sample_questions(rng, objs, sz.vqa_questions)):
                qid = image_id * 10 + k
                questions.append({"image_id": image_id, "question": q, "question_id": qid})
                answers = human_answers(rng, a, atype)
                anns.append({"question_type": qtype, "multiple_choice_answer": a, "answers": answers,
                             "image_id": image_id, "answer_type": atype, "question_id": qid})
                if subtype == "train2014":
                    texts += [q, a] + [x["answer"] for x in answers]

        def qfile(sub: str, qs: list) -> None:
            _dump({"info": _info("VQA v2"), "task_type": "Open-Ended", "data_type": "mscoco", "license": license_,
                   "data_subtype": sub, "questions": qs}, root / f"v2_OpenEnded_mscoco_{sub}_questions.json")

        qfile(subtype, questions)
        if subtype == "test2015":
            dev_ids = set(img_ids[: max(1, len(img_ids) // 2)])
            dev = [q for q in questions if q["image_id"] in dev_ids]
            qfile("test-dev2015", dev)
            counts["test-dev2015"] = {"images": len(dev_ids), "questions": len(dev)}
        else:
            _dump({"info": _info("VQA v2"), "license": license_, "data_subtype": subtype, "annotations": anns},
                  root / f"v2_mscoco_{subtype}_annotations.json")
        counts[subtype] = {"images": len(img_ids), "questions": len(questions)}
    return counts, texts


def write_msrvtt(root: Path, seed: int, sz: DemoSizes) -> tuple[dict[str, Any], list[str]]:
    """MSRVTT videos + MSRVTT-QA json + MSRVTT_data.json + the 1k-A test csv (JSFusion)."""
    rng = _rng(seed, 4)
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
        _dump(qa[split], root / f"{name}_qa.json")
    _dump({"info": {"contributor": "mammut_pl.data.demo", "data_created": DATE, "version": str(VERSION),
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


def lvis_categories(rng: np.random.Generator) -> dict[str, str]:
    """Colour x shape -> frequency tier. The 7 rare ones (one per colour, at most 2 per shape) combine
    colours and shapes that each appear in several base (c/f) categories: open-vocabulary transfer works."""
    combos = [(c, s) for c in COLORS for s in SHAPES]
    tiers = {f"{c}_{s}": "c" for c, s in combos}
    rare: list[tuple[str, str]] = []
    for i in rng.permutation(len(combos)):
        c, s = combos[i]
        if len(rare) < 7 and all(x[0] != c for x in rare) and sum(x[1] == s for x in rare) < 2:
            rare.append((c, s))
    for c, s in rare:
        tiers[f"{c}_{s}"] = "r"
    base = [n for n in sorted(tiers) if tiers[n] == "c"]
    frequent: list[tuple[str, str]] = []  # 6, of distinct colours and at most 2 of a shape
    for i in rng.permutation(len(base)):
        c, s = base[i].split("_")
        if len(frequent) < 6 and all(x[0] != c for x in frequent) and sum(x[1] == s for x in frequent) < 2:
            frequent.append((c, s))
            tiers[base[i]] = "f"
    return tiers


def _plan_images(rng: np.random.Generator, n_images: int, targets: dict[str, int], fill: Sequence[str]) -> list[list[str]]:
    """Assign categories to images: each category to `targets[c]` distinct images (emptier images preferred),
    at most 3 objects an image; empty images get a base category; a few get a second instance."""
    slots: list[list[str]] = [[] for _ in range(n_images)]
    for cat in sorted(targets, key=lambda c: (-targets[c], c)):
        free = [i for i in range(n_images) if len(slots[i]) < 3 and cat not in slots[i]]
        w = np.array([3 - len(slots[i]) for i in free], dtype=float) ** 2
        for i in rng.choice(free, min(targets[cat], len(free)), replace=False, p=w / w.sum()):
            slots[int(i)].append(cat)
    for s in slots:
        if not s:
            s.append(str(rng.choice(fill)))
        if len(s) < 3 and rng.random() < 0.1:
            s.append(s[int(rng.integers(len(s)))])
        rng.shuffle(s)
    return slots


def write_lvis(root: Path, seed: int, sz: DemoSizes) -> tuple[dict[str, Any], list[str]]:
    """LVIS v1: federated labels (neg_category_ids verified absent), exact polygon boxes, r/c/f tiers."""
    rng = _rng(seed, 5)
    tiers = lvis_categories(rng)
    names = sorted(tiers)
    cat_id = {n: i + 1 for i, n in enumerate(names)}  # LVIS ids follow the alphabetical order of names
    train_targets = {n: int(rng.integers(sz.lvis_targets[tiers[n]][0], sz.lvis_targets[tiers[n]][1] + 1)) for n in names}
    val_targets = {n: int(rng.integers(sz.lvis_val_target[0], sz.lvis_val_target[1] + 1)) for n in names}
    base = [n for n in names if tiers[n] != "r"]
    ids = [int(i) for i in rng.permutation(_unique_ids(rng, sz.lvis_train + sz.lvis_val))]
    split_ids = {"train": sorted(ids[: sz.lvis_train]), "val": sorted(ids[sz.lvis_train:])}
    ann_id, out, texts = 1, {}, [n for n in names] + [n.replace("_", " ") for n in names]
    for split, targets in (("train", train_targets), ("val", val_targets)):
        folder = f"{split}2017"
        (root / folder).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for image_id, cats in zip(split_ids[split], _plan_images(rng, len(split_ids[split]), targets, base)):
            positions = [str(p) for p in rng.choice(list(POSITIONS), len(cats), replace=False)]
            objs = [make_obj(rng, n.split("_")[1], n.split("_")[0], p, IMAGE_SIZE) for n, p in zip(cats, positions)]
            fname = f"{image_id:012d}.jpg"
            (root / folder / fname).write_bytes(jpeg_bytes(render(objs, background(rng, IMAGE_SIZE))))
            present = sorted({cat_id[n] for n in cats})
            absent = [cat_id[n] for n in names if cat_id[n] not in present]
            neg = sorted(int(i) for i in rng.choice(absent, min(len(absent), int(rng.integers(3, 7))), replace=False))
            images.append({"date_captured": DATE, "neg_category_ids": neg, "id": image_id, "license": 1,
                           "height": IMAGE_SIZE, "width": IMAGE_SIZE, "flickr_url": f"http://farm.example.invalid/{fname}",
                           "coco_url": f"http://images.cocodataset.org/{folder}/{fname}",
                           "not_exhaustive_category_ids": []})  # every instance is annotated
            for n, o in zip(cats, objs):
                # rounded once, so box, area and polygon agree exactly
                poly = [(round(min(max(x, 0.0), IMAGE_SIZE), 2), round(min(max(y, 0.0), IMAGE_SIZE), 2))
                        for x, y in shape_polygon(o.shape, o.cx, o.cy, o.r)]
                xs, ys = [p[0] for p in poly], [p[1] for p in poly]
                bbox = [min(xs), min(ys), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]
                anns.append({"area": round(polygon_area(poly), 2), "id": ann_id,
                             "segmentation": [[v for p in poly for v in p]],
                             "image_id": image_id, "bbox": bbox, "category_id": cat_id[n]})
                ann_id += 1
        out[split] = (images, anns)
    train_anns = out["train"][1]
    image_count = {c: len({a["image_id"] for a in train_anns if a["category_id"] == c}) for c in cat_id.values()}
    instance_count = {c: sum(a["category_id"] == c for a in train_anns) for c in cat_id.values()}

    def frequency(n: str) -> str:
        if not sz.lvis_thresholds:
            return tiers[n]  # tiny: the planned tier (too few images for LVIS' thresholds)
        k = image_count[cat_id[n]]  # LVIS' definition, on train image counts
        return "r" if k <= 10 else ("c" if k <= 100 else "f")

    categories = [{"id": cat_id[n], "name": n, "synonyms": [n.replace("_", " ")],
                   "def": f"a {n.replace('_', ' ')} drawn on a dark background", "synset": f"{n}.n.01",
                   "frequency": frequency(n), "image_count": image_count[cat_id[n]],
                   "instance_count": instance_count[cat_id[n]]} for n in names]
    for split, (images, anns) in out.items():
        _dump({"info": _info("LVIS v1"), "licenses": LICENSES, "images": images, "annotations": anns,
               "categories": categories}, root / f"lvis_v1_{split}.json")
    counts = {"train_images": len(out["train"][0]), "val_images": len(out["val"][0]),
              "train_annotations": len(out["train"][1]), "val_annotations": len(out["val"][1]),
              "categories": {f: sum(c["frequency"] == f for c in categories) for f in "rcf"}}
    return counts, texts


# The demo's zero-shot prompts: the phrasings of its captions, so that its small vocabulary covers them
ZEROSHOT_TEMPLATES = ("a {}", "there is a {}", "a {} on a dark background", "a picture of a {}", "an image with a {}")


def write_zeroshot(root: Path, seed: int, sz: DemoSizes) -> tuple[dict[str, Any], list[str]]:
    """An ImageFolder split for zero-shot classification: one shape per image (any position and size),
    class = colour + shape (folder `red_circle`, name "red circle"), and templates.txt."""
    rng = _rng(seed, 6)
    classes = [f"{c}_{s}" for c in COLORS for s in SHAPES]
    for name in classes:
        color, shape = name.split("_")
        (root / "val" / name).mkdir(parents=True, exist_ok=True)
        for k in range(sz.zeroshot_per_class):
            obj = make_obj(rng, shape, color, str(rng.choice(list(POSITIONS))), IMAGE_SIZE)
            (root / "val" / name / f"{name}_{k:03d}.jpg").write_bytes(jpeg_bytes(render([obj], background(rng, IMAGE_SIZE))))
    (root / "templates.txt").write_text("".join(t + "\n" for t in ZEROSHOT_TEMPLATES), encoding="utf-8")
    return {"classes": len(classes), "images": len(classes) * sz.zeroshot_per_class,
            "templates": len(ZEROSHOT_TEMPLATES)}, []  # no new words: the tokenizer stays as it was


# =============================================================================================================
# Entry point: build in a temporary folder, manifest last, then rename
# =============================================================================================================

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
        _dump({"version": VERSION, "seed": seed, "tiny": tiny, "counts": counts, "created_by": "mammut_pl.data.demo"},
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


if __name__ == "__main__":
    main()
