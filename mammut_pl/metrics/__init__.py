"""Evaluation metrics: retrieval recall, VQA accuracy, COCO captioning scores, LVIS box AP."""

from mammut_pl.metrics.captioning import (
    CaptionMetrics,
    caption_scores,
    distinct_caption_fraction,
)
from mammut_pl.metrics.ptb_tokenizer import ptb_tokenize
from mammut_pl.metrics.lvis import lvis_eval
from mammut_pl.metrics.retrieval import RetrievalRecall, retrieval_recall
from mammut_pl.metrics.vqa import VQAAccuracy, normalize_answer, vqa_accuracy

__all__ = [
    "CaptionMetrics",
    "RetrievalRecall",
    "VQAAccuracy",
    "caption_scores",
    "distinct_caption_fraction",
    "lvis_eval",
    "normalize_answer",
    "ptb_tokenize",
    "retrieval_recall",
    "vqa_accuracy",
]
