"""The packed training forward (padding skipped, both passes stacked, logits only at
real targets) computes the same losses and gradients as the plain padded forward."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mammut_pl.losses import CaptionLoss, FocalContrastiveLoss
from mammut_pl.model import MaMMUT, MaMMUTConfig
from mammut_pl.model.packing import Packing, caption_targets


def make(seed=0, **overrides):
    torch.manual_seed(seed)
    return MaMMUT(MaMMUTConfig.from_name("test", **overrides)).train()


def ragged_tokens(lengths=(10, 5, 7, 3), T=10, inner_pad=True, seed=1):
    """Right-padded rows of different lengths; row 1 holds an inner pad id (CLIP's "!" is id 0)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(3, 128, (len(lengths), T), generator=g)
    t[:, 0] = 1
    for b, n in enumerate(lengths):
        t[b, n - 1] = 2
        t[b, n:] = 0
    if inner_pad:
        t[1, 2] = 0
    return t


def images(B=4, seed=2):
    return torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def losses(m, img, t, packed, contrastive=True, generative=True):
    out = m(img, t, contrastive=contrastive, generative=generative, packed=packed)
    total, parts = 0.0, {}
    if contrastive:
        parts["con"] = FocalContrastiveLoss()(out["image_embed"], out["text_embed"], out["logit_scale"], out["logit_bias"])
        total = total + parts["con"]
    if generative:
        if packed:
            parts["cap"] = F.cross_entropy(out["caption_logits"], out["caption_targets"])
        else:
            parts["cap"] = CaptionLoss(0)(out["caption_logits"], t)
        total = total + parts["cap"]
    m.zero_grad()
    total.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in parts.items()}, out, grads


@pytest.mark.parametrize("contrastive,generative", [(True, True), (True, False), (False, True)])
def test_packed_losses_and_gradients_equal_padded(contrastive, generative):
    m, img, t = make(), images(), ragged_tokens()
    a, out_a, ga = losses(m, img, t, False, contrastive, generative)
    b, out_b, gb = losses(m, img, t, True, contrastive, generative)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-5)
    if contrastive:
        torch.testing.assert_close(out_b["text_embed"], out_a["text_embed"], atol=1e-5, rtol=1e-5)
    assert ga.keys() == gb.keys()
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], atol=1e-5, rtol=1e-4, msg=name)


def test_packed_logits_are_the_full_logits_at_the_target_positions():
    m, img, t = make().eval(), images(), ragged_tokens()
    full = m(img, t)
    packed = m(img, t, packed=True)
    keep = t[:, 1:] != 0  # positions whose next token is real
    torch.testing.assert_close(packed["caption_logits"], full["caption_logits"][:, :-1][keep], atol=1e-5, rtol=1e-5)
    assert torch.equal(packed["caption_targets"], t[:, 1:][keep])
    assert full["caption_targets"] is None


def test_packed_matches_padded_with_label_smoothing_and_extra_padding():
    m, img = make(), images()
    t = ragged_tokens()
    wider = torch.cat([t, torch.zeros(4, 6, dtype=torch.long)], 1)  # more padding changes nothing
    out = m(img, wider, packed=True)
    ref = m(img, t)
    smooth = F.cross_entropy(out["caption_logits"], out["caption_targets"], label_smoothing=0.1)
    torch.testing.assert_close(smooth, CaptionLoss(0, label_smoothing=0.1)(ref["caption_logits"], t), atol=1e-5, rtol=1e-5)


def test_packing_keeps_inner_pad_ids_and_drops_trailing_padding():
    t = torch.tensor([[1, 5, 0, 6, 2, 0, 0], [1, 2, 0, 0, 0, 0, 0]])
    p = Packing(t, pad_id=0)
    assert p.index.tolist() == [0, 1, 2, 3, 4, 7, 8]  # row 0 up to its eos (inner 0 kept), row 1: bos, eos
    x = torch.arange(14.0).view(2, 7, 1)
    assert torch.equal(p.unpack(p.pack(x)), x * torch.tensor([1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0.0]).view(2, 7, 1))
    positions, targets = caption_targets(t, pad_id=0)
    assert positions.tolist() == [0, 2, 3, 7]  # next token real: 5, 6, 2 in row 0; 2 in row 1
    assert targets.tolist() == [5, 6, 2, 2]


def test_pretrain_task_losses_equal_the_padded_formulas():
    from mammut_pl.tasks.pretrain import PretrainTask

    cfg = dataclasses.asdict(MaMMUTConfig.from_name("test"))
    torch.manual_seed(0)
    task = PretrainTask({"model": cfg, "loss": {"label_smoothing": 0.1}})
    img, t = images(), ragged_tokens()
    got = task.losses(img, t)
    out = task.model(img, t)
    con = task.contrastive_loss(out["image_embed"], out["text_embed"], out["logit_scale"], out["logit_bias"])
    cap = task.caption_loss(out["caption_logits"], t)
    torch.testing.assert_close(got["contrastive_loss"], con, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["caption_loss"], cap, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["loss"], con + cap, atol=1e-5, rtol=1e-5)
