"""`make bench` section `compile`: the suite's training step compiled whole (model.compile=true)
against the same step eager, on the same model, batch and optimizer, timed round-robin in one
process; and the compiled step's graph breaks and recompiles as caption lengths vary.

Both rows take the batch's TextIndex precomputed, as the collator hands it over (computed in a
DataLoader worker in training), so they time the same work. The compiled step is
`PretrainTask.losses` with model.compile=true: forward and losses in one graph, the backward
compiled by AOTAutograd; the optimizer step runs eager in both rows. The first compiled call
(tracing + code generation) is timed on its own and left out of the step times.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from bench.contenders import Contender, pretrain_task
from bench.measure import CAPTIONS, random_images, ratio
from bench.steps import measure_training


def rotated_tokens(batch: int, start: int, context_length: int = 76) -> Tensor:
    """(B, T) CLIP tokens of `batch` captions from CAPTIONS[start:] (cycling), padded to the longest:
    another batch with other lengths T, N (real tokens) and M (caption targets)."""
    from mammut_pl.data.tokenizer import ClipTokenizer

    texts = [CAPTIONS[(start + i) % len(CAPTIONS)] for i in range(batch)]
    return ClipTokenizer()(texts, context_length, pad_to_longest=True)


def text_lengths(tokens: Tensor, index: Any) -> list[int]:
    """[T, N, M]: padded length, real tokens, caption targets: the sizes the compiled step sees vary."""
    return [tokens.shape[1], len(index.real), len(index.caption)]


def dynamo_counts() -> tuple[int, int]:
    """(graph breaks, graphs compiled) since the last counters.clear()."""
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values()), counters["stats"]["unique_graphs"]


def section_compile(plan: Any, device: torch.device) -> dict[str, Any]:
    from torch._dynamo.utils import counters

    from mammut_pl.model.packing import TextIndex
    from mammut_pl.tasks.pretrain import PretrainTask

    torch.manual_seed(0)
    task = pretrain_task("b32" if plan.scale == "real" else "test")
    task.cfg.model.compile = True  # PretrainTask.losses now compiles step_losses (MaMMUTTask.packed_step)
    task.compile_backend = plan.compile_backend
    pad = task.cfg.model.pad_id
    images = random_images(plan.batch, task.model.config.image_size).to(device)
    tokens = rotated_tokens(plan.batch, 0).to(device)
    index = TextIndex.of(tokens, pad)

    def eager(view: Any) -> Any:
        return lambda im, tok: PretrainTask.step_losses(task, im, tok, index)["loss"]

    def compiled(view: Any) -> Any:
        return lambda im, tok: task.losses(im, tok, index)["loss"]

    contenders = [Contender("eager", "mammut_pl step, eager", task.model, eager),
                  Contender("compiled", f"mammut_pl step, torch.compile ({plan.compile_backend})", task.model, compiled)]
    torch._dynamo.reset()
    counters.clear()
    t0 = time.perf_counter()
    contenders[1].loss(images, tokens).backward()  # the first call compiles (forward and backward graphs)
    first_s = time.perf_counter() - t0
    task.model.zero_grad(set_to_none=True)
    rows = measure_training(contenders, images, tokens, plan.warmup, plan.rounds, device)
    # other batches, other lengths: the compiled step must neither break nor compile again
    lengths = [text_lengths(tokens, index)]
    for k in range(1, plan.compile_batches):
        other = rotated_tokens(plan.batch, 3 * k).to(device)
        other_index = TextIndex.of(other, pad)
        lengths.append(text_lengths(other, other_index))
        task.losses(images, other, other_index)["loss"].backward()
    task.model.zero_grad(set_to_none=True)
    breaks, graphs = dynamo_counts()
    return {"device": str(device), "precision": "fp32", "batch_size": plan.batch, "backend": plan.compile_backend,
            "encoder": task.model.config.encoder, "tokens_shape": list(tokens.shape), "rows": rows,
            "first_compiled_step_s": first_s, "text_lengths": lengths, "graph_breaks": breaks,
            "recompiles": graphs - 1,
            "ratios": {"compiled/eager": ratio(rows, "compiled", "eager"),
                       "cpu compiled/eager": ratio(rows, "compiled", "eager", "cpu_s")}}


def markdown_rows(co: dict[str, Any]) -> list[str]:
    from bench.report import _fmt_s, fmt_ratio

    e, c = co["rows"]["eager"], co["rows"]["compiled"]
    lengths = ", ".join("/".join(map(str, x)) for x in co["text_lengths"])
    return [f"| {co['device']} {co['precision']} batch {co['batch_size']}: compiled step ({co['backend']}) / eager "
            f"({_fmt_s(c['step_s'])} s / {_fmt_s(e['step_s'])} s; first compiled call {co['first_compiled_step_s']:.0f} s) | "
            f"{fmt_ratio(co['ratios']['compiled/eager'])} | {fmt_ratio(co['ratios'].get('cpu compiled/eager'))} |",
            f"| compiled step: graph breaks / recompiles over {len(co['text_lengths'])} batches, text lengths "
            f"T/N/M (padded/real tokens/caption targets) {lengths} (targets 0 / <= 2) | "
            f"{co['graph_breaks']} / {co['recompiles']} | |"]
