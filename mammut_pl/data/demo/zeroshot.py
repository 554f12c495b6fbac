"""The ImageFolder zero-shot classification writer (one shape per image, class = colour + shape)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mammut_pl.data.demo.world import (background, COLORS, DemoSizes, IMAGE_SIZE, jpeg_bytes, make_obj,
                                       POSITIONS, render, rng_stream, SHAPES)

# The demo's zero-shot prompts: the phrasings of its captions, so that its small vocabulary covers them
ZEROSHOT_TEMPLATES = ("a {}", "there is a {}", "a {} on a dark background", "a picture of a {}", "an image with a {}")


def write_zeroshot(root: Path, seed: int, sz: DemoSizes) -> tuple[dict[str, Any], list[str]]:
    """An ImageFolder split for zero-shot classification: one shape per image (any position and size),
    class = colour + shape (folder `red_circle`, name "red circle"), and templates.txt."""
    rng = rng_stream(seed, 6)
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
