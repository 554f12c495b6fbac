"""Classification accuracy for zero-shot evaluation: top-1, top-5 and mean per-class recall.

Per-class counts (images, top-1 hits, top-5 hits) are summed over batches and, under DDP, over
ranks, so the scores equal one pass over the whole set. Top-k: the true class is among the k
largest logits (torch.topk; k is capped at the number of classes). Mean per-class recall is the
unweighted mean over the classes that have images of their top-1 recall (= sklearn's
balanced_accuracy_score); it differs from top-1 when classes have different numbers of images.
Scores are in percent.
"""

from __future__ import annotations

import torch
import torchmetrics
from torch import Tensor


class ZeroShotAccuracy(torchmetrics.Metric):
    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_classes: int, ks: tuple[int, ...] = (1, 5)) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.ks = num_classes, tuple(ks)
        self.add_state("images", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("hits", torch.zeros(len(ks), num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, labels: Tensor) -> None:
        """logits (N, C), labels (N,) class indices."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes or labels.shape != logits.shape[:1]:
            raise ValueError(f"expected logits (N, {self.num_classes}) and labels (N,), "
                             f"got {tuple(logits.shape)} and {tuple(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}), got {labels.min()}..{labels.max()}")
        k = min(max(self.ks), self.num_classes)
        correct = logits.topk(k, dim=1).indices == labels[:, None]  # (N, k): at most one True per row
        self.images.index_add_(0, labels, torch.ones_like(labels))
        for i, kk in enumerate(self.ks):
            self.hits[i].index_add_(0, labels, correct[:, :kk].any(dim=1).long())

    def compute(self) -> dict[str, Tensor]:
        """Scalars `top{k}`, `mean_per_class_recall`; per class (C,) `recall@{k}` and `images`."""
        total = self.images.sum().clamp(min=1)
        present = self.images > 0
        recall = self.hits.double() / self.images.clamp(min=1)  # (K, C)
        out: dict[str, Tensor] = {f"top{k}": 100.0 * self.hits[i].sum() / total for i, k in enumerate(self.ks)}
        out["mean_per_class_recall"] = 100.0 * recall[0][present].mean() if present.any() else total.new_zeros(())
        for i, k in enumerate(self.ks):
            out[f"recall@{k}"] = 100.0 * recall[i]
        out["images"] = self.images.clone()
        return out
