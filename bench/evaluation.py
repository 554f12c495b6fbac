"""Inference and evaluation throughput: sections 3 (greedy generation with and without the KV
cache), 4 (retrieval evaluation from cached embeddings) and 6 (evaluation at the evaluation
batch: zero-shot retrieval images/s, greedy and beam captions/s)."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from bench.contenders import mammut_config
from bench.measure import PeakMemory, Plan, caption_tokens, interleaved, random_images, ratio, summary


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
