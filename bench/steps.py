"""The step table: sections 1 (training step at matched size) and 2 (the cost of the generative
pass), and their GPU variant (bf16-mixed, eager and torch.compile, MFU)."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from bench.contenders import (Contender, build_image_tower, build_lucidrains, build_mammut_pl, build_open_clip,
                              optional, pretrain_task, suite_loss)
from bench.measure import (PeakMemory, Plan, caption_tokens, interleaved, make_adamw, random_images, ratio, state_mb,
                           text_side_efficiency)
from mammut_pl.flops import count_flops  # shared with the scaling study (mammut_pl.sweeps.scaling)


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
            "text_side_efficiency": text_side_efficiency(rows),
            "cpu text_side_efficiency": text_side_efficiency(rows, "cpu_s"),
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
