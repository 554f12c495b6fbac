"""F-VLM-style score combination (detection.vlm_score_weight_base / _novel): region pooling, the
model's own open-vocabulary probability of a box, and the geometric mean, against hand computations."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mammut_pl.model.detection_config import DetectionConfig
from mammut_pl.model import MaMMUT, MaMMUTConfig
from mammut_pl.model.detection import OpenVocabDetector, region_pool, xyxy_to_cxcywh

sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
# a 2 x 2 grid, row-major cells with centres (.25, .25) (.75, .25) (.25, .75) (.75, .75)
TOKENS = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [4.0, 0.0]]])  # (1, 4, 2)
BOXES = torch.tensor([[[0.0, 0.0, 0.5, 1.0],     # left column: cells 0 and 2
                       [0.0, 0.0, 1.0, 1.0],     # everything
                       [0.55, 0.55, 0.6, 0.6],   # no centre inside: the cell of its centre, 3
                       [0.2, 0.2, 0.3, 0.3]]])   # holds the centre of cell 0 only


def test_region_pool_by_hand():
    want = torch.tensor([[[1.5, 1.0], [7 / 4, 3 / 4], [4.0, 0.0], [1.0, 0.0]]])
    torch.testing.assert_close(region_pool(TOKENS, BOXES, (2, 2)), want)


class TinyVLM(nn.Module):
    """image_proj = identity, temperature 2, bias -1."""

    config = MaMMUTConfig.from_name("test")  # final_ln_after_pool=False

    def __init__(self) -> None:
        super().__init__()
        self.image_proj = nn.Linear(2, 2, bias=False)
        nn.init.eye_(self.image_proj.weight)

    def scales(self):
        return torch.tensor(2.0), torch.tensor(-1.0)


def detector(**cfg) -> OpenVocabDetector:
    d = OpenVocabDetector.__new__(OpenVocabDetector)  # the head is not needed for scoring
    nn.Module.__init__(d)
    d.cfg, d.vlm_softmax = DetectionConfig(**cfg), False
    return d.eval()


def test_vlm_probs_and_geometric_mean_by_hand():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # class 0 (base), class 1 (novel)
    det = detector(vlm_score_weight_base=0.35, vlm_score_weight_novel=0.65, objectness_power=0.5, nms_iou=1.0)
    vlm = det.vlm_probs(TinyVLM(), TOKENS, BOXES[:, :2], (2, 2), text)  # boxes 0 and 1
    # box 0: pooled (1.5, 1) -> unit (0.8321, 0.5547); box 1: (7/4, 3/4) -> (0.9191, 0.3939)
    hand = [[sig(2 * 1.5 / math.hypot(1.5, 1) - 1), sig(2 * 1 / math.hypot(1.5, 1) - 1)],
            [sig(2 * 1.75 / math.hypot(1.75, .75) - 1), sig(2 * .75 / math.hypot(1.75, .75) - 1)]]
    torch.testing.assert_close(vlm[0], torch.tensor(hand))
    logits, objectness = [[0.5, -1.0], [2.0, -3.0]], [1.0, -0.5]
    out = {"logits": torch.tensor([logits]), "objectness": torch.tensor([objectness]),
           "boxes": xyxy_to_cxcywh(torch.tensor([[[0.0, 0.0, 0.5, 1.0], [0.6, 0.6, 1.0, 1.0]]])),
           "vlm": vlm, "vlm_weight": torch.tensor([0.35, 0.65])}
    _, scores, classes = det.detections(out, 0, (10, 10))
    want = []
    for n in range(2):
        for k, w in enumerate([0.35, 0.65]):
            s_det = sig(logits[n][k]) ** 0.5 * sig(objectness[n]) ** 0.5
            want.append(s_det ** (1 - w) * hand[n][k] ** w)
    assert sorted(scores.tolist()) == pytest.approx(sorted(want), rel=1e-5)
    del out["vlm"]  # off: the detector's own score
    _, plain, _ = det.detections(out, 0, (10, 10))
    assert sorted(plain.tolist()) == pytest.approx(
        sorted(sig(logits[n][k]) ** 0.5 * sig(objectness[n]) ** 0.5 for n in range(2) for k in range(2)), rel=1e-5)


@pytest.mark.parametrize("softmax, final_ln_after_pool", [(False, False), (True, False), (False, True)])
def test_whole_image_box_scores_like_encode_image(softmax, final_ln_after_pool):
    """A box over the whole image pools every patch token: the same embedding as encode_image
    (avg pool, and the LayerNorm after it where the model has one), scored as the contrastive
    head scores it."""
    torch.manual_seed(0)
    model = MaMMUT(MaMMUTConfig.from_name("test", final_ln_after_pool=final_ln_after_pool)).eval()
    images = torch.randn(2, 3, 32, 32)
    text = F.normalize(torch.randn(3, 32), dim=-1)
    det = detector(vlm_score_weight_base=0.35, vlm_score_weight_novel=0.65)
    det.vlm_softmax = softmax
    tokens, grid = OpenVocabDetector.patch_tokens(model, images)
    got = det.vlm_probs(model, tokens, torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]).expand(2, 1, 4), grid, text)[:, 0]
    scale, bias = model.scales()
    logits = scale * model.encode_image(images) @ text.t()
    torch.testing.assert_close(got, logits.softmax(-1) if softmax else (logits + bias).sigmoid(), atol=1e-5, rtol=1e-5)


def test_only_in_evaluation_with_a_weight_and_the_novel_mask():
    torch.manual_seed(0)
    model = MaMMUT(MaMMUTConfig.from_name("test")).eval()
    images, text, novel = torch.randn(1, 3, 32, 32), F.normalize(torch.randn(3, 32), dim=-1), torch.tensor([0, 0, 1]).bool()
    on = OpenVocabDetector(model, DetectionConfig(vlm_score_weight_base=0.35, vlm_score_weight_novel=0.65)).eval()
    out = on(model, images, text, novel)
    assert out["vlm"].shape == out["logits"].shape
    assert out["vlm_weight"].tolist() == pytest.approx([0.35, 0.35, 0.65])
    assert "vlm" not in on.train()(model, images, text, novel)
    off = OpenVocabDetector(model, DetectionConfig()).eval()
    assert "vlm" not in off(model, images, text, novel)
    with pytest.raises(ValueError, match="vlm_score_weight_novel"):
        DetectionConfig(vlm_score_weight_novel=1.5)
