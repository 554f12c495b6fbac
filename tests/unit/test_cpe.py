"""Cropped positional embeddings: the crop is drawn by RandomResizedCrop's rule, as RO-ViT does
(area ~ U(scale), log aspect ~ U(log ratio), redrawn when it does not fit, at most 10 times, then the
whole grid), checked against an independent rejection sampler by two-sample KS tests; and cpe_grid
derived from the detection grid by the config loader."""

import math
import random

import pytest
import torch
from scipy.stats import ks_2samp

from mammut_pl import config as C
from mammut_pl.model.encoder import sample_crop_boxes

SCALE, RATIO, N = (0.1, 1.0), (0.5, 2.0), 20000


def reference_crops(n, scale=SCALE, ratio=RATIO, attempts=10, seed=0):
    """RandomResizedCrop's rule on the unit square, one crop at a time with Python's random."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        for _ in range(attempts):
            area = rng.uniform(*scale)
            aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
            w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
            if w <= 1 and h <= 1:
                break
        else:
            w = h = 1.0
        out.append((rng.uniform(0, 1 - w), rng.uniform(0, 1 - h), w, h))
    return torch.tensor(out, dtype=torch.float64)


def clamped_crops(n, seed=0):
    """The rule the suite used before: width / height clamped to 1 instead of redrawn."""
    g = torch.Generator().manual_seed(seed)
    area = torch.empty(n).uniform_(*SCALE, generator=g)
    aspect = torch.empty(n).uniform_(math.log(RATIO[0]), math.log(RATIO[1]), generator=g).exp()
    w, h = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)
    return torch.stack([torch.rand(n, generator=g) * (1 - w), torch.rand(n, generator=g) * (1 - h), w, h], -1)


def stats(boxes):
    x0, y0, w, h = boxes.double().unbind(-1)
    return {"area": w * h, "log_aspect": (w / h).log(), "x0": x0, "y1": y0 + h}


def test_crop_distribution_matches_random_resized_crop():
    torch.manual_seed(0)
    got, ref = stats(sample_crop_boxes(N, SCALE, RATIO)), stats(reference_crops(N))
    for key in got:
        assert ks_2samp(got[key].numpy(), ref[key].numpy()).pvalue > 1e-3, key
    assert (got["area"].mean() - ref["area"].mean()).abs() < 0.01
    assert ref["area"].mean() == pytest.approx(0.43, abs=0.01)  # vs 0.55 from the range alone
    boxes = sample_crop_boxes(N, SCALE, RATIO)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 1 + 1e-6).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= 1 + 1e-6).all()


def test_the_ks_check_rejects_the_old_clamped_rule():
    """The test above can fail: the clamped draw's area is far off the reference's."""
    old, ref = stats(clamped_crops(N)), stats(reference_crops(N))
    assert ks_2samp(old["area"].numpy(), ref["area"].numpy()).pvalue < 1e-6
    assert old["area"].mean() > ref["area"].mean() + 0.05


def test_whole_grid_when_no_draw_fits():
    """Areas of at least 0.9 at aspect 2 never fit (w = sqrt(1.8) > 1): every attempt fails."""
    boxes = sample_crop_boxes(50, (0.9, 1.0), (2.0, 2.0))
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(50, 4))


@pytest.mark.parametrize("overrides, grid", [
    ([], 1024 // 16),  # vit_base_patch16_224 at detection.image_size 1024
    (["model.encoder=vit_base_patch32_224"], 1024 // 32),
    (["model.encoder_kwargs={patch_size: 8}", "detection.image_size=96"], 12),
    (["model.cpe_grid=20"], 20),  # set explicitly: kept
])
def test_cpe_grid_derived_from_detection_grid(overrides, grid):
    assert C.load("", overrides).model.cpe_grid == grid


def test_paper_recipe_pretrains_with_cpe():
    cfg = C.load("pretrain")
    assert cfg.model.cropped_pos_embed and cfg.model.cpe_grid == 64
    assert C.load("lvis").model.cpe_grid == 12  # the demo detection grid: 96 px / patch 8
