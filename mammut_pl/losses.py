"""Losses, each an nn.Module: focal / softmax / sigmoid contrastive and captioning.

Contrastive losses are correct under data parallelism: embeddings are gathered
from all ranks WITH gradients, each rank scores its own rows against the global
batch, and the per-rank loss is scaled so that averaging gradients over ranks
(what DDP does) gives exactly the gradient of the global-batch loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: Tensor) -> Tensor:
    """(b, D) on each rank -> (W*b, D) in rank order; gradients flow back to the owners."""
    _, world = _world()
    if world == 1:
        return x
    import torch.distributed.nn.functional as dist_fn  # autograd-aware collectives

    return torch.cat(dist_fn.all_gather(x), dim=0)


def global_batch_mean(total: Tensor, count: Tensor | int) -> Tensor:
    """`total` (a sum over this rank's items) / the number of items on ALL ranks, x world size.
    DDP averages gradients over ranks, so the average is the gradient of the mean over the
    global batch however the items (e.g. caption tokens) are spread over the ranks; a per-rank
    mean would weigh a rank's few tokens like another's many. One process: total / count."""
    _, world = _world()
    if world == 1:  # count stays a number: in a compiled step, a dynamic size (not a constant)
        return total / count
    n = torch.as_tensor(count, dtype=torch.float32, device=total.device).clone()
    dist.all_reduce(n)  # a count: no gradient
    return total * world / n


class _PairwiseContrastiveLoss(nn.Module):
    """Every image-text pair is a binary decision (match or not) on l_ij = s * cos_ij + b."""

    def pair_losses(self, logits: Tensor, positive: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, image_embed: Tensor, text_embed: Tensor, logit_scale: Tensor, logit_bias: Tensor | None) -> Tensor:
        rank, world = _world()
        b = image_embed.shape[0]
        all_text = gather_with_grad(text_embed)  # (B, D), B = W * b
        logits = logit_scale * image_embed @ all_text.t()  # (b, B): local rows, global columns
        if logit_bias is not None:  # None: a model without a bias (model.logit_bias=false, openMaMMUT)
            logits = logits + logit_bias
        positive = torch.zeros_like(logits, dtype=torch.bool)
        positive[torch.arange(b), rank * b + torch.arange(b)] = True
        # the global loss sums over all B x B pairs and divides by B; this rank holds b rows.
        # x world: DDP averages gradients over ranks.
        return self.pair_losses(logits, positive).sum() * world / all_text.shape[0]


class SigmoidContrastiveLoss(_PairwiseContrastiveLoss):
    """SigLIP (Zhai et al. 2023): -sum_ij log sigmoid(z_ij * l_ij) / B, z = +1 match, -1 otherwise."""

    def pair_losses(self, logits: Tensor, positive: Tensor) -> Tensor:
        sign = positive.to(logits.dtype) * 2 - 1
        return -F.logsigmoid(sign * logits)


class FocalContrastiveLoss(_PairwiseContrastiveLoss):
    """Focal contrastive loss (RO-ViT, used by MaMMUT): -w (1 - p_t)^gamma log p_t per pair,
    p_t = sigmoid(l) for the matching pair and 1 - sigmoid(l) otherwise; w = 2 * alpha for the
    matching pair and 2 * (1 - alpha) otherwise. Hard pairs weigh more; gamma = 0 with alpha = 0.5
    is the sigmoid loss. Defaults are RO-ViT's reference (compute_focal_contrastive_loss in
    google-research/fvlm/rovit): gamma 1, alpha 0.5, the x2 making both kinds of pair weigh 1."""

    def __init__(self, gamma: float = 1.0, alpha: float = 0.5) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"loss.focal_gamma={gamma}: must be >= 0")
        if not 0 <= alpha <= 1:
            raise ValueError(f"loss.focal_alpha={alpha}: must be in [0, 1]")
        self.gamma, self.alpha = gamma, alpha

    def pair_losses(self, logits: Tensor, positive: Tensor) -> Tensor:
        log_pt = F.logsigmoid(torch.where(positive, logits, -logits))
        weight = torch.where(positive, 2 * self.alpha, 2 * (1 - self.alpha))
        return -weight * (1 - log_pt.exp()) ** self.gamma * log_pt


class SoftmaxContrastiveLoss(nn.Module):
    """CLIP's symmetric InfoNCE over the global batch (bias unused)."""

    def forward(self, image_embed: Tensor, text_embed: Tensor, logit_scale: Tensor, logit_bias: Tensor | None = None) -> Tensor:
        rank, _ = _world()
        b = image_embed.shape[0]
        all_image, all_text = gather_with_grad(image_embed), gather_with_grad(text_embed)
        labels = rank * b + torch.arange(b, device=image_embed.device)
        # mean over this rank's rows; DDP's gradient average makes it the global mean
        i2t = F.cross_entropy(logit_scale * image_embed @ all_text.t(), labels)
        t2i = F.cross_entropy(logit_scale * text_embed @ all_image.t(), labels)
        return (i2t + t2i) / 2


class CaptionLoss(nn.Module):
    """Next-token cross-entropy: logits (B, T, V) at position t predict token t + 1.

    Padding is ignored; `target_mask` (B, T), if given, restricts the loss to the
    marked target tokens (e.g. the answer of a VQA prompt)."""

    def __init__(self, pad_id: int, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, tokens: Tensor, target_mask: Tensor | None = None) -> Tensor:
        targets = tokens[:, 1:]
        keep = targets != self.pad_id
        if target_mask is not None:
            keep = keep & target_mask[:, 1:]
        targets = targets.masked_fill(~keep, -100)
        return F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
            ignore_index=-100, label_smoothing=self.label_smoothing,
        )


def packed_caption_loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Caption cross-entropy on packed logits (N, V) and their targets (N,), as
    `MaMMUT.forward(packed=True)` returns them (padding skipped): = CaptionLoss on the full
    (B, T, V) logits; under DDP the mean over the caption tokens of the global batch (ranks
    hold different numbers of tokens)."""
    total = F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=label_smoothing)
    return global_batch_mean(total, targets.numel())


def mammut_loss(out: dict[str, Tensor], contrastive: nn.Module, contrastive_weight: float, caption_weight: float,
                label_smoothing: float = 0.0) -> dict[str, Tensor]:
    """MaMMUT's objective on one packed forward pass: contrastive_weight * contrastive +
    caption_weight * caption. A term whose weight is 0 was not computed by the forward pass
    (CLIP / captioner baselines) and is left out. Returns its terms and "loss"."""
    losses: dict[str, Tensor] = {}
    total: Tensor | float = 0.0
    if contrastive_weight > 0:
        losses["contrastive_loss"] = contrastive(out["image_embed"], out["text_embed"], out["logit_scale"],
                                                 out["logit_bias"])
        total = total + contrastive_weight * losses["contrastive_loss"]
    if caption_weight > 0:
        losses["caption_loss"] = packed_caption_loss(out["caption_logits"], out["caption_targets"], label_smoothing)
        total = total + caption_weight * losses["caption_loss"]
    losses["loss"] = total
    return losses


CONTRASTIVE_LOSSES = {"focal": FocalContrastiveLoss, "sigmoid": SigmoidContrastiveLoss, "softmax": SoftmaxContrastiveLoss}


def build_contrastive_loss(kind: str, focal_gamma: float = 1.0, focal_alpha: float = 0.5) -> nn.Module:
    if kind not in CONTRASTIVE_LOSSES:
        raise ValueError(f"loss.contrastive={kind!r}: expected one of {sorted(CONTRASTIVE_LOSSES)}")
    return FocalContrastiveLoss(focal_gamma, focal_alpha) if kind == "focal" else CONTRASTIVE_LOSSES[kind]()
