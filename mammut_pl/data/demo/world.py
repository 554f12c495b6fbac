"""The demo world itself: sizes, shapes, colours, scenes, rendering, captions and questions; the
helpers every dataset writer shares (RNG streams, compact JSON, irregular ids)."""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

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


def article(phrase: str) -> str:
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
        text = article(f"{o.size + ' ' if size else ''}{o.color} {o.shape}")
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
        out.append((f"is there {article(f'{c} {s}')}?", "yes", "yes/no", "is there a"))
    else:
        absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in kinds]
        c, s = absent[int(rng.integers(len(absent)))]
        out.append((f"is there {article(f'{c} {s}')}?", "no", "yes/no", "is there a"))
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


# --- shared by the writers ------------------------------------------------------------------------------------

def rng_stream(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def dump_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, separators=(",", ":")), encoding="utf-8")  # compact, like the published files


def unique_ids(rng: np.random.Generator, n: int, high: int = 600_000) -> list[int]:
    """n distinct, irregular image ids (real ids are not 0..n-1; readers must not assume so)."""
    return sorted(int(i) + 1 for i in rng.choice(high - 1, n, replace=False))


def info_block(name: str) -> dict[str, Any]:
    return {"description": f"mammut_pl synthetic demo world in the {name} format", "url": "",
            "version": str(VERSION), "year": 2017, "contributor": "mammut_pl.data.demo", "date_created": DATE}


LICENSES = [{"url": "https://creativecommons.org/publicdomain/zero/1.0/", "id": 1, "name": "CC0 (synthetic)"}]
