"""`make bench`: mammut_pl's MaMMUT against open_clip's CoCa and CLIP and lucidrains'
MaMMUT, measured side by side in ONE process.

    python -m bench            # the full run (CPU: ~10 min)
    python -m bench --quick    # fewer steps (CPU: a few minutes)
    python -m bench --smoke    # tiny models, seconds: checks that everything runs
    python -m bench --threads 1  # on a machine busy with other work (see Method)

Sections
 1. train     training step (forward, losses, backward, AdamW) at matched size:
              mammut_pl B/32 (12 decoder layers, 6 with cross-attention, width 512,
              context 76) vs open_clip `coca_ViT-B-32` and `ViT-B-32` (CLIP) and
              lucidrains' `mammut_pytorch` on a timm ViT-B/32; CPU fp32 batch 8.
 2. overhead  mammut_pl full step vs contrastive-only (caption weight 0: the
              generative pass is skipped) at ViT-B/16.
 3. generate  greedy captioning, 30 new tokens, with vs without the KV cache
              (the tokens must be identical).
 4. retrieval zero-shot retrieval evaluation at COCO 5k images x 25k captions from
              cached embeddings: time and peak extra memory.
 5. data      images/s PER CORE turning img2dataset shards (256 px LAION, 512 px DataComp;
              real photos, JPEG q95) into 224 px training batches: open_clip's
              get_wds_dataset vs mammut_pl's FastCrop path, interleaved; the COCO / VQAv2
              readers and MSRVTT clip decoding per core (bench/data.py).
 6. eval      evaluation at the evaluation batch: zero-shot retrieval images/s,
              captions/s greedy and beam search (KV cache).
 7. compile   the training step compiled whole (model.compile=true, inductor) vs eager at
              ViT-B/32, CPU fp32 batch 8, and its graph breaks / recompiles as caption
              lengths vary (bench/compile.py).
 With a GPU also: bf16-mixed at batch 256, eager and torch.compile'd, with the
 achieved TFLOP/s and MFU (FLOPs counted by torch.utils.flop_counter).

Method
- Every contender gets the SAME inputs: random images, and captions tokenised with
  the CLIP tokenizer exactly as the suite's collation does it
  (`Tokenizer(captions, 76, pad_to_longest=True)`: padded to the longest caption of
  the batch, not to 76). Every model accepts (B, T <= 76) tokens.
- mammut_pl's step is the suite's own `PretrainTask.losses` (focal contrastive +
  caption loss, padding skipped). CoCa uses open_clip's CoCaLoss (caption weight 2,
  as open_clip trains it), CLIP open_clip's ClipLoss, lucidrains' model its own loss.
- Every model gets the same optimizer: torch.optim.AdamW, fused where this torch has
  a fused kernel for the device.
- Contenders are timed round-robin (one step each per round), so a burst of load on
  a shared machine hits them alike; warm-up rounds are discarded; we report the
  median and the spread (min, max, quartiles). Compare numbers within one run only.
  Each step's CPU time (this process, all threads) is recorded too. On a machine
  whose cores are busy with other work, multi-threaded kernels wait for each other
  at every barrier (many small kernels: most of a step), which swamps the
  differences being measured; `--threads 1` measures the work itself.
- Memory: `state` = parameters + optimizer state (exact, from the tensors);
  `step peak` = peak extra memory during one step (activations, gradients,
  temporaries): on CPU the peak resident set (Linux VmHWM, reset before the step)
  above the resident set before it; on GPU torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime as dt
import gc
import io
import json
import math
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mammut_pl.flops import count_flops  # shared with the scaling study (mammut_pl.scaling)

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

TARGETS = {  # speed ratios to reach, measured in the same run
    "train.mammut_pl/coca": 0.50,
    "train.mammut_pl/lucidrains": 0.60,
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


# --------------------------------------------------------------------------------------
# the contenders
# --------------------------------------------------------------------------------------
LossFn = Callable[[Tensor, Tensor], Tensor]  # (images, tokens) -> scalar training loss


@dataclasses.dataclass
class Contender:
    name: str
    label: str  # for the table
    model: nn.Module
    make_loss: Callable[[nn.Module], LossFn]  # the loss, computed by the given view of `model`
    loss: LossFn | None = None  # make_loss(model) unless set (e.g. to a torch.compile'd view)
    opt: torch.optim.Optimizer | None = None

    def __post_init__(self) -> None:
        self.loss = self.loss or self.make_loss(self.model)

    def compiled(self) -> Contender:
        """The same weights and optimizer, the loss computed by torch.compile(model)."""
        return dataclasses.replace(self, loss=self.make_loss(torch.compile(self.model)))


def mammut_config(name: str):
    from mammut_pl.model import MaMMUTConfig

    if name == "test":  # tiny, but with the CLIP vocabulary so that the same tokens fit
        return MaMMUTConfig.from_name("test", vocab_size=49408, bos_id=49406, eos_id=49407, context_length=76)
    return MaMMUTConfig.from_name(name)


def pretrain_task(preset: str):
    """The suite's PretrainTask (default losses: focal contrastive + caption, weights 1)."""
    from mammut_pl.tasks.pretrain import PretrainTask

    return PretrainTask({"model": dataclasses.asdict(mammut_config(preset))})


def suite_loss(task, model: nn.Module | None = None, **loss_overrides: Any) -> LossFn:
    """The suite's own training loss, `PretrainTask.losses`, optionally run on another view
    of the same weights (a torch.compile'd model) or with other loss weights."""
    from mammut_pl.model.decoder import TextIndex
    from mammut_pl.tasks.pretrain import PretrainTask

    cfg = task.cfg
    if loss_overrides:
        cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, **loss_overrides))
    view = SimpleNamespace(model=task.model if model is None else model, cfg=cfg,
                           contrastive_loss=task.contrastive_loss, caption_loss=task.caption_loss)
    # the TextIndex inside the step, as before: in training the collator computes it (DataLoader worker)
    return lambda images, tokens: PretrainTask.step_losses(
        view, images, tokens, TextIndex.of(tokens, cfg.model.pad_id))["loss"]


def build_mammut_pl(scale: str, with_padded: bool = True) -> list[Contender]:
    torch.manual_seed(0)
    task = pretrain_task("b32" if scale == "real" else "test")
    model = task.model
    cfg = model.config
    out = [Contender("mammut_pl", f"mammut_pl MaMMUT ({cfg.depth} layers, {cfg.num_cross_attn} cross-attn)",
                     model, lambda view: suite_loss(task, view))]
    if with_padded:
        def padded(view: nn.Module) -> LossFn:  # the forward before packing: (B, T, V) logits
            def loss(images: Tensor, tokens: Tensor) -> Tensor:
                o = view(images, tokens)
                return (task.contrastive_loss(o["image_embed"], o["text_embed"], o["logit_scale"], o["logit_bias"])
                        + task.caption_loss(o["caption_logits"], tokens))
            return loss
        out.append(Contender("mammut_pl_padded", "mammut_pl, padded forward (packed=False)", model, padded))
    return out


class ImageTowerOnly(nn.Module):
    """mammut_pl's image encoder and image projection alone: the part of the step every contender
    shares (all use a ViT-B/32 at 224 px), hence the floor of any step-time ratio to them."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        from mammut_pl.model.encoder import ImageEncoder

        self.visual = ImageEncoder(config)
        self.image_proj = nn.Linear(self.visual.width, config.embed_dim, bias=False)

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.image_proj(self.visual.pool(self.visual(images))), dim=-1)  # (B, D)


def build_image_tower(scale: str) -> list[Contender]:
    torch.manual_seed(0)
    cfg = mammut_config("b32" if scale == "real" else "test")
    model = ImageTowerOnly(cfg)

    def loss(view: nn.Module) -> LossFn:  # InfoNCE against fixed text embeddings: no text-side work
        def fn(images: Tensor, tokens: Tensor) -> Tensor:
            text = F.normalize(torch.randn(images.shape[0], cfg.embed_dim, generator=torch.Generator().manual_seed(1)),
                               dim=-1).to(images.device)
            logits = 10.0 * view(images) @ text.t()
            labels = torch.arange(images.shape[0], device=images.device)
            return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        return fn
    return [Contender("image_tower", "floor: the shared image tower alone (ViT-B/32 + projection, no text)",
                      model, loss)]


def build_open_clip(scale: str) -> list[Contender]:
    import open_clip

    torch.manual_seed(0)
    if scale == "real":
        coca = open_clip.create_model("coca_ViT-B-32", pretrained=None)
        clip = open_clip.create_model("ViT-B-32", pretrained=None, output_dict=True)
    else:
        text = dict(context_length=76, vocab_size=49408, width=32, heads=2, layers=2)
        vision = dict(image_size=32, layers=2, width=64, head_width=32, patch_size=16)
        coca = open_clip.CoCa(32, multimodal_cfg=text, text_cfg=dict(text, embed_cls=True, output_tokens=True),
                              vision_cfg=dict(vision, attentional_pool=True, attn_pooler_heads=2,
                                              attn_pooler_queries=8, output_tokens=True))
        clip = open_clip.CLIP(32, vision_cfg=vision, text_cfg=dict(text, context_length=77), output_dict=True)
    coca_loss_fn = open_clip.CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0)
    clip_loss_fn = open_clip.ClipLoss()

    def coca_loss(view: nn.Module) -> LossFn:
        def loss(images: Tensor, tokens: Tensor) -> Tensor:
            o = view(images, tokens)
            con, cap = coca_loss_fn(o["image_features"], o["text_features"], o["logits"], o["labels"], o["logit_scale"])
            return con + cap
        return loss

    def clip_loss(view: nn.Module) -> LossFn:
        def loss(images: Tensor, tokens: Tensor) -> Tensor:
            # CLIP's text tower takes exactly its context length (its causal mask is not sliced):
            # the same tokens, padded to 77
            o = view(images, nn.functional.pad(tokens, (0, clip.context_length - tokens.shape[1])))
            return clip_loss_fn(o["image_features"], o["text_features"], o["logit_scale"])
        return loss

    return [Contender("coca", "open_clip coca_ViT-B-32", coca, coca_loss),
            Contender("clip", "open_clip ViT-B-32 (CLIP)", clip, clip_loss)]


class TimmTokens(nn.Module):
    """A timm ViT returning its token sequence (the image encoder lucidrains' MaMMUT expects)."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__()
        import timm

        self.vit = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)

    def forward(self, images: Tensor) -> Tensor:
        return self.vit.forward_features(images)  # (B, 1 + N, C)


def build_lucidrains(scale: str) -> list[Contender]:
    from mammut_pytorch import MaMMUT as LucidMaMMUT  # a bench extra: see optional()

    torch.manual_seed(0)
    if scale == "real":  # matched: width 512, 12 layers, cross-attention in every 2nd (6)
        vit = TimmTokens("vit_base_patch32_224")
        model = LucidMaMMUT(dim=512, num_tokens=49408, depth=12, cross_attend_every=2, image_dim=768,
                            dim_head=64, heads=8, img_encoder=vit)
    else:
        vit = TimmTokens("test_vit", img_size=32)
        model = LucidMaMMUT(dim=32, num_tokens=49408, depth=4, cross_attend_every=2, image_dim=64,
                            dim_head=16, heads=2, num_img_queries=8, img_encoder=vit)
    def loss(view: nn.Module) -> LossFn:
        return lambda images, tokens: view(text=tokens, images=images, return_loss=True)
    return [Contender("lucidrains", "lucidrains mammut-pytorch 0.0.7 + timm ViT-B/32", model, loss)]


def optional(build: Callable[[str], list[Contender]], scale: str, skipped: dict[str, str]) -> list[Contender]:
    """Contenders from a bench extra (`pip install -e ".[bench]"`, what `make bench` does):
    none, and the reason in `skipped`, where its package is not installed (e.g. in CI)."""
    try:
        return build(scale)
    except ModuleNotFoundError as err:
        name = build.__name__.removeprefix("build_")
        skipped[name] = f"{err.name} not installed (pip install -e '.[bench]', or make bench)"
        return []


# --------------------------------------------------------------------------------------
# section 1 (and its GPU variant): training step
# --------------------------------------------------------------------------------------
def train_step(c: Contender, images: Tensor, tokens: Tensor, autocast: Any) -> Callable[[], None]:
    def step() -> None:
        with autocast():
            loss = c.loss(images, tokens)
        c.opt.zero_grad(set_to_none=True)
        loss.backward()
        c.opt.step()
    return step




def measure_training(contenders: list[Contender], images: Tensor, tokens: Tensor, warmup: int, rounds: int,
                     device: torch.device, autocast: Any = contextlib.nullcontext,
                     flops: bool = False) -> dict[str, dict[str, Any]]:
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for c in contenders:
        c.model.to(device).train()
        if c.opt is None:
            shared = next((o.opt for o in contenders if o.model is c.model and o.opt is not None), None)
            c.opt = shared or make_adamw(c.model, device)
    steps = {c.name: train_step(c, images, tokens, autocast) for c in contenders}
    times = interleaved(steps, warmup, rounds, sync)
    rows = {}
    for c in contenders:
        with PeakMemory(device) as peak:
            steps[c.name]()
        state = state_mb(c.model, c.opt)
        t = dict(times[c.name])
        row = {
            "label": c.label, "step_s": t, "cpu_s": t.pop("cpu"), "images_per_s": images.shape[0] / t["median"],
            "params_m": sum(p.numel() for p in c.model.parameters()) / 1e6,
            "state_mb": state, "step_peak_mb": peak.mb,
            "total_mb": None if peak.mb is None else state + peak.mb,
            "optimizer": f"AdamW(fused={bool(c.opt.defaults.get('fused'))})",
        }
        if flops:
            n = count_flops(steps[c.name])
            row["tflop_per_step"] = n / 1e12
            row["tflops"] = n / t["median"] / 1e12
        rows[c.name] = row
    return rows


def ratio(rows: dict[str, dict[str, Any]], a: str, b: str, key: str = "step_s") -> float | None:
    """Ratio of the median step times (key="cpu_s": of the median CPU times; "tflop_per_step": of
    the FLOPs per step)."""
    if a in rows and b in rows:
        x, y = rows[a][key], rows[b][key]
        return x["median"] / y["median"] if isinstance(x, dict) else x / y
    return None


def section_train(plan: Plan, device: torch.device) -> dict[str, Any]:
    tokens = caption_tokens(plan.batch)
    size = 224 if plan.scale == "real" else 32
    images = random_images(plan.batch, size)
    skipped: dict[str, str] = {}
    contenders = (build_mammut_pl(plan.scale) + build_open_clip(plan.scale)
                  + optional(build_lucidrains, plan.scale, skipped) + build_image_tower(plan.scale))
    # FLOPs counted too (torch.utils.flop_counter, one extra step each): the ratios of work done
    rows = measure_training(contenders, images, tokens, plan.warmup, plan.rounds, device, flops=True)
    out = {
        "device": "cpu", "precision": "fp32", "batch_size": plan.batch, "image_size": size,
        "tokens_shape": list(tokens.shape), "real_tokens": int((tokens != 0).sum()),
        "warmup_rounds": plan.warmup, "rounds": plan.rounds, "rows": rows, "skipped": skipped,
        "ratios": {
            "mammut_pl/coca": ratio(rows, "mammut_pl", "coca"),
            "mammut_pl/lucidrains": ratio(rows, "mammut_pl", "lucidrains"),
            "mammut_pl/clip": ratio(rows, "mammut_pl", "clip"),
            "mammut_pl/mammut_pl_padded": ratio(rows, "mammut_pl", "mammut_pl_padded"),
            "lucidrains/coca": ratio(rows, "lucidrains", "coca"),
            "image_tower/coca": ratio(rows, "image_tower", "coca"),
            "image_tower/mammut_pl": ratio(rows, "image_tower", "mammut_pl"),
            "cpu image_tower/coca": ratio(rows, "image_tower", "coca", "cpu_s"),
            "flops mammut_pl/coca": ratio(rows, "mammut_pl", "coca", "tflop_per_step"),
            "flops mammut_pl/lucidrains": ratio(rows, "mammut_pl", "lucidrains", "tflop_per_step"),
            "cpu mammut_pl/coca": ratio(rows, "mammut_pl", "coca", "cpu_s"),
            "cpu mammut_pl/lucidrains": ratio(rows, "mammut_pl", "lucidrains", "cpu_s"),
        },
    }
    pl, coca = rows.get("mammut_pl", {}), rows.get("coca", {})
    if pl.get("total_mb") is not None and coca.get("total_mb") is not None:
        out["ratios"]["memory mammut_pl/coca"] = pl["total_mb"] / coca["total_mb"]
    return out


# --------------------------------------------------------------------------------------
# section 2: the cost of the generative pass (ViT-B/16)
# --------------------------------------------------------------------------------------
def section_overhead(plan: Plan, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(0)
    task = pretrain_task("b16" if plan.scale == "real" else "test")
    model = task.model
    tokens = caption_tokens(plan.batch)
    images = random_images(plan.batch, model.config.image_size)
    contenders = [
        Contender("full", "mammut_pl full step (contrastive + caption)", model, lambda view: suite_loss(task, view)),
        Contender("contrastive_only", "mammut_pl contrastive-only (caption weight 0)", model,
                  lambda view: suite_loss(task, view, caption_weight=0.0)),
    ]
    rows = measure_training(contenders, images, tokens, plan.overhead_warmup, plan.overhead_rounds, device)
    return {"encoder": model.config.encoder, "batch_size": plan.batch, "precision": "fp32",
            "tokens_shape": list(tokens.shape), "rows": rows,
            "ratios": {"full/contrastive": ratio(rows, "full", "contrastive_only"),
                       "cpu full/contrastive": ratio(rows, "full", "contrastive_only", "cpu_s")}}


# --------------------------------------------------------------------------------------
# section 3: generation with and without the KV cache
# --------------------------------------------------------------------------------------
@torch.no_grad()
def greedy_without_cache(model: nn.Module, images: Tensor, new_tokens: int) -> Tensor:
    """Greedy decoding with no cache at all (the image is encoded once): every step
    reruns the decoder over the whole prefix, cross-attention keys/values included.
    Same choices as MaMMUT.generate: padding and begin tokens are never generated."""
    cfg = model.config
    memory_input = model.image_tokens(images)
    seq = torch.full((images.shape[0], 1), cfg.bos_id, dtype=torch.long, device=images.device)
    for _ in range(new_tokens):
        hidden = model.text.caption_pass(seq, model.cross_attn_memory(memory_input))
        logits = model.text.logits(hidden[:, -1])
        logits[:, [cfg.pad_id, cfg.bos_id]] = -torch.inf
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
    return seq[:, 1:]


def section_generate(plan: Plan, device: torch.device) -> dict[str, Any]:
    """Greedy decoding with and without the KV cache at the training batch and at an evaluation
    batch. The top level is the evaluation batch (the target's); `by_batch` has both. At batch 8
    on a CPU each cached step is bound by reading the weights (decoder + 49408-word head), which
    the cache cannot remove; the recomputation it saves grows with the batch."""
    from mammut_pl.model import MaMMUT

    torch.manual_seed(0)
    model = MaMMUT(mammut_config("b32" if plan.scale == "real" else "test")).to(device).eval()
    by_batch = [generate_at_batch(model, batch, plan, device) for batch in (plan.gen_batch, plan.gen_eval_batch)]
    return {**by_batch[-1], "by_batch": by_batch}


def generate_at_batch(model: Any, batch: int, plan: Plan, device: torch.device) -> dict[str, Any]:
    images = random_images(batch, model.config.image_size).to(device)
    n = plan.gen_tokens
    outputs: dict[str, Tensor] = {}
    runs = {
        # eos_id=-1: no stop token, so every row decodes exactly n tokens
        "cache": lambda: model.generate(images, max_new_tokens=n, use_cache=True, eos_id=-1),
        "no_self_attn_cache": lambda: model.generate(images, max_new_tokens=n, use_cache=False, eos_id=-1),
        "no_cache": lambda: greedy_without_cache(model, images, n),
    }
    steps = {name: (lambda name=name, f=f: outputs.__setitem__(name, f())) for name, f in runs.items()}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = interleaved(steps, 1, plan.gen_repeats, sync)
    identical = all(torch.equal(outputs["cache"], o) for o in outputs.values())
    assert identical, "greedy decoding with and without the KV cache gave different tokens"
    n_tokens = outputs["cache"].numel()
    rows = {}
    for name, t in times.items():
        t = dict(t)
        rows[name] = {"time_s": t, "cpu_s": t.pop("cpu"), "tokens_per_s": n_tokens / t["median"]}
    return {"batch_size": batch, "new_tokens": n, "tokens_shape": list(outputs["cache"].shape),
            "timed": "whole generation: image encoding (once) + decoding",
            "identical_tokens": identical, "rows": rows,
            "speedup": rows["cache"]["tokens_per_s"] / rows["no_cache"]["tokens_per_s"],
            "cpu speedup": ratio(rows, "no_cache", "cache", "cpu_s"),
            "speedup_vs_no_self_attn_cache": rows["cache"]["tokens_per_s"] / rows["no_self_attn_cache"]["tokens_per_s"]}


# --------------------------------------------------------------------------------------
# section 4: retrieval evaluation from cached embeddings
# --------------------------------------------------------------------------------------
def section_retrieval(plan: Plan, device: torch.device) -> dict[str, Any]:
    from mammut_pl.metrics.retrieval import retrieval_recall

    n_img, per = plan.retrieval_images, plan.retrieval_texts_per_image
    dim = 512 if plan.scale == "real" else 32
    g = torch.Generator().manual_seed(0)
    image_embeds = torch.nn.functional.normalize(torch.randn(n_img, dim, generator=g), dim=-1)
    text_embeds = torch.nn.functional.normalize(torch.randn(n_img * per, dim, generator=g), dim=-1)
    text_to_image = torch.arange(n_img).repeat_interleave(per)
    with PeakMemory(torch.device("cpu")) as peak:  # first call: memory
        t0 = time.perf_counter()
        recalls = retrieval_recall(image_embeds, text_embeds, text_to_image)
        first = time.perf_counter() - t0
    times = [first]
    for _ in range(plan.retrieval_repeats - 1):
        t0 = time.perf_counter()
        retrieval_recall(image_embeds, text_embeds, text_to_image)
        times.append(time.perf_counter() - t0)
    cached_mb = (image_embeds.numel() + text_embeds.numel()) * 4 / 2**20
    return {"n_images": n_img, "n_texts": n_img * per, "dim": dim, "device": "cpu", "time_s": summary(times),
            "peak_extra_mb": peak.mb, "cached_embeddings_mb": cached_mb,
            "recall_keys": sorted(recalls)}


# --------------------------------------------------------------------------------------
# section 5: data loading per core (bench/data.py); section 6: evaluation throughput
# --------------------------------------------------------------------------------------
def section_data(plan: Plan, device: torch.device) -> dict[str, Any]:
    from bench.data import section_data as run_data

    return run_data(plan, device)


def section_compile(plan: Plan, device: torch.device) -> dict[str, Any]:
    from bench.compile import section_compile as run_compile

    return run_compile(plan, device)


@torch.no_grad()
def section_eval(plan: Plan, device: torch.device) -> dict[str, Any]:
    """Evaluation at the evaluation batch (data.eval_batch_size): zero-shot retrieval (image tower +
    5 captions an image through the text tower, embeddings normalised: what validation runs per batch)
    in images/s, and captioning (20 new tokens, eval.max_new_tokens) greedy and beam search with the
    KV cache, in captions/s. Every row decodes the full length (no stop token)."""
    from mammut_pl.model import MaMMUT

    torch.manual_seed(0)
    model = MaMMUT(mammut_config("b32" if plan.scale == "real" else "test")).to(device).eval()
    B = plan.eval_batch
    images = random_images(B, model.config.image_size).to(device)
    tokens = caption_tokens(5 * B).to(device)
    new = 20
    runs = {
        "retrieval": lambda: (model.image_embedding(model.image_tokens(images)), model.encode_text(tokens)),
        "greedy": lambda: model.generate(images, max_new_tokens=new, use_cache=True, eos_id=-1),
        "beam": lambda: model.generate(images, max_new_tokens=new, num_beams=plan.beams, use_cache=True, eos_id=-1),
    }
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = interleaved(runs, 1, plan.eval_rounds, sync)
    rows = {}
    for name, t in times.items():
        t = dict(t)
        rows[name] = {"time_s": t, "cpu_s": t.pop("cpu"), "per_s": B / t["median"]}
    return {"batch_size": B, "captions_per_image_retrieval": 5, "new_tokens": new, "beams": plan.beams,
            "device": str(device), "rows": rows,
            "retrieval_images_per_s": rows["retrieval"]["per_s"], "greedy_captions_per_s": rows["greedy"]["per_s"],
            "beam_captions_per_s": rows["beam"]["per_s"]}


# --------------------------------------------------------------------------------------
# GPU: bf16-mixed, batch 256, eager and torch.compile, MFU
# --------------------------------------------------------------------------------------
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0,
                    "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


def peak_bf16_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():  # most specific first
        if all(part in name for part in key.split()):
            return value
    return None


def section_gpu(plan: Plan, device: torch.device | None = None) -> dict[str, Any]:
    """bf16-mixed training steps (eager and compiled) and the ViT-B/16 MFU. `device` is a
    GPU; another device only dry-runs the code path (tests, no numbers that matter)."""
    device = device or torch.device("cuda")
    cuda = device.type == "cuda"
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    name = torch.cuda.get_device_name(device) if cuda else str(device)
    peak = peak_bf16_tflops(name) if cuda else None
    out: dict[str, Any] = {"device": name, "precision": "bf16-mixed", "batch_size": plan.gpu_batch,
                           "peak_bf16_tflops": peak, "runs": {}}
    tokens = caption_tokens(plan.gpu_batch).to(device)
    size = 224 if plan.scale == "real" else 32
    images = random_images(plan.gpu_batch, size).to(device)
    contenders: list[Contender] = []
    for compiled in (False, True):
        key = "compiled" if compiled else "eager"
        try:
            contenders = build_mammut_pl(plan.scale, with_padded=False) + build_open_clip(plan.scale) \
                + optional(build_lucidrains, plan.scale, out.setdefault("skipped", {}))
            if compiled:
                contenders = [c.compiled() for c in contenders]
            rows = measure_training(contenders, images, tokens, plan.gpu_warmup, plan.gpu_rounds, device,
                                    autocast, flops=not compiled)
            out["runs"][key] = {"rows": rows, "ratios": {
                "mammut_pl/coca": ratio(rows, "mammut_pl", "coca"),
                "mammut_pl/lucidrains": ratio(rows, "mammut_pl", "lucidrains")}}
        except Exception as err:  # noqa: BLE001 - report, go on with the other runs
            out["runs"][key] = {"error": f"{type(err).__name__}: {err}"}
        finally:
            contenders = []
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    # MFU of the ViT-B/16 pretraining step: FLOPs counted on the eager step
    try:
        torch.manual_seed(0)
        task = pretrain_task("b16" if plan.scale == "real" else "test")
        images16 = random_images(plan.gpu_batch, task.model.config.image_size).to(device)
        eager = Contender("b16_eager", "mammut_pl ViT-B/16 eager", task.model, lambda view: suite_loss(task, view))
        comp = dataclasses.replace(eager.compiled(), name="b16_compiled", label="mammut_pl ViT-B/16 compiled")
        rows = measure_training([eager, comp], images16, tokens, plan.gpu_warmup, plan.gpu_rounds, device, autocast)
        flops = count_flops(train_step(eager, images16, tokens, autocast))
        for row in rows.values():
            row["tflop_per_step"] = flops / 1e12
            row["tflops"] = flops / row["step_s"]["median"] / 1e12
            row["mfu"] = None if peak is None else row["tflops"] / peak
        out["b16_mfu"] = rows
    except Exception as err:  # noqa: BLE001
        out["b16_mfu"] = {"error": f"{type(err).__name__}: {err}"}
    return out


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------
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


def _fmt_ratio(x: float | None, target: float | None = None, at_least: bool = False) -> str:
    if x is None:
        return "n/a"
    if target is None:
        return f"{x:.2f}"
    ok = x >= target if at_least else x <= target
    return f"{x:.2f} ({'>=' if at_least else '<='} {target:.2f}: {'met' if ok else 'NOT met'})"


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    v = m["versions"]
    lines = [
        f"Benchmark `python -m bench{'' if res['mode'] == 'full' else ' --' + res['mode']}` "
        f"({res['date']}): {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads"
        f"{', ' + m['gpu'] if m['gpu'] else ''}; torch {v['torch']}, timm {v['timm']}, open_clip {v['open_clip']}, "
        f"mammut-pytorch {v['mammut_pytorch']}. Median [min-max] of the measured steps; "
        "contenders timed round-robin in one process.",
        "",
    ]
    tr = res.get("train")
    if tr and "rows" in tr:
        lines += [f"**Training step**, CPU {tr['precision']}, batch {tr['batch_size']}, tokens "
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
        lines.append("")
    lines += ["CPU s/step: this process's CPU time (all threads), less sensitive than wall time to "
              "other load on a shared machine; the targets are judged on wall time.", "",
              "| measure | value (target) | by CPU time |", "|---|---|---|"]
    if tr and "ratios" in tr:
        r = tr["ratios"]
        lines += [f"| step time mammut_pl / CoCa (CPU; FLOPs per step: {_fmt_ratio(r.get('flops mammut_pl/coca'))}) | "
                  f"{_fmt_ratio(r['mammut_pl/coca'], TARGETS['train.mammut_pl/coca'])} | "
                  f"{_fmt_ratio(r.get('cpu mammut_pl/coca'))} |",
                  f"| step time mammut_pl / lucidrains MaMMUT (CPU; FLOPs per step: "
                  f"{_fmt_ratio(r.get('flops mammut_pl/lucidrains'))}) | "
                  f"{_fmt_ratio(r['mammut_pl/lucidrains'], TARGETS['train.mammut_pl/lucidrains'])} | "
                  f"{_fmt_ratio(r.get('cpu mammut_pl/lucidrains'))} |",
                  f"| step time mammut_pl / CLIP (CPU) | {_fmt_ratio(r['mammut_pl/clip'])} | |",
                  f"| floor: image tower alone / CoCa (the ViT-B/32 all contenders share; its share of "
                  f"mammut_pl's step: {_fmt_ratio(r.get('image_tower/mammut_pl'))}) | "
                  f"{_fmt_ratio(r.get('image_tower/coca'))} | {_fmt_ratio(r.get('cpu image_tower/coca'))} |",
                  f"| step time mammut_pl packed / padded forward | {_fmt_ratio(r['mammut_pl/mammut_pl_padded'])} | |"]
        if "memory mammut_pl/coca" in r:
            lines.append(f"| memory (state + step peak) mammut_pl / CoCa | {_fmt_ratio(r['memory mammut_pl/coca'], 1.0)} | |")
    ov = res.get("overhead")
    if ov and "ratios" in ov:
        f, c = ov["rows"]["full"], ov["rows"]["contrastive_only"]
        lines.append(f"| ViT-B/16 full / contrastive-only step ({_fmt_s(f['step_s'])} s / {_fmt_s(c['step_s'])} s) | "
                     f"{_fmt_ratio(ov['ratios']['full/contrastive'], TARGETS['overhead.full/contrastive'])} | "
                     f"{_fmt_ratio(ov['ratios'].get('cpu full/contrastive'))} |")
    ge = res.get("generate")
    if ge and "rows" in ge:
        for at in ge.get("by_batch", [ge]):
            g = {k: r["tokens_per_s"] for k, r in at["rows"].items()}
            target = at["batch_size"] == ge["batch_size"]  # judged at the evaluation batch
            lines.append(f"| greedy captioning, {at['new_tokens']} new tokens x {at['batch_size']} images, tokens/s: "
                         f"KV cache {g['cache']:.0f}, no cache {g['no_cache']:.0f} (cross-attn K/V cached only: "
                         f"{g['no_self_attn_cache']:.0f}); identical tokens: {at['identical_tokens']} | speedup "
                         f"{_fmt_ratio(at['speedup'], TARGETS['generate.speedup'] if target else None, at_least=True)}"
                         f" | {_fmt_ratio(at.get('cpu speedup'))} |")
    rt = res.get("retrieval")
    if rt and "time_s" in rt:
        lines.append(f"| retrieval eval {rt['n_images']} x {rt['n_texts']} from cached embeddings: "
                     f"{_fmt_s(rt['time_s'])} s, peak extra memory | {_fmt_mb(rt['peak_extra_mb'])} (< 2 GB: "
                     f"{'met' if rt['peak_extra_mb'] is not None and rt['peak_extra_mb'] < TARGETS['retrieval.peak_extra_mb'] else 'NOT met'}) | |")
    ev = res.get("eval")
    if ev and "rows" in ev:
        lines.append(f"| evaluation at batch {ev['batch_size']}: zero-shot retrieval (5 captions an image) images/s; "
                     f"captions/s greedy / beam {ev['beams']} (KV cache, {ev['new_tokens']} tokens) | "
                     f"{ev['retrieval_images_per_s']:.1f}; {ev['greedy_captions_per_s']:.1f} / "
                     f"{ev['beam_captions_per_s']:.1f} | |")
    co = res.get("compile")
    if co and "rows" in co:
        from bench.compile import markdown_rows as compile_rows

        lines += compile_rows(co)
    da = res.get("data")
    if da and "shards" in da:
        from bench.data import markdown_rows

        lines += markdown_rows(da)
    gpu = res.get("gpu")
    if gpu:
        for key, run in gpu.get("runs", {}).items():
            if "ratios" in run:
                lines.append(f"| GPU {gpu['device']} bf16 batch {gpu['batch_size']} {key}: mammut_pl / CoCa | "
                             f"{_fmt_ratio(run['ratios']['mammut_pl/coca'], 0.60)} | |")
        for row in (gpu.get("b16_mfu") or {}).values():
            if isinstance(row, dict) and row.get("mfu") is not None:
                lines.append(f"| GPU {row['label']}: {row['tflops']:.0f} TFLOP/s, MFU | {_fmt_ratio(row['mfu'], 0.40, True)} | |")
    for name, sec in res.items():
        if isinstance(sec, dict) and "error" in sec:
            lines.append(f"| {name} | failed: {sec['error']} | |")
    return "\n".join(lines) + "\n"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


SECTIONS = {"train": section_train, "overhead": section_overhead, "generate": section_generate,
            "retrieval": section_retrieval, "data": section_data, "eval": section_eval,
            "compile": section_compile}


def run(mode: str = "full", out: str | Path = "bench/results", sections: list[str] | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    plan = make_plan(mode)
    sections = sections or list(SECTIONS)
    started = dt.datetime.now()
    res: dict[str, Any] = {"schema": 1, "mode": mode, "date": started.strftime("%Y-%m-%d %H:%M"),
                           "machine": machine(), "plan": dataclasses.asdict(plan), "targets": TARGETS}
    cpu = torch.device("cpu")
    # memory-light sections first: the RSS high-water mark is cleanest before the big models ran
    for name in [s for s in ("retrieval", "data", "eval", "generate", "train", "overhead", "compile") if s in sections]:
        log(f"[bench] {name} ...")
        t0 = time.perf_counter()
        try:
            res[name] = SECTIONS[name](plan, cpu)
        except Exception as err:  # noqa: BLE001 - one broken section must not lose the others
            res[name] = {"error": f"{type(err).__name__}: {err}"}
            if mode == "smoke":
                raise
        res[name]["seconds"] = time.perf_counter() - t0
        log(f"[bench] {name}: {res[name]['seconds']:.0f} s")
        gc.collect()
    if torch.cuda.is_available():
        log("[bench] gpu ...")
        res["gpu"] = section_gpu(plan)
    res["machine"]["load_avg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    res["seconds"] = (dt.datetime.now() - started).total_seconds()
    res = _jsonable(res)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    host = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in res["machine"]["host"])
    text = json.dumps(res, indent=1)
    (out / f"{started:%Y-%m-%d}-{host}.json").write_text(text + "\n")
    (out / "latest.json").write_text(text + "\n")
    table = markdown(res)
    (out / "latest.md").write_text(table)
    log(table)
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode", help="fewer steps (a few minutes on CPU)")
    mode.add_argument("--smoke", action="store_const", const="smoke", dest="mode", help="tiny models, seconds (for tests)")
    p.add_argument("--out", default="bench/results", help="folder for <date>-<host>.json, latest.json, latest.md")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice, one per core); 1 on a machine shared with "
                        "other work, where multi-threaded kernels wait for each other's cores")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    a = p.parse_args(argv)
    sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {unknown}; known: {sorted(SECTIONS)}")
    if a.threads is not None:
        if a.threads < 1:
            p.error("--threads must be at least 1")
        torch.set_num_threads(a.threads)
    run(a.mode or "full", a.out, sections)


if __name__ == "__main__":
    main(sys.argv[1:])
