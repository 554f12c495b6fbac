"""Encoder cost per clip: sparse tubes (one ViT pass) vs sparse frames only vs per-frame encoding,
at equal frame count. FLOPs by torch's FlopCounterMode (forward of the video encoder: tube and
patch projections + the ViT; multiply-add = 2 FLOPs), time per clip as the median of rounds timed
round-robin in one process.

    python scripts/video_cost.py                    # the demo model (msrvtt_qa), FLOPs and time
    python scripts/video_cost.py --b16 --rounds 0   # + ViT-B/16, 32 frames of 224 px (FLOPs only)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mammut_pl import config as C
from mammut_pl.model.video import VideoMaMMUT, count_tokens, encoder_flops

VARIANTS = {"sparse tubes (one pass)": {}, "sparse frames only": {"tubes": False},
            "per-frame encoding": {"encoding": "per_frame"}}


def models(cfg: C.Config, device: str) -> dict[str, VideoMaMMUT]:
    out = {}
    for name, switch in VARIANTS.items():
        video = cfg.video.architecture()
        for k, v in switch.items():
            setattr(video, k, v)
        torch.manual_seed(0)
        out[name] = VideoMaMMUT(cfg.model.architecture(), video).to(device).eval()
    return out


def measure(cfg: C.Config, rounds: int, batch: int, device: str = "cpu") -> list[dict]:
    T, size = cfg.video.num_frames, cfg.model.image_size
    ms = models(cfg, device)
    clip = torch.randn(1, T, 3, size, size, device=device)
    rows = []
    for name, m in ms.items():
        patch = m.visual.patch_size
        rows.append({"variant": name, "tokens": count_tokens(m.video_config, T, size, patch),
                     "gflops": encoder_flops(m, clip) / 1e9, "times": []})
    clips = torch.randn(batch, T, 3, size, size, device=device)
    with torch.no_grad():
        for m in ms.values() if rounds else []:  # warm-up
            m.image_tokens(clips)
        for _ in range(rounds):
            for row, m in zip(rows, ms.values()):
                t0 = time.perf_counter()
                m.image_tokens(clips)
                row["times"].append((time.perf_counter() - t0) / batch)
    for row in rows:
        row["ms_per_clip"] = 1000 * statistics.median(row["times"]) if row["times"] else float("nan")
        row["ms_range"] = (1000 * min(row["times"]), 1000 * max(row["times"])) if row["times"] else None
    return rows


def table(title: str, rows: list[dict]) -> str:
    base = rows[-1]
    lines = [f"**{title}**", "", "| encoder | tokens per clip | GFLOPs per clip | vs per-frame | ms per clip (median [min-max]) |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        t = f"{r['ms_per_clip']:.1f} [{r['ms_range'][0]:.1f}-{r['ms_range'][1]:.1f}]" if r["ms_range"] else "-"
        lines.append(f"| {r['variant']} | {r['tokens']} | {r['gflops']:.3f} | {r['gflops'] / base['gflops']:.2f}x | {t} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="msrvtt_qa")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--b16", action="store_true", help="also ViT-B/16, 32 frames of 224 px, TubeViT tubes")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = C.load(a.experiment)
    T, s = cfg.video.num_frames, cfg.model.image_size
    print(table(f"{a.experiment}: {cfg.model.encoder} {cfg.model.encoder_kwargs}, {T} frames of {s} px, "
                f"batch {a.batch}, {torch.get_num_threads()} threads", measure(cfg, a.rounds, a.batch)))
    if a.b16:
        big = C.load(a.experiment, ["model.encoder=vit_base_patch16_224", "model.image_size=224",
                                    "model.encoder_kwargs={}", "video.num_frames=32", "video.frame_stride=16",
                                    "video.tube_specs=[8x8x8 16x32x32 0x0x0,16x4x4 6x32x32 4x8x8,4x12x12 16x32x32 0x16x16]"])
        big.model.encoder_kwargs = {}  # the experiment's patch_size 8 / depth 4 would merge in
        print()
        # FLOPs only, on the meta device (shapes, no arithmetic): seconds instead of minutes on a CPU
        print(table("ViT-B/16, 32 frames of 224 px (TubeViT tubes, 2D frames every 16th)", measure(big, 0, 1, "meta")))


if __name__ == "__main__":
    main()
