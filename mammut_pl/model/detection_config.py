"""DetectionConfig: the `detection.*` keys of open-vocabulary detection (task=detection, LVIS).

Torch-free (the typed config imports it), beside the head and losses in detection.py."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_PROMPTS = ["a {}", "a photo of a {}", "a picture of a {}"]


@dataclass
class DetectionConfig:
    image_size: int = 1024  # detection resolution (square canvas); positions resampled from model.image_size
    base_only: bool = True  # open vocabulary: rare ('r') categories are removed from training
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))  # class-name templates, "{}" = name
    train_text: bool = False  # fine-tune the text side too (False: class embeddings fixed, as at pretraining)
    # losses (Hungarian matching cost uses the same weights)
    cls_weight: float = 2.0  # sigmoid focal loss on (token, class)
    obj_weight: float = 1.0  # sigmoid focal loss on the token's objectness
    l1_weight: float = 5.0  # L1 on normalised (cx, cy, w, h)
    giou_weight: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    # federated loss (Zhou et al. 2021, as in Detic): LVIS labels each image's classes only partly, so
    # a class that is not annotated is not necessarily absent. N > 0: the classification loss of a
    # batch covers the classes present in it plus classes drawn with probability ~ (training images
    # of the class)^federated_power, N in all; 0 = every training class is a negative (the default)
    federated_classes: int = 0
    federated_power: float = 0.5
    # inference
    objectness_power: float = 0.5  # score = p_class^(1-a) * p_object^a
    # F-VLM's score combination (Kuo et al. 2023; RO-ViT uses it too): final = score^(1-w) * p_vlm^w, p_vlm =
    # the pretrained contrastive head's probability for the box's pooled backbone tokens; w per class:
    # base (trained on) or novel (held out: LVIS' rare). 0 = off; F-VLM uses 0.35 / 0.65. Evaluation only
    vlm_score_weight_base: float = 0.0
    vlm_score_weight_novel: float = 0.0
    nms_iou: float = 0.5  # class-wise NMS
    score_threshold: float = 0.0
    max_detections: int = 300  # per image (LVIS' limit)

    def __post_init__(self) -> None:
        def fail(key: str, why: str) -> None:
            raise ValueError(f"detection.{key}={getattr(self, key)!r}: {why}")

        if self.image_size <= 0:
            fail("image_size", "must be positive")
        if not self.prompts or any("{}" not in p for p in self.prompts):
            fail("prompts", "need at least one template, each with {} for the class name")
        for key in ("cls_weight", "obj_weight", "l1_weight", "giou_weight", "focal_gamma", "federated_classes",
                    "federated_power"):
            if getattr(self, key) < 0:
                fail(key, "must be >= 0")
        if not 0 <= self.focal_alpha <= 1:
            fail("focal_alpha", "must be in [0, 1]")
        for key in ("objectness_power", "vlm_score_weight_base", "vlm_score_weight_novel"):
            if not 0 <= getattr(self, key) <= 1:
                fail(key, "must be in [0, 1]")
        if not 0 < self.nms_iou <= 1:
            fail("nms_iou", "must be in (0, 1]")
        if not 0 < self.max_detections:
            fail("max_detections", "must be positive")
