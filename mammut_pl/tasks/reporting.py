"""Report-line helpers the tasks share (end-of-fit report and `evaluate`'s table)."""

from __future__ import annotations

from typing import Any

import torch

from mammut_pl.config import Config


def decoding(cfg: Config) -> str:
    return "greedy" if cfg.eval.num_beams == 1 else f"beam search, {cfg.eval.num_beams} beams"


def caption_scores_line(cfg: Config, metrics: dict[str, float], stage: str, n_images: int) -> str:
    """BLEU-4 / CIDEr (x100, as papers report them) and the distinct-caption guard."""
    m = {k: metrics.get(f"{stage}/{k}", float("nan")) for k in ("BLEU4", "CIDEr", "distinct_captions")}
    return (f"captioning ({decoding(cfg)}) on {n_images} {stage} images: BLEU-4 {100 * m['BLEU4']:.1f}  "
            f"CIDEr {100 * m['CIDEr']:.1f}  (x100)  distinct captions {100 * m['distinct_captions']:.0f}%")


def example_captions(task: Any, datamodule: Any, n: int, max_new_tokens: int, num_beams: int = 1,
                     length_penalty: float = 1.0) -> list[tuple[str, list[str]]]:
    """(generated caption, reference captions) for the first n test images."""
    loader = datamodule.test_dataloader()
    batch = next(iter(loader), None)
    if batch is None:  # no test data (e.g. data.webdata.val_root='')
        return []
    model = task.model.eval()
    images = batch["images"][:n].to(task.device)
    with torch.no_grad():
        tokens = model.generate(images, max_new_tokens=max_new_tokens, num_beams=num_beams,
                                length_penalty=length_penalty)
    return list(zip(task.decode(tokens), batch["captions"][:n]))


# --- evaluate's printed table -------------------------------------------------------------------------
def recall_lines(m: dict[str, float], directions: tuple[tuple[str, str], ...]) -> list[str]:
    lines = [f"{'':16}{'R@1':>7}{'R@5':>7}{'R@10':>7}"]
    for direction, name in directions:
        if f"{direction}_R@1" in m:
            lines.append(f"{name:16}" + "".join(f"{m[f'{direction}_R@{k}']:7.1f}" for k in (1, 5, 10)))
    return lines


def decoding_line(d: dict[str, Any]) -> str:
    decoding = ("greedy" if d["num_beams"] == 1
                else f"beam search ({d['num_beams']} beams, length penalty {d['length_penalty']})")
    return f"decoding: {decoding}, up to {d['max_new_tokens']} tokens"


def caption_lines(m: dict[str, float]) -> list[str]:
    return ["  ".join(f"BLEU-{n} {100 * m[f'BLEU{n}']:.1f}" for n in (1, 2, 3, 4))
            + f"  CIDEr {100 * m['CIDEr']:.1f}  (x100)",
            f"distinct captions: {100 * m['distinct_captions']:.0f}%"]


def limit(key: str, value: int) -> str:
    """The report's `subset` field: which setting keeps only the first items."""
    return f"{key}={value}" if value else ""


def karpathy_description(split: str, cfg: Config, datamodule: Any) -> dict[str, Any]:
    """What a Karpathy-split evaluation scores (COCO / Flickr30k): reads the split's records,
    so a missing file fails here, named, before any model work."""
    from mammut_pl.data.coco import KARPATHY_FILES

    datasets = {file: name for name, file in KARPATHY_FILES.items()}
    coco = cfg.data.coco
    images = datamodule.split(coco.test_split)
    return {"data": datasets.get(coco.karpathy_file, coco.karpathy_file), "root": cfg.data.root,
            "split": coco.test_split, "images": len(images), "captions": sum(len(im.captions) for im in images),
            "max_eval_images": coco.max_eval_images,
            "subset": limit("data.coco.max_eval_images", coco.max_eval_images)}
