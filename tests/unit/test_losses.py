"""Losses: hand-worked cases, open_clip as an independent reference, and the 2-rank
(gloo) run equal to one process on the concatenated batch."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mammut_pl.losses import (CaptionLoss, FocalContrastiveLoss, SigmoidContrastiveLoss, global_batch_mean,
                              SoftmaxContrastiveLoss, build_contrastive_loss)


def embeds(B=6, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(B, D, generator=g), dim=-1),
            F.normalize(torch.randn(B, D, generator=g), dim=-1))


def test_focal_hand_worked_2x2():
    # cosine sims [[1, 0], [0, 1]] with scale 2, bias -1 -> logits [[1, -1], [-1, 1]]
    img = torch.eye(2)
    txt = torch.eye(2)
    gamma = 2.0
    loss = FocalContrastiveLoss(gamma)(img, txt, torch.tensor(2.0), torch.tensor(-1.0))
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    p_pos = sig(1.0)  # matching pair, p = sigmoid(1)
    p_neg = 1 - sig(-1.0)  # non-matching pair, p = 1 - sigmoid(-1)
    per_pair = lambda p: -((1 - p) ** gamma) * math.log(p)  # noqa: E731
    expected = (2 * per_pair(p_pos) + 2 * per_pair(p_neg)) / 2  # sum over 4 pairs / B
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_focal_with_gamma_zero_is_sigmoid():
    img, txt = embeds()
    s, b = torch.tensor(7.0), torch.tensor(-3.0)
    torch.testing.assert_close(FocalContrastiveLoss(0.0)(img, txt, s, b), SigmoidContrastiveLoss()(img, txt, s, b))
    assert FocalContrastiveLoss(2.0)(img, txt, s, b) < SigmoidContrastiveLoss()(img, txt, s, b)


def test_focal_downweights_easy_pairs():
    # an easy negative (very negative logit) contributes far less with gamma > 0
    loss = FocalContrastiveLoss(2.0)
    logits = torch.tensor([[-8.0]])
    pos = torch.tensor([[False]])
    easy = loss.pair_losses(logits, pos).item()
    assert easy < 1e-6 < SigmoidContrastiveLoss().pair_losses(logits, pos).item()


def rovit_focal_reference(logits, alpha=0.5, gamma=1.0):
    """RO-ViT's compute_focal_contrastive_loss (google-research fvlm/rovit), transcribed in plain
    Python from its formula: targets = the diagonal, stable sigmoid cross-entropy
    max(l, 0) - l * y + log(1 + exp(-|l|)), modulator exp(gamma * y * (-l) - gamma * softplus(-l)),
    2 * (alpha if y else 1 - alpha) weights, summed (no normalisation)."""
    softplus = lambda z: max(z, 0.0) + math.log1p(math.exp(-abs(z)))  # noqa: E731
    total = 0.0
    for i, row in enumerate(logits):
        for j, l in enumerate(row):
            y = 1.0 if i == j else 0.0
            ce = max(l, 0.0) - l * y + math.log(1 + math.exp(-abs(l)))
            modulator = math.exp(gamma * y * -l - gamma * softplus(-l))
            total += 2 * (alpha if y == 1.0 else 1 - alpha) * modulator * ce
    return total


@pytest.mark.parametrize("alpha,gamma", [(0.5, 1.0), (0.25, 2.0), (0.7, 0.0)])
def test_focal_matches_rovit_reference_formula(alpha, gamma):
    """The suite's loss = the reference's sum over the B x B pairs / B (the suite normalises by B)."""
    img, txt = embeds(B=3, D=4, seed=3)
    s, b = torch.tensor(5.0), torch.tensor(-2.0)
    logits = (s * img @ txt.t() + b).tolist()
    got = FocalContrastiveLoss(gamma, alpha)(img, txt, s, b)
    assert got.item() == pytest.approx(rovit_focal_reference(logits, alpha, gamma) / 3, rel=1e-5)


def test_focal_default_is_rovit_reference():
    """Defaults (typed config and the builder): gamma 1, alpha 0.5, as RO-ViT's reference."""
    from mammut_pl.config import LossConfig

    assert (LossConfig().focal_gamma, LossConfig().focal_alpha) == (1.0, 0.5)
    loss = build_contrastive_loss("focal")
    logits = [[1.5, -0.5], [0.3, 2.0]]  # by hand: 2 x 2 logits given directly to pair_losses
    pos = torch.eye(2, dtype=torch.bool)
    got = loss.pair_losses(torch.tensor(logits), pos).sum().item()
    assert got == pytest.approx(rovit_focal_reference(logits), rel=1e-5)


def test_sigmoid_matches_open_clip():
    from open_clip.loss import SigLipLoss

    img, txt = embeds()
    s, b = torch.tensor(10.0), torch.tensor(-10.0)
    ref = SigLipLoss()(img, txt, s, b)
    torch.testing.assert_close(SigmoidContrastiveLoss()(img, txt, s, b), ref)


def test_softmax_matches_open_clip():
    from open_clip.loss import ClipLoss

    img, txt = embeds()
    s = torch.tensor(14.3)
    torch.testing.assert_close(SoftmaxContrastiveLoss()(img, txt, s), ClipLoss()(img, txt, s))


def test_caption_loss_ignores_padding_and_masks_targets():
    V = 5
    logits = torch.randn(2, 4, V)
    tokens = torch.tensor([[1, 3, 2, 0], [1, 4, 4, 2]])
    # reference: explicit list of (logit row, target) pairs
    pairs = [(0, 0, 3), (0, 1, 2), (1, 0, 4), (1, 1, 4), (1, 2, 2)]
    ref = torch.stack([F.cross_entropy(logits[b, t][None], torch.tensor([y])) for b, t, y in pairs]).mean()
    torch.testing.assert_close(CaptionLoss(pad_id=0)(logits, tokens), ref)
    # only answer tokens (positions >= 2) count
    mask = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    pairs = [(0, 1, 2), (1, 1, 4), (1, 2, 2)]
    ref = torch.stack([F.cross_entropy(logits[b, t][None], torch.tensor([y])) for b, t, y in pairs]).mean()
    torch.testing.assert_close(CaptionLoss(pad_id=0)(logits, tokens, mask), ref)


def test_unknown_loss_named():
    with pytest.raises(ValueError, match="loss.contrastive"):
        build_contrastive_loss("hinge")


# --- data parallel: 2 gloo ranks == 1 process on the concatenated batch -----------------------
def _rank_main(rank, world, kind, out):
    from tests.helpers.ddp_group import gloo_group

    with gloo_group(rank, world, Path(out).parent):
        _two_rank_loss(rank, world, kind, out)


def _two_rank_loss(rank, world, kind, out):
    import torch.distributed as dist

    torch.manual_seed(0)
    proj = torch.nn.Linear(8, 8)  # a shared "model": gradients are what DDP averages
    scale = torch.nn.Parameter(torch.tensor(5.0))
    bias = torch.nn.Parameter(torch.tensor(-2.0))
    img, txt = embeds(B=8)
    b = 8 // world
    sl = slice(rank * b, (rank + 1) * b)
    loss_fn = build_contrastive_loss(kind, 2.0)
    loss = loss_fn(F.normalize(proj(img[sl]), dim=-1), F.normalize(proj(txt[sl]), dim=-1), scale, bias)
    loss.backward()
    grads = [proj.weight.grad, proj.bias.grad, scale.grad] + ([bias.grad] if bias.grad is not None else [])
    for g in grads:  # what DDP does: average over ranks
        dist.all_reduce(g)
        g /= world
    value = loss.detach().clone()
    dist.all_reduce(value)
    if rank == 0:
        torch.save({"loss": value / world, "grads": grads}, out)


@pytest.mark.ddp
@pytest.mark.parametrize("kind", ["focal", "sigmoid", "softmax"])
def test_two_ranks_equal_one_process(kind, tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "ddp.pt"
    mp.spawn(_rank_main, args=(2, kind, str(out)), nprocs=2, join=True)
    got = torch.load(out)
    # one process, whole batch
    torch.manual_seed(0)
    proj = torch.nn.Linear(8, 8)
    scale = torch.nn.Parameter(torch.tensor(5.0))
    bias = torch.nn.Parameter(torch.tensor(-2.0))
    img, txt = embeds(B=8)
    loss = build_contrastive_loss(kind, 2.0)(F.normalize(proj(img), dim=-1), F.normalize(proj(txt), dim=-1), scale, bias)
    loss.backward()
    torch.testing.assert_close(got["loss"], loss.detach())
    ref = [proj.weight.grad, proj.bias.grad, scale.grad] + ([bias.grad] if bias.grad is not None else [])
    assert len(ref) == len(got["grads"])
    for g, r in zip(got["grads"], ref):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)


def _token_mean_rank_main(rank, world, out):
    """Rank r holds a different number of answer/caption tokens (3 vs 7): the DDP-averaged
    gradient of global_batch_mean must be the gradient of the mean over all 10 tokens."""
    from tests.helpers.ddp_group import gloo_group

    with gloo_group(rank, world, Path(out).parent):
        _token_mean(rank, world, out)


def _token_mean(rank, world, out):
    import torch.distributed as dist

    torch.manual_seed(0)
    head = torch.nn.Linear(4, 5)
    x, y = torch.randn(10, 4), torch.randint(0, 5, (10,))
    sl = slice(0, 3) if rank == 0 else slice(3, 10)
    total = F.cross_entropy(head(x[sl]), y[sl], reduction="sum")
    global_batch_mean(total, y[sl].numel()).backward()
    for g in (head.weight.grad, head.bias.grad):
        dist.all_reduce(g)
        g /= world
    if rank == 0:
        torch.save([head.weight.grad, head.bias.grad], out)


@pytest.mark.ddp
def test_token_mean_over_uneven_ranks_equals_the_global_mean(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "ddp.pt"
    mp.spawn(_token_mean_rank_main, args=(2, str(out)), nprocs=2, join=True)
    got = torch.load(out)
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 5)
    x, y = torch.randn(10, 4), torch.randint(0, 5, (10,))
    F.cross_entropy(head(x), y).backward()  # the mean over every token of the global batch
    for g, r in zip(got, (head.weight.grad, head.bias.grad)):
        torch.testing.assert_close(g, r)
    # a per-rank mean (what DDP gives without global_batch_mean) would differ here
    per_rank = [F.cross_entropy(head(x[s]), y[s]) for s in (slice(0, 3), slice(3, 10))]
    assert not torch.allclose(sum(per_rank) / 2, F.cross_entropy(head(x), y))


def test_packed_caption_loss_equals_caption_loss_on_the_full_logits():
    """The packed form (only positions whose next token is real) = CaptionLoss over (B, T, V)."""
    from mammut_pl.losses import packed_caption_loss

    g = torch.Generator().manual_seed(0)
    pad = 0
    tokens = torch.tensor([[5, 7, 9, 3, pad, pad], [4, 8, 2, 6, 1, 3]])
    logits = torch.randn(2, 6, 11, generator=g)
    targets = tokens[:, 1:]
    keep = targets != pad  # (B, T-1): the positions the packed pass computes
    for smoothing in (0.0, 0.1):
        want = CaptionLoss(pad, label_smoothing=smoothing)(logits, tokens)
        got = packed_caption_loss(logits[:, :-1][keep], targets[keep], smoothing)
        torch.testing.assert_close(got, want)


def test_mammut_loss_is_the_weighted_sum_and_skips_zero_weights():
    from mammut_pl.losses import mammut_loss

    g = torch.Generator().manual_seed(1)
    out = {"image_embed": F.normalize(torch.randn(4, 8, generator=g), dim=-1),
           "text_embed": F.normalize(torch.randn(4, 8, generator=g), dim=-1),
           "logit_scale": torch.tensor(10.0), "logit_bias": torch.tensor(-5.0),
           "caption_logits": torch.randn(9, 13, generator=g), "caption_targets": torch.randint(0, 13, (9,), generator=g)}
    con_fn = SoftmaxContrastiveLoss()
    con = con_fn(out["image_embed"], out["text_embed"], out["logit_scale"], out["logit_bias"])
    cap = F.cross_entropy(out["caption_logits"], out["caption_targets"])
    both = mammut_loss(out, con_fn, 0.3, 2.0)
    torch.testing.assert_close(both["loss"], 0.3 * con + 2.0 * cap)
    torch.testing.assert_close(both["caption_loss"], cap)
    only_caption = mammut_loss(out, con_fn, 0.0, 1.0)
    assert "contrastive_loss" not in only_caption
    torch.testing.assert_close(only_caption["loss"], cap)
