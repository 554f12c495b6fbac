"""Open-vocabulary detection head (OWL-ViT / RO-ViT style) on MaMMUT's image encoder.

Every patch token of the encoder, run at the detection resolution (positions resampled from
the pretraining grid), predicts one box, an objectness logit and a region embedding. The region
embedding goes through the pretrained image projection into the joint space and is scored
against the text embeddings of the class names (the contrastive text pass, prompt templates
averaged), so any category with a name can be detected, including ones never trained on.

    images (B, 3, S, S) -> tokens (B, N, C), N = (S / patch)^2
      boxes      (B, N, 4)  normalised (cx, cy, w, h), biased towards the token's own cell
      objectness (B, N)     logit
      logits     (B, N, K)  cos(region, text_k) * scale + shift, K classes (per-token scale, shift)

Training: Hungarian matching (scipy's linear_sum_assignment) of tokens to ground-truth boxes on
cost = cls * focal + l1 * L1 + giou * (-GIoU); losses = sigmoid focal over (token, class),
focal objectness, L1 and GIoU on the matched tokens, each normalised by the number of boxes.
Optionally a federated classification loss (detection.federated_classes): only the classes present
in the batch and a frequency-weighted draw of others count, since LVIS' labels are partial.
Inference: score = p_class^(1-a) * p_object^a (optionally combined with the model's own score of
the pooled box, F-VLM's geometric mean: detection.vlm_score_weight_*), top candidates, class-wise NMS in plain torch
(torchvision's compiled nms is unavailable on CPU-only installs here), at most 300 per image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from mammut_pl.model.detection_config import DetectionConfig


# --- boxes ------------------------------------------------------------------------------------------
def cxcywh_to_xyxy(b: Tensor) -> Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def xyxy_to_cxcywh(b: Tensor) -> Tensor:
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)


def box_area(b: Tensor) -> Tensor:
    return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)


def box_iou(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU and union of xyxy boxes: (N, 4), (M, 4) -> (N, M), (N, M)."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union.clamp(min=1e-12), union


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise GIoU (Rezatofighi et al. 2019) of xyxy boxes: IoU - (hull - union) / hull."""
    iou, union = box_iou(a, b)
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    hull = (rb - lt).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-12)


def batched_nms(boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float) -> Tensor:
    """Class-wise greedy NMS: indices of the kept boxes, highest score first. A box is dropped when
    a kept box of the same class with a higher score overlaps it with IoU > iou_threshold."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    boxes, classes = boxes[order], classes[order]
    iou, _ = box_iou(boxes, boxes)
    overlap = (iou > iou_threshold) & (classes[:, None] == classes[None, :])  # (M, M)
    overlap = overlap.cpu().numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlap[i]
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def region_pool(tokens: Tensor, boxes: Tensor, grid: tuple[int, int]) -> Tensor:
    """Mean of the patch tokens whose cell centres fall inside each box (edges included):
    tokens (B, N, C) on a (gh, gw) grid, boxes (B, M, 4) normalised xyxy -> (B, M, C). A box that
    holds no centre (smaller than a cell) takes the token of the cell holding the box's centre.
    Plain torch (one masked matmul); torchvision's compiled roi_align is not available here."""
    gh, gw = grid
    ys, xs = torch.meshgrid(torch.arange(gh, device=tokens.device), torch.arange(gw, device=tokens.device),
                            indexing="ij")
    cx, cy = (xs.flatten().float() + 0.5) / gw, (ys.flatten().float() + 0.5) / gh  # (N,)
    x0, y0, x1, y1 = (v[..., None] for v in boxes.float().unbind(-1))  # each (B, M, 1)
    inside = ((cx >= x0) & (cx <= x1) & (cy >= y0) & (cy <= y1)).float()  # (B, M, N)
    count = inside.sum(-1, keepdim=True)
    col = (((x0 + x1) / 2 * gw).long()).clamp(0, gw - 1)
    row = (((y0 + y1) / 2 * gh).long()).clamp(0, gh - 1)
    centre = F.one_hot((row * gw + col)[..., 0], gh * gw).float()  # (B, M, N)
    weights = torch.where(count > 0, inside / count.clamp(min=1), centre)
    return weights.to(tokens.dtype) @ tokens  # (B, M, C)


# --- losses and matching ---------------------------------------------------------------------------------
def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sum of the focal loss (Lin et al. 2017) of independent sigmoids; alpha weighs the positives."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum()


def federated_classes(labels: Tensor, weights: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """The classes a federated loss covers (Zhou et al. 2021): every class in `labels` (the batch's
    ground truth) plus classes drawn without replacement with probability ~ `weights` (K,), n in
    all (fewer where fewer classes have weight). Returns sorted class indices."""
    present = torch.unique(labels.cpu())
    prob = weights.detach().cpu().double().clone()
    prob[present] = 0
    extra = min(n - len(present), int((prob > 0).sum()))
    drawn = torch.multinomial(prob, extra, replacement=False, generator=generator) if extra > 0 else present[:0]
    return torch.cat([present, drawn]).sort().values


def hungarian_match(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one assignment of rows (tokens) to columns (boxes): (rows, cols)."""
    rows, cols = linear_sum_assignment(cost.detach().float().cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


PRIOR_LOGIT = -4.6  # sigmoid = 0.01


# --- the head -----------------------------------------------------------------------------------------
class DetectionHead(nn.Module):
    """Per-token box, objectness and class-embedding heads (OWL-ViT's heads, in the joint space)."""

    def __init__(self, width: int, embed_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.box_mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                                     nn.Linear(width, 4))
        self.objectness = nn.Linear(width, 1)
        self.region = nn.Linear(width, embed_dim)  # starts as the image projection (init_from_model)
        self.logit_shift = nn.Linear(width, 1)
        self.logit_scale = nn.Linear(width, 1)
        nn.init.zeros_(self.box_mlp[-1].weight)
        nn.init.zeros_(self.box_mlp[-1].bias)  # start at the token's own cell
        nn.init.constant_(self.objectness.bias, PRIOR_LOGIT)  # p = 0.01: the focal-loss prior
        nn.init.constant_(self.logit_shift.bias, PRIOR_LOGIT)
        nn.init.zeros_(self.logit_shift.weight)
        nn.init.zeros_(self.logit_scale.weight)
        nn.init.zeros_(self.region.bias)

    def init_from_model(self, model: nn.Module) -> None:
        """Start region embeddings from the (pretrained) image projection into the joint space, and
        the similarity scale from the contrastive temperature."""
        with torch.no_grad():
            self.region.weight.copy_(model.image_proj.weight)
            scale = float(model.scales()[0])
            self.logit_scale.bias.fill_(scale - 1.0)  # elu(x) + 1 = x + 1 for x > 0

    @staticmethod
    def box_bias(gh: int, gw: int, device: torch.device) -> Tensor:
        """logit of each token's cell as (cx, cy, w, h): (gh * gw, 4)."""
        ys, xs = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
        cx, cy = (xs.flatten().float() + 0.5) / gw, (ys.flatten().float() + 0.5) / gh
        w, h = torch.full_like(cx, 1.0 / gw), torch.full_like(cy, 1.0 / gh)
        b = torch.stack([cx, cy, w, h], -1).clamp(1e-4, 1 - 1e-4)
        return torch.log(b / (1 - b))

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> dict[str, Tensor]:
        """tokens (B, N, C) -> boxes (B, N, 4) cxcywh in [0, 1], objectness (B, N),
        region (B, N, D) L2-normalised, shift / scale (B, N, 1)."""
        x = self.norm(tokens)
        boxes = torch.sigmoid(self.box_mlp(x) + self.box_bias(*grid, tokens.device))
        return {"boxes": boxes, "objectness": self.objectness(x).squeeze(-1),
                "region": F.normalize(self.region(x), dim=-1), "shift": self.logit_shift(x),
                "scale": F.elu(self.logit_scale(x)) + 1}

    @staticmethod
    def class_logits(out: dict[str, Tensor], text: Tensor) -> Tensor:
        """(B, N, D) regions x (K, D) class embeddings -> (B, N, K) logits = cos * scale + shift."""
        return out["region"] @ text.t() * out["scale"] + out["shift"]


class OpenVocabDetector(nn.Module):
    """The detection head and its losses / inference around a MaMMUT that is passed in (the task
    owns the model: its weights stay under `model.*`, as in every other task's checkpoint)."""

    def __init__(self, model: nn.Module, cfg: DetectionConfig, vlm_softmax: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.vlm_softmax = vlm_softmax  # the model's contrastive scores: softmax over classes, else sigmoid
        self.head = DetectionHead(model.visual.width, model.config.embed_dim)
        self.head.init_from_model(model)

    @staticmethod
    def patch_tokens(model: nn.Module, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Encoder tokens at the images' resolution, prefix tokens dropped: (B, N, C), (gh, gw).
        embed_patches resamples the learned positions to this grid (ImageEncoder.grid_pos_embed)."""
        visual = model.visual
        p = visual.patch_size
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        tokens = visual.transformer(visual.embed_patches(images))
        return tokens[:, visual.vit.num_prefix_tokens:], grid

    def forward(self, model: nn.Module, images: Tensor, text: Tensor, novel: Tensor | None = None) -> dict[str, Tensor]:
        """images (B, 3, S, S), class embeddings text (K, D) -> the head's outputs + logits (B, N, K).
        In evaluation, with `novel` (K,) bool (classes held out of training) and a vlm_score_weight
        set: + "vlm" (B, N, K) the model's own class probabilities of each box, "vlm_weight" (K,)."""
        tokens, grid = self.patch_tokens(model, images)
        out = self.head(tokens, grid)
        out["logits"] = self.head.class_logits(out, text)
        c = self.cfg
        if not self.training and novel is not None and (c.vlm_score_weight_base or c.vlm_score_weight_novel):
            out["vlm"] = self.vlm_probs(model, tokens, cxcywh_to_xyxy(out["boxes"]), grid, text)
            out["vlm_weight"] = torch.where(novel.to(text.device), c.vlm_score_weight_novel, c.vlm_score_weight_base)
        return out

    @torch.no_grad()
    def vlm_probs(self, model: nn.Module, tokens: Tensor, boxes: Tensor, grid: tuple[int, int], text: Tensor) -> Tensor:
        """F-VLM's open-vocabulary score: the backbone tokens pooled in each box (region_pool), through
        the image projection of encode_image, cosine against the class embeddings, turned into
        probabilities as the contrastive loss does (sigmoid(s * cos + b); softmax over classes for the
        softmax loss): tokens (B, N, C), boxes (B, M, 4) xyxy normalised, text (K, D) -> (B, M, K)."""
        pooled = region_pool(tokens, boxes, grid)  # (B, M, C)
        if model.config.final_ln_after_pool:  # as ImageEncoder.pool: the LayerNorm after pooling
            pooled = model.visual.vit.fc_norm(pooled)
        region = F.normalize(model.image_proj(pooled), dim=-1)  # (B, M, D)
        scale, bias = model.scales()
        logits = scale * region.float() @ text.float().t()
        return logits.softmax(-1) if self.vlm_softmax else (logits + bias).sigmoid()

    # --- training ----------------------------------------------------------------------------
    def match(self, out: dict[str, Tensor], b: int, boxes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Hungarian matching for image b; boxes (G, 4) normalised cxcywh, labels (G,)."""
        c = self.cfg
        with torch.no_grad():
            logits = out["logits"][b][:, labels].float()  # (N, G)
            p = logits.sigmoid()
            pos = c.focal_alpha * (1 - p) ** c.focal_gamma * -F.logsigmoid(logits)
            neg = (1 - c.focal_alpha) * p ** c.focal_gamma * -F.logsigmoid(-logits)
            pred = out["boxes"][b].float()
            cost = (c.cls_weight * (pos - neg) + c.l1_weight * torch.cdist(pred, boxes, p=1)
                    - c.giou_weight * generalized_box_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(boxes)))
        return hungarian_match(cost)

    def losses(self, out: dict[str, Tensor], targets: list[dict[str, Tensor]],
               classes: Tensor | None = None) -> dict[str, Tensor]:
        """targets[b]: "boxes" (G, 4) normalised cxcywh, "labels" (G,) indices into the K classes.
        `classes`: the class indices the classification loss covers (a federated loss; see
        federated_classes); None = all K."""
        c = self.cfg
        logits, obj = out["logits"].float(), out["objectness"].float()
        cls_target = torch.zeros_like(logits)
        obj_target = torch.zeros_like(obj)
        pred_boxes, gt_boxes = [], []
        for b, t in enumerate(targets):
            if len(t["labels"]) == 0:
                continue
            rows, cols = self.match(out, b, t["boxes"], t["labels"])
            rows, cols = rows.to(logits.device), cols.to(logits.device)
            cls_target[b, rows, t["labels"][cols]] = 1.0
            obj_target[b, rows] = 1.0
            pred_boxes.append(out["boxes"][b, rows].float())
            gt_boxes.append(t["boxes"][cols].float())
        num_boxes = max(1.0, float(sum(len(t["labels"]) for t in targets)))
        if classes is not None:  # the other classes are neither positives nor negatives here
            classes = classes.to(logits.device)
            logits, cls_target = logits[..., classes], cls_target[..., classes]
        loss_cls = sigmoid_focal_loss(logits, cls_target, c.focal_alpha, c.focal_gamma) / num_boxes
        loss_obj = sigmoid_focal_loss(obj, obj_target, c.focal_alpha, c.focal_gamma) / num_boxes
        if pred_boxes:
            p, g = torch.cat(pred_boxes), torch.cat(gt_boxes)
            loss_l1 = F.l1_loss(p, g, reduction="sum") / num_boxes
            loss_giou = (1 - torch.diag(generalized_box_iou(cxcywh_to_xyxy(p), cxcywh_to_xyxy(g)))).sum() / num_boxes
        else:
            loss_l1 = loss_giou = out["boxes"].sum() * 0.0
        loss = c.cls_weight * loss_cls + c.obj_weight * loss_obj + c.l1_weight * loss_l1 + c.giou_weight * loss_giou
        return {"loss": loss, "cls_loss": loss_cls, "obj_loss": loss_obj, "l1_loss": loss_l1, "giou_loss": loss_giou}

    # --- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def detections(self, out: dict[str, Tensor], b: int, size: tuple[float, float],
                   candidates: int = 1000) -> tuple[Tensor, Tensor, Tensor]:
        """Image b's detections: boxes (M, 4) xyxy in pixels of a `size` = (H, W) canvas, scores (M,),
        class indices (M,); class-wise NMS, at most max_detections, best first."""
        c = self.cfg
        p_cls = out["logits"][b].float().sigmoid()  # (N, K)
        p_obj = out["objectness"][b].float().sigmoid()[:, None]  # (N, 1)
        scores = p_cls ** (1 - c.objectness_power) * p_obj ** c.objectness_power
        if "vlm" in out:  # F-VLM: geometric mean with the model's own score, weight per class
            w = out["vlm_weight"].float()  # (K,)
            scores = scores ** (1 - w) * out["vlm"][b].float() ** w
        K = scores.shape[1]
        flat = scores.flatten()
        top = torch.topk(flat, min(candidates, flat.numel())).indices
        top = top[flat[top] > c.score_threshold]
        token, cls = top // K, top % K
        H, W = size
        boxes = cxcywh_to_xyxy(out["boxes"][b].float()[token]) * torch.tensor([W, H, W, H], device=flat.device)
        keep = batched_nms(boxes, flat[top], cls, c.nms_iou)[: c.max_detections]
        return boxes[keep], flat[top][keep], cls[keep]


def class_names(categories: list[dict]) -> list[str]:
    """Readable class names: LVIS' first synonym (or name), underscores as spaces ("aerosol_can" ->
    "aerosol can"; parenthesised sense tags such as "bow_(weapon)" kept as words)."""
    out = []
    for c in categories:
        syn = c.get("synonyms") or [c["name"]]
        out.append(" ".join(str(syn[0]).replace("_", " ").replace("(", " ").replace(")", " ").split()))
    return out


def class_text_embeddings(model: nn.Module, tokenizer, names: list[str], prompts: list[str],
                          context_length: int, batch_size: int = 256) -> Tensor:
    """(K, D): each name through every prompt template in the contrastive text pass
    (MaMMUT.encode_text), averaged over templates and L2-normalised."""
    texts = [p.format(n) for n in names for p in prompts]
    device = next(model.parameters()).device
    embeds = []
    for i in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[i:i + batch_size], context_length, pad_to_longest=True).to(device)
        embeds.append(model.encode_text(tokens))
    e = torch.cat(embeds).view(len(names), len(prompts), -1).mean(1)
    return F.normalize(e, dim=-1)
