"""The detection head's parts against independent references: class-wise NMS vs a brute-force numpy
NMS, GIoU vs hand-worked values, Hungarian matching vs brute force over permutations, the focal loss
vs its formula; and the head on a tiny MaMMUT at a detection resolution other than pretraining's."""

import itertools
import math

import numpy as np
import pytest
import torch

from mammut_pl.model.detection_config import DetectionConfig
from mammut_pl.model.detection import (
    OpenVocabDetector,
    batched_nms,
    box_iou,
    cxcywh_to_xyxy,
    federated_classes,
    generalized_box_iou,
    hungarian_match,
    sigmoid_focal_loss,
    xyxy_to_cxcywh,
)


def numpy_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, thr: float) -> list[int]:
    """Brute force: visit boxes by decreasing score; keep one unless an already kept box of the same
    class overlaps it with IoU > thr (IoU from the definition, one pair at a time)."""
    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union

    kept: list[int] = []
    for i in sorted(range(len(boxes)), key=lambda i: (-scores[i], i)):
        if all(classes[j] != classes[i] or iou(boxes[i], boxes[j]) <= thr for j in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", range(6))
def test_nms_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    xy = rng.uniform(0, 50, (n, 2))
    wh = rng.uniform(2, 30, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    scores = rng.random(n)
    classes = rng.integers(0, 3, n)
    for thr in (0.3, 0.5, 0.7):
        got = batched_nms(torch.tensor(boxes), torch.tensor(scores), torch.tensor(classes), thr).tolist()
        assert got == numpy_nms(boxes, scores, classes, thr)


def test_nms_is_class_wise_and_handles_empty():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 1]), 0.5).tolist() == [0, 2]
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).tolist() == []


def test_giou_hand_worked():
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 4, 4]])
    b = torch.tensor([[1.0, 1, 3, 3], [2, 0, 3, 1], [0, 0, 4, 4]])
    g = torch.diag(generalized_box_iou(a, b))
    # overlap 1, union 7, hull 9: 1/7 - 2/9; disjoint: 0 - (3 - 2)/3; identical: 1
    torch.testing.assert_close(g, torch.tensor([1 / 7 - 2 / 9, -1 / 3, 1.0]))
    iou, _ = box_iou(a, b)
    assert iou[0, 0].item() == pytest.approx(1 / 7)
    c = torch.tensor([[0.3, 0.4, 0.2, 0.1]])
    torch.testing.assert_close(xyxy_to_cxcywh(cxcywh_to_xyxy(c)), c)


@pytest.mark.parametrize("seed", range(5))
def test_hungarian_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, g = int(rng.integers(2, 7)), 0
    g = int(rng.integers(1, n + 1))
    cost = torch.tensor(rng.random((n, g)))
    rows, cols = hungarian_match(cost)
    assert len(rows) == g and len(set(rows.tolist())) == g and sorted(cols.tolist()) == list(range(g))
    best = min(sum(cost[r, c].item() for c, r in enumerate(perm)) for perm in itertools.permutations(range(n), g))
    assert cost[rows, cols].sum().item() == pytest.approx(best)


def test_focal_loss_formula():
    x = torch.tensor([2.0, -1.0, 0.5])
    t = torch.tensor([1.0, 0.0, 0.0])
    p = torch.sigmoid(x)
    expected = (0.25 * (1 - p[0]) ** 2 * -torch.log(p[0]) + 0.75 * p[1] ** 2 * -torch.log(1 - p[1])
                + 0.75 * p[2] ** 2 * -torch.log(1 - p[2]))
    torch.testing.assert_close(sigmoid_focal_loss(x, t, 0.25, 2.0), expected)


@pytest.fixture
def tiny_detector(tiny_cfg):
    from mammut_pl.model import MaMMUT

    torch.manual_seed(0)
    model = MaMMUT(tiny_cfg)  # test_vit, 32 px, patch 16: a 2x2 pretraining grid
    return model, OpenVocabDetector(model, DetectionConfig(image_size=64, max_detections=7))


def test_head_runs_at_the_detection_resolution_and_learns(tiny_detector):
    model, det = tiny_detector
    images = torch.randn(2, 3, 64, 64)  # 4x4 grid: positions resampled from 2x2
    text = torch.nn.functional.normalize(torch.randn(5, model.config.embed_dim), dim=-1)
    out = det(model, images, text)
    assert out["boxes"].shape == (2, 16, 4) and out["logits"].shape == (2, 16, 5)
    assert out["objectness"].shape == (2, 16)
    # at initialisation every token predicts its own cell
    torch.testing.assert_close(out["boxes"][0, 5], torch.tensor([1.5 / 4, 1.5 / 4, 0.25, 0.25]), atol=1e-3, rtol=0)
    targets = [{"boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    params = [p for p in det.parameters()] + list(model.visual.parameters())
    opt = torch.optim.Adam(params, lr=2e-3)
    first = None
    for _ in range(12):
        losses = det.losses(det(model, images, text), targets)
        first = first if first is not None else losses["loss"].item()
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    assert losses["loss"].item() < 0.5 * first
    assert math.isfinite(losses["giou_loss"].item())
    boxes, scores, classes = det.detections(det(model, images, text), 0, (64, 64))
    assert len(boxes) <= 7 and (scores[:-1] >= scores[1:]).all()
    assert classes[0].item() == 2  # the trained class ranks first


def test_federated_classes_keep_the_present_ones_and_draw_by_weight():
    weights = torch.tensor([0.0, 1.0, 1.0, 0.0, 4.0, 9.0, 0.0, 1.0], dtype=torch.float64)
    labels = torch.tensor([3, 3, 6])  # present classes count even with weight 0
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        got = federated_classes(labels, weights, 4, g).tolist()
        assert len(got) == 4 and got == sorted(set(got)) and {3, 6} <= set(got)
        assert not set(got) & {0}  # weight 0, absent: never drawn
    assert federated_classes(labels, weights, 50).tolist() == [1, 2, 3, 4, 5, 6, 7]  # all that can be drawn
    assert federated_classes(labels, weights, 1).tolist() == [3, 6]  # never fewer than the present ones
    # one draw: P(class) = w / sum(w) over the absent ones (a 10k-sample check against the weights)
    draws = torch.stack([federated_classes(torch.tensor([3]), weights, 2, g) for _ in range(10000)])
    drawn = draws[draws != 3]
    freq = torch.bincount(drawn, minlength=8).double() / len(drawn)
    torch.testing.assert_close(freq, weights / weights.sum(), atol=0.015, rtol=0)


def test_federated_loss_leaves_the_other_classes_out(tiny_detector):
    """Only the chosen classes enter the classification loss: the same value as the focal loss on
    those logit columns by hand, and no gradient to the others; all classes = the plain loss."""
    model, det = tiny_detector
    text = torch.nn.functional.normalize(torch.randn(6, model.config.embed_dim), dim=-1)
    out = det(model, torch.randn(2, 3, 64, 64), text)
    out["logits"].retain_grad()
    targets = [{"boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]]), "labels": torch.tensor([2, 4])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    plain = det.losses(out, targets)
    torch.testing.assert_close(det.losses(out, targets, torch.arange(6))["cls_loss"], plain["cls_loss"])
    classes = torch.tensor([0, 2, 4])
    fed = det.losses(out, targets, classes)
    rows0, cols0 = det.match(out, 0, targets[0]["boxes"], targets[0]["labels"])
    x = out["logits"].detach()[..., classes]
    t = torch.zeros_like(x)
    for r, c in zip(rows0.tolist(), cols0.tolist()):
        t[0, r, classes.tolist().index(targets[0]["labels"][c].item())] = 1
    p = x.sigmoid()
    by_hand = (t * 0.25 * (1 - p) ** 2 * -torch.log(p) + (1 - t) * 0.75 * p ** 2 * -torch.log(1 - p)).sum() / 2
    torch.testing.assert_close(fed["cls_loss"], by_hand, rtol=1e-5, atol=1e-6)
    for k in ("obj_loss", "l1_loss", "giou_loss"):  # the rest of the loss is unchanged
        torch.testing.assert_close(fed[k], plain[k])
    fed["cls_loss"].backward()
    grad = out["logits"].grad
    assert grad[..., [1, 3, 5]].abs().max() == 0 and grad[..., [0, 2, 4]].abs().max() > 0


@pytest.mark.parametrize("overrides, message", [
    (["detection.image_size=100"], "detection.image_size.*patch size 8"),
    (["detection.nms_iou=0"], "detection.nms_iou"),
    (["data.lvis.jitter_min=2", "data.lvis.jitter_max=1"], "data.lvis.jitter_min"),
    (["detection.prompts=[a photo]"], "detection.prompts"),
    (["detection.max_detection=3"], "Did you mean `detection.max_detections`"),
    (["data.name=vqav2"], "task=detection reads data.name=lvis"),
    (["detection.federated_classes=-1"], "detection.federated_classes"),
])
def test_detection_config_errors_name_the_key(overrides, message):
    from mammut_pl import config as C
    from mammut_pl.tasks import load_config

    assert C.load("lvis").detection.image_size == 96
    with pytest.raises(C.ConfigError, match=message):
        load_config("lvis", overrides)
