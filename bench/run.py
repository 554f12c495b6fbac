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

Code: measure.py (plan, inputs, timing, memory), contenders.py, steps.py (sections 1-2, GPU),
evaluation.py (sections 3, 4, 6), data.py (section 5), compile.py (section 7), report.py (machine, markdown); this file
runs the sections and writes bench/results/.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.evaluation import section_eval, section_generate, section_retrieval
from bench.measure import TARGETS, Plan, make_plan
from bench.report import jsonable, machine, markdown
from bench.steps import section_gpu, section_overhead, section_train


def section_data(plan: Plan, device: torch.device) -> dict[str, Any]:
    from bench.data import section_data as run_data  # its shard-writing imports only when it runs

    return run_data(plan, device)


def section_compile(plan: Plan, device: torch.device) -> dict[str, Any]:
    from bench.compile import section_compile as run_compile

    return run_compile(plan, device)


SECTIONS = {"train": section_train, "overhead": section_overhead, "generate": section_generate,
            "retrieval": section_retrieval, "data": section_data, "eval": section_eval,
            "compile": section_compile}


def run(mode: str = "full", out: str | Path = "bench/results", sections: list[str] | None = None,
        log: Callable[[str], None] = print, batch: int | None = None) -> dict[str, Any]:
    plan = make_plan(mode)
    if batch is not None:  # the training-step batch (the step table and its ratios)
        plan = dataclasses.replace(plan, batch=batch)
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
    res = jsonable(res)

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
    p.add_argument("--batch", type=int, default=None,
                   help="batch of the training-step table (default 8): the text side's efficiency grows with it")
    a = p.parse_args(argv)
    sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {unknown}; known: {sorted(SECTIONS)}")
    if a.threads is not None:
        if a.threads < 1:
            p.error("--threads must be at least 1")
        torch.set_num_threads(a.threads)
    if a.batch is not None and a.batch < 1:
        p.error("--batch must be at least 1")
    run(a.mode or "full", a.out, sections, batch=a.batch)


if __name__ == "__main__":
    main(sys.argv[1:])
