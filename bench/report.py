"""The benchmark's report: the machine it ran on, and the markdown table (bench/results/latest.md,
the README's table) of a run's results."""

from __future__ import annotations

import math
import os
import platform
import socket
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from bench.measure import TARGETS


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(), "platform": platform.platform(),
        "load_avg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "versions": {"torch": torch.__version__, "timm": _version("timm"), "open_clip": _version("open_clip_torch"),
                     "mammut_pytorch": _version("mammut-pytorch"), "transformers": _version("transformers"),
                     "webdataset": _version("webdataset"), "mammut_pl": _version("mammut_pl")},
    }


def _fmt_s(t: dict[str, Any]) -> str:
    return f"{t['median']:.2f} [{t['min']:.2f}-{t['max']:.2f}]"


def _fmt_mb(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 1024:.2f} GB" if x >= 1024 else f"{x:.0f} MB"


def fmt_ratio(x: float | None, target: float | None = None, at_least: bool = False) -> str:
    if x is None:
        return "n/a"
    if target is None:
        return f"{x:.2f}"
    ok = x >= target if at_least else x <= target
    return f"{x:.2f} ({'>=' if at_least else '<='} {target:.2f}: {'met' if ok else 'NOT met'})"


def markdown(res: dict[str, Any]) -> str:
    """The run's table: the training-step table, then one row per measure with its target."""
    lines = [_header(res), ""]
    tr = res.get("train")
    if tr and "rows" in tr:
        lines += _train_table(tr)
    lines += ["CPU s/step: this process's CPU time (all threads), less sensitive than wall time to "
              "other load on a shared machine; the targets are judged on wall time.", "",
              "| measure | value (target) | by CPU time |", "|---|---|---|"]
    if tr and "ratios" in tr:
        lines += _train_ratio_rows(tr["ratios"])
    ov = res.get("overhead")
    if ov and "ratios" in ov:
        f, c = ov["rows"]["full"], ov["rows"]["contrastive_only"]
        lines.append(f"| ViT-B/16 full / contrastive-only step ({_fmt_s(f['step_s'])} s / {_fmt_s(c['step_s'])} s) | "
                     f"{fmt_ratio(ov['ratios']['full/contrastive'], TARGETS['overhead.full/contrastive'])} | "
                     f"{fmt_ratio(ov['ratios'].get('cpu full/contrastive'))} |")
    ge = res.get("generate")
    if ge and "rows" in ge:
        lines += _generate_rows(ge)
    lines += _eval_rows(res.get("retrieval"), res.get("eval"))
    co = res.get("compile")
    if co and "rows" in co:
        from bench.compile import markdown_rows as compile_rows

        lines += compile_rows(co)
    da = res.get("data")
    if da and "shards" in da:
        from bench.data import markdown_rows

        lines += markdown_rows(da)
    if res.get("gpu"):
        lines += _gpu_rows(res["gpu"])
    for name, sec in res.items():
        if isinstance(sec, dict) and "error" in sec:
            lines.append(f"| {name} | failed: {sec['error']} | |")
    return "\n".join(lines) + "\n"


def _header(res: dict[str, Any]) -> str:
    m = res["machine"]
    v = m["versions"]
    return (f"Benchmark `python -m bench{'' if res['mode'] == 'full' else ' --' + res['mode']}` "
            f"({res['date']}): {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads"
            f"{', ' + m['gpu'] if m['gpu'] else ''}; torch {v['torch']}, timm {v['timm']}, open_clip {v['open_clip']}, "
            f"mammut-pytorch {v['mammut_pytorch']}. Median [min-max] of the measured steps; "
            "contenders timed round-robin in one process.")


def _train_table(tr: dict[str, Any]) -> list[str]:
    lines = [f"**Training step**, CPU {tr['precision']}, batch {tr['batch_size']}, tokens "
             f"{tr['tokens_shape'][0]}x{tr['tokens_shape'][1]} (padded to the longest caption), same AdamW "
             f"for all, {tr['rounds']} rounds after {tr['warmup_rounds']} warm-up:", "",
             "| model | params | s/step | images/s | CPU s/step | GFLOP/step | GFLOP/s | memory: state + step peak |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in tr["rows"].values():
        work = (f"{1e3 * r['tflop_per_step']:.0f} | {1e3 * r['tflops']:.0f}" if "tflops" in r else "n/a | n/a")
        lines.append(f"| {r['label']} | {r['params_m']:.1f} M | {_fmt_s(r['step_s'])} | {r['images_per_s']:.2f} | "
                     f"{_fmt_s(r['cpu_s'])} | {work} | "
                     f"{_fmt_mb(r['state_mb'])} + {_fmt_mb(r['step_peak_mb'])} |")
    for name, why in tr.get("skipped", {}).items():
        lines.append(f"| {name} | skipped: {why} | | | | | | |")
    return [*lines, ""]


def _train_ratio_rows(r: dict[str, Any]) -> list[str]:
    lines = [f"| step time mammut_pl / CoCa (CPU; FLOPs per step: {fmt_ratio(r.get('flops mammut_pl/coca'))}) | "
             f"{fmt_ratio(r['mammut_pl/coca'], TARGETS['train.mammut_pl/coca'])} | "
             f"{fmt_ratio(r.get('cpu mammut_pl/coca'))} |",
             f"| step time mammut_pl / lucidrains MaMMUT (CPU; FLOPs per step: "
             f"{fmt_ratio(r.get('flops mammut_pl/lucidrains'))}) | "
             f"{fmt_ratio(r['mammut_pl/lucidrains'], TARGETS['train.mammut_pl/lucidrains'])} | "
             f"{fmt_ratio(r.get('cpu mammut_pl/lucidrains'))} |",
             f"| step time mammut_pl / CLIP (CPU) | {fmt_ratio(r['mammut_pl/clip'])} | |",
             f"| floor: image tower alone / CoCa (the ViT-B/32 all contenders share; its share of "
             f"mammut_pl's step: {fmt_ratio(r.get('image_tower/mammut_pl'))}) | "
             f"{fmt_ratio(r.get('image_tower/coca'))} | {fmt_ratio(r.get('cpu image_tower/coca'))} |",
             f"| step time mammut_pl packed / padded forward | {fmt_ratio(r['mammut_pl/mammut_pl_padded'])} | |"]
    if r.get("text_side_efficiency") is not None:  # issue 18's headline: the text side as efficient as the ViT
        lines.insert(0, f"| text-side efficiency: (GFLOP/s of the step minus the floor) / (floor GFLOP/s) | "
                        f"{fmt_ratio(r['text_side_efficiency'], TARGETS['train.text_side_efficiency'], at_least=True)} | "
                        f"{fmt_ratio(r.get('cpu text_side_efficiency'))} |")
    if "memory mammut_pl/coca" in r:
        lines.append(f"| memory (state + step peak) mammut_pl / CoCa | {fmt_ratio(r['memory mammut_pl/coca'], 1.0)} | |")
    return lines


def _generate_rows(ge: dict[str, Any]) -> list[str]:
    lines = []
    for at in ge.get("by_batch", [ge]):
        g = {k: r["tokens_per_s"] for k, r in at["rows"].items()}
        target = at["batch_size"] == ge["batch_size"]  # judged at the evaluation batch
        lines.append(f"| greedy captioning, {at['new_tokens']} new tokens x {at['batch_size']} images, tokens/s: "
                     f"KV cache {g['cache']:.0f}, no cache {g['no_cache']:.0f} (cross-attn K/V cached only: "
                     f"{g['no_self_attn_cache']:.0f}); identical tokens: {at['identical_tokens']} | speedup "
                     f"{fmt_ratio(at['speedup'], TARGETS['generate.speedup'] if target else None, at_least=True)}"
                     f" | {fmt_ratio(at.get('cpu speedup'))} |")
    return lines


def _eval_rows(rt: dict[str, Any] | None, ev: dict[str, Any] | None) -> list[str]:
    lines = []
    if rt and "time_s" in rt:
        met = rt["peak_extra_mb"] is not None and rt["peak_extra_mb"] < TARGETS["retrieval.peak_extra_mb"]
        lines.append(f"| retrieval eval {rt['n_images']} x {rt['n_texts']} from cached embeddings: "
                     f"{_fmt_s(rt['time_s'])} s, peak extra memory | {_fmt_mb(rt['peak_extra_mb'])} (< 2 GB: "
                     f"{'met' if met else 'NOT met'}) | |")
    if ev and "rows" in ev:
        lines.append(f"| evaluation at batch {ev['batch_size']}: zero-shot retrieval (5 captions an image) images/s; "
                     f"captions/s greedy / beam {ev['beams']} (KV cache, {ev['new_tokens']} tokens) | "
                     f"{ev['retrieval_images_per_s']:.1f}; {ev['greedy_captions_per_s']:.1f} / "
                     f"{ev['beam_captions_per_s']:.1f} | |")
    return lines


def _gpu_rows(gpu: dict[str, Any]) -> list[str]:
    lines = []
    for key, run in gpu.get("runs", {}).items():
        if "ratios" in run:
            lines.append(f"| GPU {gpu['device']} bf16 batch {gpu['batch_size']} {key}: mammut_pl / CoCa | "
                         f"{fmt_ratio(run['ratios']['mammut_pl/coca'], 0.60)} | |")
    for row in (gpu.get("b16_mfu") or {}).values():
        if isinstance(row, dict) and row.get("mfu") is not None:
            lines.append(f"| GPU {row['label']}: {row['tflops']:.0f} TFLOP/s, MFU | {fmt_ratio(row['mfu'], 0.40, True)} | |")
    return lines


def jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
