"""Where the text side's time goes: torch.profiler over the training step of the bench's
mammut_pl MaMMUT (ViT-B/32, 12 decoder layers) and of its floor (the same image tower alone), same
inputs and optimiser; per operator, the self CPU time per step of each and their difference (the
text side: two decoder passes, the output head, the losses and their backward, their AdamW).

    python -m bench.profile [--steps 4] [--threads 2] [--scale real|tiny] [--out bench/results/profile.md]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench.contenders import build_image_tower, build_mammut_pl
from bench.measure import caption_tokens, make_adamw, random_images
from bench.steps import train_step


def op_times(step, warmup: int, steps: int) -> tuple[dict[str, float], float]:
    """(self CPU ms per step by operator, wall s per step) over `steps` profiled steps."""
    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - start) / steps
    per_op: dict[str, float] = collections.defaultdict(float)
    for event in prof.key_averages():
        per_op[event.key] += event.self_cpu_time_total / 1e3 / steps
    return dict(per_op), wall


def table(full: dict[str, float], floor: dict[str, float], walls: tuple[float, float], top: int) -> list[str]:
    text = {op: full.get(op, 0.0) - floor.get(op, 0.0) for op in set(full) | set(floor)}
    total = sum(v for v in text.values() if v > 0)
    lines = [f"Step wall time: full {walls[0]:.2f} s, floor {walls[1]:.2f} s, text side {walls[0] - walls[1]:.2f} s "
             "(profiled: slower than `make bench`'s timing).", "",
             "| operator | full ms/step | floor ms/step | text side ms/step | share of text side |",
             "|---|---:|---:|---:|---:|"]
    for op, ms in sorted(text.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| `{op}` | {full.get(op, 0.0):.1f} | {floor.get(op, 0.0):.1f} | {ms:.1f} | "
                     f"{100 * ms / total:.1f}% |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scale", choices=("real", "tiny"), default="real")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", default="bench/results/profile.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tokens = caption_tokens(args.batch)
    images = random_images(args.batch, 224 if args.scale == "real" else 32)
    device = torch.device("cpu")
    measured = []
    for contender in (build_mammut_pl(args.scale, with_padded=False)[0], build_image_tower(args.scale)[0]):
        contender.model.train()
        contender.opt = make_adamw(contender.model, device)
        measured.append(op_times(train_step(contender, images, tokens, contextlib.nullcontext), args.warmup, args.steps))
    (full, wall_full), (floor, wall_floor) = measured
    lines = [f"# Text-side profile ({args.scale}, batch {args.batch}, {args.threads} threads, {args.steps} steps, "
             f"torch {torch.__version__})", "", *table(full, floor, (wall_full, wall_floor), args.top)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
