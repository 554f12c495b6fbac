"""Captioning metrics: COCO BLEU / CIDEr-D without Java.

pycocoevalcap's scorers (``Bleu``, ``Cider``) are pure Python; its ``PTBTokenizer`` shells out to
Stanford CoreNLP, replaced here by :func:`mammut_pl.metrics.ptb_tokenizer.ptb_tokenize`, a
pure-Python port calibrated against the jar (see that module for what it does and its differences).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torchmetrics
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from torch import Tensor

from mammut_pl.metrics.ptb_tokenizer import ptb_tokenize

__all__ = ["CaptionMetrics", "caption_scores", "distinct_caption_fraction", "ptb_tokenize"]


def caption_scores(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
) -> dict[str, float]:
    """COCO caption scores: ``{"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr"}``.

    Both sides are tokenised with :func:`ptb_tokenize`, then scored by pycocoevalcap's
    ``Bleu(4)`` (corpus-level, "closest" reference length) and ``Cider`` (which is
    CIDEr-D: clipped counts, Gaussian length penalty, sigma 6). Values are on
    pycocoevalcap's scale: BLEU in [0, 1], CIDEr in [0, 10] (papers report x100).
    CIDEr's idf comes from the references of the evaluated set, so scores of different
    subsets are not comparable; with a single image every idf is 0 and CIDEr is 0.
    """
    if set(predictions) != set(references):
        raise ValueError("predictions and references must have the same ids")
    if not predictions:
        raise ValueError("no captions to score")
    for key, refs in references.items():
        if len(refs) == 0:
            raise ValueError(f"id {key!r} has no reference captions")
    gts = ptb_tokenize(references)
    res = ptb_tokenize({key: [predictions[key]] for key in references})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    scores = {f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}  # Bleu(4) computes all four anyway
    return {**scores, "CIDEr": float(cider)}


def _normalise_caption(caption: str) -> str:
    return " ".join(caption.lower().split())


def distinct_caption_fraction(captions: Sequence[str]) -> float:
    """Fraction of distinct captions (case/whitespace-insensitive), in (0, 1].

    A model that emits the same caption for every image can still reach a non-trivial
    BLEU; this makes that collapse visible (1/N for a constant captioner).
    """
    if len(captions) == 0:
        raise ValueError("no captions")
    return len({_normalise_caption(c) for c in captions}) / len(captions)


class CaptionMetrics(torchmetrics.Metric):
    """BLEU-1..4, CIDEr and distinct-caption fraction over an evaluation epoch.

    Captions are strings, which torchmetrics states cannot hold, so they are kept in
    plain Python lists on each process. ``compute`` gathers them with
    ``torch.distributed.all_gather_object`` when a process group is initialised (every
    rank must call ``compute``, as for any synced metric) and de-duplicates by id,
    keeping the first occurrence (``DistributedSampler`` pads by repeating samples).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._ids: list[Hashable] = []
        self._predictions: list[str] = []
        self._references: list[list[str]] = []

    def update(
        self,
        ids: Sequence[Hashable] | Tensor,
        predictions: Sequence[str],
        references: Sequence[Sequence[str]],
    ) -> None:
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        if not (len(ids) == len(predictions) == len(references)):
            raise ValueError("ids, predictions and references must have the same length")
        self._ids.extend(ids)
        self._predictions.extend(str(p) for p in predictions)
        self._references.extend([str(r) for r in refs] for refs in references)

    def forward(self, *args: Any, **kwargs: Any) -> None:
        # torchmetrics' forward resets and re-merges the registered states around a
        # batch-level compute; the caption lists are not registered states and would be
        # lost, and a per-batch CIDEr is meaningless anyway. Accumulate only.
        self.update(*args, **kwargs)

    def _gathered(self) -> list[tuple[Hashable, str, list[str]]]:
        local = list(zip(self._ids, self._predictions, self._references))
        if not (dist.is_available() and dist.is_initialized()):
            return local
        world = dist.get_world_size(self.process_group)
        if world == 1:
            return local
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, local, group=self.process_group)
        return [item for part in parts for item in part]

    def results(self) -> tuple[dict[Hashable, str], dict[Hashable, list[str]]]:
        """(predictions, references) by id over all processes, first occurrence kept;
        e.g. for the results JSON. Collective under DDP, like ``compute``."""
        predictions: dict[Hashable, str] = {}
        references: dict[Hashable, list[str]] = {}
        for key, pred, refs in self._gathered():
            if key not in predictions:
                predictions[key] = pred
                references[key] = refs
        return predictions, references

    def compute(self) -> dict[str, Tensor]:
        predictions, references = self.results()
        if not predictions:
            raise ValueError("CaptionMetrics.compute() called without any update")
        scores = caption_scores(predictions, references)
        scores["distinct_fraction"] = distinct_caption_fraction(list(predictions.values()))
        return {k: torch.tensor(v, dtype=torch.float64, device=self.device) for k, v in scores.items()}

    def reset(self) -> None:
        super().reset()
        self._ids = []
        self._predictions = []
        self._references = []
