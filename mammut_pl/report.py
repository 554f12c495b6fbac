"""What a person reads at the end of a run: metrics, example outputs, where the run is."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mammut_pl.config import Config, tracking_uri


def example_captions(task: Any, datamodule: Any, n: int, max_new_tokens: int, num_beams: int = 1,
                     length_penalty: float = 1.0) -> list[tuple[str, list[str]]]:
    """(generated caption, reference captions) for the first n test images."""
    loader = datamodule.test_dataloader()
    batch = next(iter(loader), None)
    if batch is None:  # no test data (e.g. data.val_root='')
        return []
    model = task.model.eval()
    images = batch["images"][:n].to(task.device)
    with torch.no_grad():
        tokens = model.generate(images, max_new_tokens=max_new_tokens, num_beams=num_beams,
                                length_penalty=length_penalty)
    return list(zip(task.decode(tokens), batch["captions"][:n]))


def print_report(cfg: Config, task: Any, datamodule: Any, metrics: dict[str, float], logger: Any, run_dir: Path) -> None:
    line = "=" * 72
    print(f"\n{line}\nmammut_pl | experiment={cfg.experiment or 'default'} task={cfg.task} "
          f"| trained {metrics.get('train_seconds', 0):.0f} s")
    if "test/i2t_R@1" in metrics:
        for direction, name in (("i2t", "image -> text"), ("t2i", "text -> image")):
            r = [metrics.get(f"test/{direction}_R@{k}", float("nan")) for k in (1, 5, 10)]
            print(f"zero-shot retrieval {name}: R@1 {r[0]:5.1f}  R@5 {r[1]:5.1f}  R@10 {r[2]:5.1f}")
        if hasattr(datamodule, "split"):
            images = datamodule.split(datamodule.test_split) if hasattr(datamodule, "test_split") else None
            if images:
                chance = 100.0 / len(images)
                print(f"  ({len(images)} test images; chance R@1 for text -> image = {chance:.1f})")
    if "test/zeroshot_top1" in metrics:  # data.zeroshot_root, final weights
        print(zeroshot_line(cfg, metrics))
    if "test/vqa_accuracy" in metrics:
        print_vqa(task, datamodule, metrics, cfg.eval.num_examples)
    if cfg.task == "captioning" and "test/CIDEr" in metrics:
        results = getattr(task, "results", [])
        print(caption_scores_line(cfg, metrics, "test", len(results)))
        if metrics.get("test/distinct_captions", 1.0) < 0.5:
            print("  warning: most images get the same caption: the captioner ignores the image "
                  "(train longer, or start from a pretraining checkpoint: model.init_from=...)")
        print(f"\ngenerated captions ({decoding(cfg)}) vs references:")
        for r in results[: cfg.eval.num_examples]:
            print(f"  generated: {r['caption']!r}\n  reference: {r['references'][0]!r}")
        if getattr(task, "results_path", None):
            print(f"results JSON: {task.results_path}")
    if cfg.task == "detection" and "test/AP" in metrics:
        print_detection(metrics, task)
    if cfg.task == "pretrain" and cfg.loss.caption_weight > 0:
        print("\ngenerated captions (greedy) vs references:")
        for generated, refs in example_captions(task, datamodule, cfg.eval.num_examples, cfg.eval.max_new_tokens):
            print(f"  generated: {generated!r}\n  reference: {refs[0]!r}")
    if hasattr(task, "report_lines"):  # tasks that print their own scores (video)
        for text in task.report_lines(metrics, datamodule):
            print(text)
    print(f"\ncheckpoints: {run_dir / 'checkpoints'}")
    if logger is not None:
        print(f"MLflow run {logger.run_id} in {tracking_uri(cfg)}")
        print(f"  open the UI: `make mlflow-ui`, then {logger.run_id and run_url_of(logger)}")
    print(line)


def zeroshot_line(cfg: Config, metrics: dict[str, float]) -> str:
    try:
        n = sum(p.is_dir() for p in Path(cfg.data.zeroshot_root).iterdir())
        chance = f", chance {100 / n:.1f}" if n else ""
    except OSError:
        n, chance = "?", ""
    return (f"zero-shot classification ({n} classes, {os.path.normpath(cfg.data.zeroshot_root)}): top-1 {metrics['test/zeroshot_top1']:.1f}"
            f"  top-5 {metrics.get('test/zeroshot_top5', float('nan')):.1f}{chance}")


def print_vqa(task: Any, datamodule: Any, metrics: dict[str, float], n: int) -> None:
    """VQA accuracy overall / per answer type next to the majority-answer baseline, and examples."""
    acc = metrics["test/vqa_accuracy"]
    types = "  ".join(f"{t} {metrics[f'test/vqa_accuracy/{t}']:.1f}" for t in ("yes/no", "number", "other")
                      if f"test/vqa_accuracy/{t}" in metrics)
    print(f"VQA accuracy ({datamodule.test_split}): {acc:.2f}   [{types}]")
    if "test/majority_baseline" in metrics:
        print(f"  majority-answer baseline ({datamodule.majority_answer()!r} for every question): "
              f"{metrics['test/majority_baseline']:.2f}")
    batch = next(iter(datamodule.test_dataloader()))
    task.model.eval()
    with torch.no_grad():
        answers = task.answer(batch["images"][:n].to(task.device), batch["prompt_tokens"][:n].to(task.device))
    print("\nquestions, generated answers and the annotators' most common answer:")
    for q, a, refs in zip(batch["questions"], answers, batch["answers"]):
        common = max(set(refs), key=refs.count) if refs else "?"
        print(f"  {q!r:48} -> {a!r:12} (annotators: {common!r})")


def decoding(cfg: Config) -> str:
    return "greedy" if cfg.eval.num_beams == 1 else f"beam search, {cfg.eval.num_beams} beams"


def caption_scores_line(cfg: Config, metrics: dict[str, float], stage: str, n_images: int) -> str:
    """BLEU-4 / CIDEr (x100, as papers report them) and the distinct-caption guard."""
    m = {k: metrics.get(f"{stage}/{k}", float("nan")) for k in ("BLEU4", "CIDEr", "distinct_captions")}
    return (f"captioning ({decoding(cfg)}) on {n_images} {stage} images: BLEU-4 {100 * m['BLEU4']:.1f}  "
            f"CIDEr {100 * m['CIDEr']:.1f}  (x100)  distinct captions {100 * m['distinct_captions']:.0f}%")


def run_url_of(logger: Any) -> str:
    from mammut_pl.tracking import run_url

    return run_url(logger)


def print_detection(metrics: dict[str, float], task: Any) -> None:
    """LVIS box AP (official protocol; -1 = no category with boxes of that kind)."""
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
    print("LVIS box AP (test): " + "  ".join(f"{k} {100 * metrics[f'test/{k}']:.1f}" if metrics.get(f"test/{k}", -1) >= 0
                                              else f"{k} -" for k in keys))
    print("  APr: rare categories, held out of detection training (open vocabulary)")
    if getattr(task, "results_path", None):
        print(f"results JSON: {task.results_path}")
