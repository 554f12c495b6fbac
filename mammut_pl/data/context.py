"""What a task evaluates against, handed over by its datamodule (`datamodule.eval_context()`):
the splits, and, read lazily when the task first needs them, the ground truth it scores
against. Tasks read this small typed record, never the datamodule's own attributes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EvalContext:
    val_split: str = "val"
    test_split: str = "test"
    # question answering (VQA v2, MSRVTT-QA)
    eval_questions: Callable[[str], list[Any]] | None = None  # split -> its questions with their answers
    majority_answer: Callable[[], str] | None = None  # the most frequent training answer (the baseline)
    answer_vocabulary: Callable[[], list[str]] | None = None  # MSRVTT-QA: the top-K training answers
    # detection (LVIS)
    categories_of: Callable[[str], list[dict[str, Any]]] | None = None  # annotation file -> its categories
    train_categories: Callable[[], list[dict[str, Any]]] | None = None  # the training (base) vocabulary
    train_class_image_counts: Callable[[], list[int]] | None = None  # training images per train category
    val_file: str = ""  # annotation files scored at validation / test
    test_file: str = ""
    eval_gt: Callable[[str], dict[str, Any]] | None = None  # annotation file -> its ground truth


def eval_context(datamodule: Any) -> EvalContext | None:
    """The context a datamodule hands over; None without a datamodule (plain dataloaders)."""
    if datamodule is None:
        return None
    make = getattr(datamodule, "eval_context", None)
    return make() if make is not None else EvalContext()
