"""Open-ended VideoQA accuracy as MSRVTT-QA reports it: top-1 exact match after the usual
answer normalisation (VQA's: lower case, punctuation, number words, articles), overall and
per question type (the question's first word: what / who / how / when / where, ...).

The answer vocabulary is the top-K training answers; a question whose ground-truth answer
is outside it counts as wrong whatever is generated (the classification protocol's rule,
so that numbers are comparable with it). Videos that could not be decoded are counted as
wrong too (`update(..., skipped=n)`): the denominator is always every question asked.
"""

from __future__ import annotations

from collections.abc import Container, Sequence

import torch
import torchmetrics
from torch import Tensor

from mammut_pl.metrics.vqa import normalize_answer

QUESTION_TYPES = ("what", "who", "how", "when", "where", "which", "other")


def question_type(question: str) -> str:
    words = question.strip().lower().split()
    first = words[0] if words else ""
    return first if first in QUESTION_TYPES else "other"


def exact_match(prediction: str, answer: str, vocabulary: Container[str] | None = None) -> bool:
    """Normalised prediction == normalised answer, and the answer is in the vocabulary (if given)."""
    gt = normalize_answer(answer)
    if vocabulary is not None and gt not in vocabulary:
        return False
    return normalize_answer(prediction) == gt


class VideoQAAccuracy(torchmetrics.Metric):
    """Sums of hits and counts (overall and per question type), reduced with `sum` under DDP."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    hits: Tensor
    count: Tensor

    def __init__(self, vocabulary: Container[str] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.vocabulary = vocabulary
        n = len(QUESTION_TYPES)
        self.add_state("hits", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], answers: Sequence[str], questions: Sequence[str]) -> None:
        if not len(predictions) == len(answers) == len(questions):
            raise ValueError(f"{len(predictions)} predictions, {len(answers)} answers, {len(questions)} questions")
        hits = [0.0] * len(QUESTION_TYPES)
        count = [0.0] * len(QUESTION_TYPES)
        for p, a, q in zip(predictions, answers, questions):
            i = QUESTION_TYPES.index(question_type(q))
            hits[i] += float(exact_match(p, a, self.vocabulary))
            count[i] += 1
        self.hits += torch.tensor(hits, dtype=torch.float64, device=self.device)
        self.count += torch.tensor(count, dtype=torch.float64, device=self.device)

    def compute(self) -> dict[str, Tensor]:
        out = {"accuracy": 100.0 * self.hits.sum() / self.count.sum().clamp(min=1)}
        for i, qt in enumerate(QUESTION_TYPES):
            if self.count[i] > 0:
                out[f"accuracy/{qt}"] = 100.0 * self.hits[i] / self.count[i]
        return out
