"""The benchmark's plan (sizes of the three modes), the same inputs for every contender, and
how it measures: round-robin timing, peak memory, optimizer state, ratios of medians."""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


# Realistic COCO-style captions (8-20 words); the batch takes them in order, cycling.
CAPTIONS = [
    "A man riding a wave on top of a surfboard.",
    "Two dogs playing with a frisbee in a grassy park.",
    "A kitchen with wooden cabinets and a white refrigerator.",
    "A plate of food with broccoli, rice and grilled chicken on a wooden table.",
    "A red double decker bus driving down a busy city street.",
    "A cat sleeping on the keyboard of an open laptop.",
    "A group of people standing around a large elephant at the zoo while a child points at it.",
    "A bathroom with a toilet, a sink and a mirror.",
    "A young boy swinging a baseball bat at a ball.",
    "A woman holding an umbrella walks down a rainy sidewalk.",
    "A giraffe standing next to a tree in a fenced enclosure.",
    "A pizza with pepperoni and mushrooms sitting on a pan.",
    "An airplane flying over a city with tall buildings in the background.",
    "A person on skis going down a snowy slope.",
    "Several boats docked in a harbor on a sunny day.",
    "A laptop, a cup of coffee and a notebook on a desk.",
    "A train traveling down the tracks next to a forest.",
    "A little girl eating a slice of birthday cake at a table with balloons.",
    "A stop sign on the corner of a quiet street.",
    "Two zebras grazing in a dry field.",
    "A man in a suit and tie talking on a cell phone.",
    "A bowl of fresh fruit including bananas, apples and oranges.",
    "A skateboarder doing a trick on a ramp at a skate park.",
    "A living room with a couch, a television and a coffee table.",
    "A horse pulling a cart down a dirt road.",
    "People sitting on benches in a park near a fountain.",
    "A brown bear walking through tall grass.",
    "A tennis player reaching up to hit the ball during a match.",
    "A bicycle parked against a brick wall.",
    "A sandwich cut in half next to a pile of french fries.",
    "A clock tower rising above the buildings of an old town.",
    "A flock of birds flying over the ocean at sunset.",
]

TARGETS = {  # speed ratios to reach, measured in the same run (issue 18: relative to the ViT floor)
    "train.mammut_pl/coca": 0.55,
    "train.mammut_pl/lucidrains": 0.66,
    "train.text_side_efficiency": 0.80,  # at least: text-side GFLOP/s over the floor's
    "overhead.full/contrastive": 1.20,
    "generate.speedup": 3.0,  # at least
    "retrieval.peak_extra_mb": 2048.0,
}


# --------------------------------------------------------------------------------------
# sizes of the three modes
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Plan:
    mode: str
    scale: str  # "real": ViT-B/32 and B/16; "tiny": the test presets (smoke)
    batch: int = 8
    warmup: int = 2  # discarded rounds
    rounds: int = 7  # measured rounds
    overhead_warmup: int = 2
    overhead_rounds: int = 5
    gen_batch: int = 8  # the training batch
    gen_eval_batch: int = 32  # a batch as evaluation decodes it (eval_batch_size), the generate target's
    gen_tokens: int = 30
    gen_repeats: int = 3
    retrieval_images: int = 5000
    retrieval_texts_per_image: int = 5
    retrieval_repeats: int = 3
    data_images: int = 256  # per pass over the shards (the data section)
    data_rounds: int = 5
    data_batch: int = 32
    eval_batch: int = 64  # data.eval_batch_size: retrieval / captioning evaluation
    eval_rounds: int = 3
    beams: int = 4
    gpu_batch: int = 256
    gpu_warmup: int = 3
    gpu_rounds: int = 10
    compile_backend: str = "inductor"  # the compile section's torch.compile backend
    compile_batches: int = 4  # batches of different text lengths the compiled step sees


def make_plan(mode: str) -> Plan:
    if mode == "full":
        return Plan("full", "real")
    if mode == "quick":
        return Plan("quick", "real", warmup=1, rounds=3, overhead_warmup=1, overhead_rounds=3,
                    gen_repeats=1, retrieval_repeats=1, data_images=96, data_rounds=3, eval_rounds=2,
                    gpu_warmup=2, gpu_rounds=5)
    if mode == "smoke":
        return Plan("smoke", "tiny", batch=4, warmup=1, rounds=2, overhead_warmup=1, overhead_rounds=2,
                    gen_batch=2, gen_eval_batch=3, gen_repeats=1, retrieval_images=200, retrieval_repeats=1, data_images=4,
                    data_rounds=1, data_batch=2, eval_batch=4, eval_rounds=1, beams=2,
                    gpu_batch=8, gpu_warmup=1, gpu_rounds=2,
                    compile_backend="eager", compile_batches=3)  # dynamo only: no code generation, seconds
    raise ValueError(f"unknown mode {mode!r}")


# --------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------
def summary(values: list[float]) -> dict[str, Any]:
    """Median and spread of repeated measurements (seconds)."""
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "q1": q[0], "q3": q[2], "n": len(values), "values": values}


def interleaved(steps: dict[str, Callable[[], Any]], warmup: int, rounds: int,
                sync: Callable[[], None] = lambda: None) -> dict[str, dict[str, Any]]:
    """Time each step once per round, round-robin; the first `warmup` rounds are discarded.

    Wall-clock seconds, and under "cpu" this process's CPU seconds (all threads): on a
    shared machine the CPU time counts the work done rather than the waiting for cores."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(warmup + rounds):
        for name, step in steps.items():
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    return {name: {**summary(v), "cpu": summary(cpu[name])} for name, v in times.items()}


_LIBC = None


def _malloc_trim() -> None:
    """Hand freed heap pages back to the OS (glibc), so that memory reused later counts as new."""
    global _LIBC
    try:
        _LIBC = _LIBC or ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory above the starting point while the block runs, in MB (None if unknown).

    CUDA: torch.cuda.max_memory_allocated. CPU (Linux): the resident-set high-water mark
    (VmHWM), reset through /proc/self/clear_refs after malloc_trim.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.mb: float | None = None

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        _malloc_trim()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            self.base = _status_kb("VmRSS")
        except OSError:
            self.base = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        elif self.base is not None and (peak := _status_kb("VmHWM")) is not None:
            self.mb = max(peak - self.base, 0) / 1024


def state_mb(model: nn.Module, opt: torch.optim.Optimizer | None) -> float:
    """Parameters + optimizer state, in MB."""
    n = sum(p.numel() * p.element_size() for p in model.parameters())
    if opt is not None:
        for st in opt.state.values():
            n += sum(t.numel() * t.element_size() for t in st.values() if torch.is_tensor(t) and t.dim() > 0)
    return n / 2**20


def make_adamw(model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The one optimizer every contender gets: AdamW, fused where this torch supports it."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for this device / torch
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)


# --------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------
def caption_tokens(batch: int, context_length: int = 76) -> Tensor:
    """(B, T) CLIP tokens of the first `batch` captions (cycling), padded to the longest:
    the suite's collation (PairBatcher)."""
    from mammut_pl.data.tokenizer import ClipTokenizer

    texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]
    return ClipTokenizer()(texts, context_length, pad_to_longest=True)


def random_images(batch: int, size: int, seed: int = 0) -> Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def text_side_efficiency(rows: dict[str, dict[str, Any]], key: str = "step_s") -> float | None:
    """(text-side GFLOP / text-side seconds) / (floor GFLOP / floor seconds), where the text side is
    mammut_pl's full step minus the floor (the image tower alone, same inputs and optimiser): how
    efficiently the decoder's two passes, the output head and their backward run, relative to the ViT."""
    # = (F_full / F_floor - 1) / (t_full / t_floor - 1): the two ratios of the step table
    if any("tflop_per_step" not in rows.get(name, {}) for name in ("mammut_pl", "image_tower")):
        return None
    flops, time = ratio(rows, "mammut_pl", "image_tower", "tflop_per_step"), ratio(rows, "mammut_pl", "image_tower", key)
    if time is None or time <= 1:  # no text-side time to divide by
        return None
    return (flops - 1) / (time - 1)


def ratio(rows: dict[str, dict[str, Any]], a: str, b: str, key: str = "step_s") -> float | None:
    """Ratio of the median step times (key="cpu_s": of the median CPU times; "tflop_per_step": of
    the FLOPs per step)."""
    if a in rows and b in rows:
        x, y = rows[a][key], rows[b][key]
        return x["median"] / y["median"] if isinstance(x, dict) else x / y
    return None
