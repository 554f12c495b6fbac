"""Zero-shot image-text retrieval recall (COCO / Flickr30k protocol).

Protocol: every image is a query against all texts (image->text, "i2t") and every
text is a query against all images (text->image, "t2i"). An i2t query is a hit at K
if ANY of the image's captions is among the top-K texts; a t2i query is a hit at K if
its image is among the top-K images. Similarity is the dot product (embeddings are
expected to be L2-normalised already).

Tie convention (optimistic): the rank of the positive is the number of candidates
with a *strictly greater* similarity, so candidates tied with the (best) positive do
not push it down. With continuous embeddings ties practically never happen, and this
agrees with the usual full-matrix ``argsort`` implementations; it is exact, cheap and
needs no sort.

Memory: the N_img x N_txt similarity matrix is never materialised. Queries are
processed ``chunk_size`` at a time, so the largest intermediate is
O(chunk_size x max(N_img, N_txt)) (5k x 25k COCO: 1024 x 25k floats = 100 MB).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torchmetrics
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

# the names retrieval_recall returns (logged as val/..., test/...)
RECALL_KEYS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "mean_R")


def _hits_from_ranks(ranks: Tensor, ks: Sequence[int]) -> dict[int, int]:
    return {k: int((ranks < k).sum().item()) for k in ks}


def retrieval_recall(
    image_embeds: Tensor,
    text_embeds: Tensor,
    text_to_image: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall@K in percent for both directions, plus ``mean_R`` (mean of all of them).

    Args:
        image_embeds: (N_img, D) normalised image embeddings.
        text_embeds: (N_txt, D) normalised text embeddings.
        text_to_image: (N_txt,) integer index into ``image_embeds`` of each text's image.
        ks: the K values.
        chunk_size: number of queries scored at once (bounds memory).

    Returns:
        ``{"i2t_R@K": ..., "t2i_R@K": ..., "mean_R": ...}`` with values in [0, 100].
    """
    text_to_image = _checked_text_to_image(image_embeds, text_embeds, text_to_image, chunk_size)
    n_img, n_txt = image_embeds.shape[0], text_embeds.shape[0]
    # Float32 so that the positive's own score and the candidates' scores come from the
    # same matmul (a positive can never be "strictly greater" than itself).
    image_embeds = image_embeds.float()
    text_embeds = text_embeds.to(image_embeds.device).float()
    text_to_image = text_to_image.to(image_embeds.device)
    embeds = (image_embeds, text_embeds, text_to_image)
    i2t_hits = _hits(n_img, chunk_size, ks, lambda start, stop: _i2t_ranks(*embeds, start, stop))
    t2i_hits = _hits(n_txt, chunk_size, ks, lambda start, stop: _t2i_ranks(*embeds, start, stop))
    result: dict[str, float] = {}
    for k in ks:
        result[f"i2t_R@{k}"] = 100.0 * i2t_hits[k] / n_img
    for k in ks:
        result[f"t2i_R@{k}"] = 100.0 * t2i_hits[k] / n_txt
    result["mean_R"] = sum(result.values()) / len(result)
    return result


def _checked_text_to_image(image_embeds: Tensor, text_embeds: Tensor, text_to_image: Tensor,
                           chunk_size: int) -> Tensor:
    """``text_to_image`` as a flat long tensor, after checking shapes, indices and that every
    image has a caption."""
    if image_embeds.ndim != 2 or text_embeds.ndim != 2:
        raise ValueError("image_embeds and text_embeds must be 2-D (N, D)")
    if image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(
            f"embedding dims differ: images {image_embeds.shape[1]}, texts {text_embeds.shape[1]}"
        )
    n_img, n_txt = image_embeds.shape[0], text_embeds.shape[0]
    text_to_image = torch.as_tensor(text_to_image, device=text_embeds.device).long().reshape(-1)
    if text_to_image.numel() != n_txt:
        raise ValueError(f"text_to_image has {text_to_image.numel()} entries for {n_txt} texts")
    if n_img == 0 or n_txt == 0:
        raise ValueError("need at least one image and one text")
    if text_to_image.min() < 0 or text_to_image.max() >= n_img:
        raise ValueError("text_to_image contains an index outside [0, N_img)")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    # i2t needs at least one positive per image; silently scoring such an image as a
    # miss would hide an id-mapping bug.
    captions_per_image = torch.bincount(text_to_image, minlength=n_img)
    if (captions_per_image == 0).any():
        missing = torch.nonzero(captions_per_image == 0).flatten()[:5].tolist()
        raise ValueError(f"images without any caption (first few indices: {missing})")
    return text_to_image


def _hits(n_queries: int, chunk_size: int, ks: Sequence[int], ranks: Callable[[int, int], Tensor]) -> dict[int, int]:
    """Queries whose positive ranks below K, per K; `ranks(start, stop)` ranks a chunk of queries."""
    hits = dict.fromkeys(ks, 0)
    for start in range(0, n_queries, chunk_size):
        for k, h in _hits_from_ranks(ranks(start, min(start + chunk_size, n_queries)), ks).items():
            hits[k] += h
    return hits


def _i2t_ranks(image_embeds: Tensor, text_embeds: Tensor, text_to_image: Tensor, start: int, stop: int) -> Tensor:
    """(c,) rank of each image query's best-ranked caption among all texts."""
    sims = image_embeds[start:stop] @ text_embeds.T  # (c, N_txt)
    image_idx = torch.arange(start, stop, device=sims.device)
    is_positive = text_to_image[None, :] == image_idx[:, None]  # (c, N_txt) bool
    best_positive = sims.masked_fill(~is_positive, float("-inf")).amax(dim=1)
    return (sims > best_positive[:, None]).sum(dim=1)


def _t2i_ranks(image_embeds: Tensor, text_embeds: Tensor, text_to_image: Tensor, start: int, stop: int) -> Tensor:
    """(c,) rank of each text query's image among all images."""
    sims = text_embeds[start:stop] @ image_embeds.T  # (c, N_img)
    positive = sims.gather(1, text_to_image[start:stop, None])
    return (sims > positive).sum(dim=1)


def _has_data(state: list[Tensor] | Tensor) -> bool:
    if isinstance(state, Tensor):
        return state.numel() > 0
    return any(t.numel() > 0 for t in state)


def _first_occurrence(ids: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted unique ids and, for each, the index of its first occurrence in ``ids``."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(ids.numel(), device=ids.device)
    first = torch.full((unique.numel(),), ids.numel(), dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return unique, first


class RetrievalRecall(torchmetrics.Metric):
    """Accumulates image and text embeddings over an epoch and computes retrieval recall.

    ``update`` may receive images and texts in separate calls (pass empty tensors for the
    other modality). Ids are global dataset ids, so that ``compute`` can

    * drop duplicates: ``DistributedSampler`` pads the last batch by repeating samples,
      and gathering with ``dist_reduce_fx="cat"`` then sees them twice (first kept);
    * link each text to its image by id, wherever the image landed.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    image_embeds: list[Tensor]
    image_ids: list[Tensor]
    text_embeds: list[Tensor]
    text_ids: list[Tensor]
    text_image_ids: list[Tensor]

    def __init__(self, ks: Sequence[int] = (1, 5, 10), chunk_size: int = 1024, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks = tuple(ks)
        self.chunk_size = chunk_size
        for name in ("image_embeds", "image_ids", "text_embeds", "text_ids", "text_image_ids"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        image_embeds: Tensor,
        image_ids: Tensor,
        text_embeds: Tensor,
        text_ids: Tensor,
        text_image_ids: Tensor,
    ) -> None:
        image_ids = torch.as_tensor(image_ids, device=self.device).long().reshape(-1)
        text_ids = torch.as_tensor(text_ids, device=self.device).long().reshape(-1)
        text_image_ids = torch.as_tensor(text_image_ids, device=self.device).long().reshape(-1)
        if image_embeds.shape[0] != image_ids.numel():
            raise ValueError("image_embeds and image_ids have different lengths")
        if not (text_embeds.shape[0] == text_ids.numel() == text_image_ids.numel()):
            raise ValueError("text_embeds, text_ids and text_image_ids have different lengths")
        if image_ids.numel():
            self.image_embeds.append(image_embeds.detach().float())
            self.image_ids.append(image_ids)
        if text_ids.numel():
            self.text_embeds.append(text_embeds.detach().float())
            self.text_ids.append(text_ids)
            self.text_image_ids.append(text_image_ids)

    def compute(self) -> dict[str, Tensor]:
        # Before a DDP sync the states are lists of tensors, after it single tensors.
        if not _has_data(self.image_ids) or not _has_data(self.text_ids):
            raise ValueError("RetrievalRecall.compute() needs at least one image and one text")
        image_embeds = dim_zero_cat(self.image_embeds)
        image_ids = dim_zero_cat(self.image_ids)
        text_embeds = dim_zero_cat(self.text_embeds)
        text_ids = dim_zero_cat(self.text_ids)
        text_image_ids = dim_zero_cat(self.text_image_ids)

        unique_image_ids, first_image = _first_occurrence(image_ids)
        image_embeds = image_embeds[first_image]
        _, first_text = _first_occurrence(text_ids)
        text_embeds = text_embeds[first_text]
        text_image_ids = text_image_ids[first_text]

        # unique_image_ids is sorted, so searchsorted maps ids to row indices.
        text_to_image = torch.searchsorted(unique_image_ids, text_image_ids)
        clamped = text_to_image.clamp(max=unique_image_ids.numel() - 1)
        unknown = unique_image_ids[clamped] != text_image_ids
        if unknown.any():
            bad = text_image_ids[unknown].unique()[:5].tolist()
            raise ValueError(f"texts refer to image ids never passed to update(): {bad}")

        scores = retrieval_recall(
            image_embeds, text_embeds, text_to_image, ks=self.ks, chunk_size=self.chunk_size
        )
        return {k: torch.tensor(v, device=self.device) for k, v in scores.items()}
