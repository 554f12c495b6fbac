"""The model: pass masks, shared weights, cross-attention placement, decoding, CPE,
checked against a naive independent implementation where it matters."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mammut_pl.model import MaMMUT, MaMMUTConfig


def make(seed=0, **overrides):
    torch.manual_seed(seed)
    return MaMMUT(MaMMUTConfig.from_name("test", **overrides)).eval()


def tokens(B=3, T=10, vocab=128, lengths=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(3, vocab, (B, T), generator=g)
    t[:, 0] = 1
    for b, n in enumerate(lengths or [T] * B):
        t[b, n - 1] = 2
        t[b, n:] = 0
    return t


def images(B=3, seed=2):
    return torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_forward_shapes(tiny_cfg):
    m = make()
    out = m(images(), tokens())
    assert out["image_embed"].shape == (3, tiny_cfg.embed_dim)
    assert out["text_embed"].shape == (3, tiny_cfg.embed_dim)
    assert out["caption_logits"].shape == (3, 10, tiny_cfg.vocab_size)
    assert out["logit_scale"].shape == () and out["logit_bias"].shape == ()
    torch.testing.assert_close(out["image_embed"].norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(m.encode_image(images()), out["image_embed"])
    torch.testing.assert_close(m.encode_text(tokens()), out["text_embed"])


def test_disabled_passes_are_skipped():
    m = make()
    out = m(images(), tokens(), contrastive=False)
    assert out["text_embed"] is None and out["image_embed"] is None and out["caption_logits"] is not None
    out = m(images(), tokens(), generative=False)
    assert out["caption_logits"] is None and out["text_embed"] is not None


def test_contrastive_text_embedding_ignores_the_image():
    m = make()
    t = tokens()
    a = m(images(seed=3), t)["text_embed"]
    b = m(images(seed=4), t)["text_embed"]
    torch.testing.assert_close(a, b)
    # while the caption logits do depend on the image (cross-attention on)
    assert not torch.allclose(m(images(seed=3), t)["caption_logits"], m(images(seed=4), t)["caption_logits"])


def test_contrastive_pass_does_not_use_cross_attention_weights():
    m = make()
    t = tokens()
    before = m.encode_text(t)
    with torch.no_grad():
        for layer in m.text.layers:
            if layer.has_cross_attn:
                layer.cross_attn.q.weight.normal_()
                layer.cross_attn.kv.weight.normal_()
    torch.testing.assert_close(m.encode_text(t), before)


def test_padding_does_not_change_pooled_embedding():
    m = make()
    t = tokens(B=2, T=6)
    padded = torch.cat([t, torch.zeros(2, 5, dtype=torch.long)], 1)
    torch.testing.assert_close(m.encode_text(padded), m.encode_text(t), atol=1e-5, rtol=1e-5)
    # and a row's embedding does not depend on the other rows' lengths
    mixed = tokens(B=2, T=9, lengths=[9, 4])
    alone = m.encode_text(mixed[1:2, :4])
    torch.testing.assert_close(m.encode_text(mixed)[1:2], alone, atol=1e-5, rtol=1e-5)


def test_causal_logits_ignore_future_tokens():
    m = make()
    img, t = images(), tokens()
    t2 = t.clone()
    t2[:, 6:] = torch.randint(3, 128, t2[:, 6:].shape)
    a, b = m(img, t)["caption_logits"], m(img, t2)["caption_logits"]
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_both_passes_share_the_same_layers():
    m = make().train()
    img, t = images(), tokens()
    qkv = m.text.layers[0].self_attn.qkv.weight
    for kwargs in (dict(generative=False), dict(contrastive=False)):
        m.zero_grad()
        out = m(img, t, **kwargs)
        loss = out["text_embed"].sum() if out["text_embed"] is not None else out["caption_logits"].sum()
        loss.backward()
        assert qkv.grad is not None and qkv.grad.abs().sum() > 0, kwargs
    assert len(m.text.layers) == 4 and not hasattr(m, "text_encoder")


@pytest.mark.parametrize("placement, expected", [
    ("interleave", (1, 3)), ("top", (2, 3)), ("bottom", (0, 1)), ([0, 2], (0, 2)),
])
def test_cross_attention_placement(placement, expected):
    m = make(cross_attn_placement=placement)
    assert tuple(i for i, layer in enumerate(m.text.layers) if layer.has_cross_attn) == expected
    assert sum(hasattr(layer, "cross_attn") for layer in m.text.layers) == 2


@pytest.mark.parametrize("depth, m_, expected", [
    (12, 6, (1, 3, 5, 7, 9, 11)), (12, 1, (11,)), (12, 12, tuple(range(12))), (12, 0, ()), (12, 3, (3, 7, 11)),
])
def test_interleave_spreads_layers_evenly(depth, m_, expected):
    cfg = MaMMUTConfig(depth=depth, num_cross_attn=m_)
    assert cfg.cross_attn_layers == expected


@pytest.mark.parametrize("overrides, key", [
    (dict(num_cross_attn=5), "num_cross_attn"),  # M > N (N=4)
    (dict(heads=3), "heads"),  # 32 % 3
    (dict(cross_attn_placement="middle"), "cross_attn_placement"),
    (dict(cross_attn_placement=[0, 0]), "cross_attn_placement"),
    (dict(cross_attn_placement=[0, 9]), "cross_attn_placement"),
    (dict(cross_attn_placement=[0]), "cross_attn_placement"),  # length != M
    (dict(pad_id=1), "pad_id"),  # == bos
    (dict(vocab_size=0), "vocab_size"),
])
def test_config_rejects_impossible_values(overrides, key):
    with pytest.raises(ValueError, match=f"model.{key}"):
        MaMMUTConfig.from_name("test", **overrides)


def test_image_size_must_be_divisible_by_patch():
    with pytest.raises(ValueError, match="model.image_size"):
        MaMMUT(MaMMUTConfig.from_name("test", image_size=40))


def test_unknown_encoder_named():
    with pytest.raises(ValueError, match="model.encoder"):
        MaMMUT(MaMMUTConfig.from_name("test", encoder="vit_nonexistent_xyz"))


# --- an independent, naive re-implementation of the decoder --------------------------------
def naive_attention(q, k, v, allowed):
    """Explicit softmax(QK^T / sqrt(d)) V with a boolean mask, head by head."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(-1) @ v


def naive_decoder(m, toks, image_tokens=None):
    cfg = m.config
    h = cfg.heads
    real = toks != cfg.pad_id
    T = toks.shape[1]
    x = m.text.token_embed.weight[toks] + m.text.pos_embed[:T]
    causal = image_tokens is not None
    mem = m.image_to_text(image_tokens) if causal else None

    def heads(z):
        B, L, W = z.shape
        return z.view(B, L, h, W // h).transpose(1, 2)

    for layer in m.text.layers:
        y = F.layer_norm(x, (cfg.width,), layer.ln_self.weight, layer.ln_self.bias)
        W = layer.self_attn.qkv.weight
        bq = layer.self_attn.qkv.bias
        q, k, v = (heads(y @ W[i * cfg.width:(i + 1) * cfg.width].t() + bq[i * cfg.width:(i + 1) * cfg.width]) for i in range(3))
        if causal:
            allowed = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
        else:
            allowed = real[:, None, None, :]
        a = naive_attention(q, k, v, allowed).transpose(1, 2).reshape(x.shape)
        x = x + layer.self_attn.proj(a)
        if causal and layer.has_cross_attn:
            y = layer.ln_cross(x)
            q = heads(layer.cross_attn.q(y))
            kv = mem @ layer.cross_attn.kv.weight.t() + layer.cross_attn.kv.bias
            k, v = heads(kv[..., : cfg.width]), heads(kv[..., cfg.width:])
            a = naive_attention(q, k, v, torch.ones(1, 1, T, mem.shape[1], dtype=torch.bool))
            x = x + layer.cross_attn.proj(a.transpose(1, 2).reshape(x.shape))
        y = layer.ln_mlp(x)
        x = x + layer.mlp.proj(F.gelu(layer.mlp.fc(y), approximate="tanh"))
    return x


def test_contrastive_pass_matches_naive_reference():
    m = make()
    t = tokens(lengths=[10, 5, 7])
    x = m.text.ln_contrastive(naive_decoder(m, t))
    w = (t != 0).float().unsqueeze(-1)
    ref = F.normalize(m.text.text_proj((x * w).sum(1) / w.sum(1)), dim=-1)
    torch.testing.assert_close(m.encode_text(t), ref, atol=1e-5, rtol=1e-4)


def test_caption_pass_matches_naive_reference():
    m = make()
    img, t = images(), tokens()
    image_tokens = m.image_tokens(img)
    x = m.text.ln_caption(naive_decoder(m, t, image_tokens))
    ref = x @ m.text.token_embed.weight.t()
    torch.testing.assert_close(m(img, t)["caption_logits"], ref, atol=1e-4, rtol=1e-4)


# --- decoding --------------------------------------------------------------------------------
def sharpen(m):
    """A random model repeats one token forever; sharper logits give varied sequences."""
    with torch.no_grad():
        m.text.token_embed.weight.mul_(8)
    return m


def test_generate_cache_equals_no_cache():
    m = sharpen(make())
    img = images(4)
    prompts = torch.tensor([[1, 5, 6, 0], [1, 7, 0, 0], [1, 5, 6, 9], [1, 0, 0, 0]])
    for p in (None, prompts):
        a = m.generate(img, prompt_tokens=p, max_new_tokens=8, use_cache=True)
        b = m.generate(img, prompt_tokens=p, max_new_tokens=8, use_cache=False)
        assert torch.equal(a, b)


def test_batched_prompts_equal_one_by_one():
    m = sharpen(make())
    img = images(3)
    prompts = torch.tensor([[1, 5, 6, 0], [1, 7, 0, 0], [1, 5, 6, 9]])
    batched = m.generate(img, prompt_tokens=prompts, max_new_tokens=6)
    for b in range(3):
        n = int((prompts[b] != 0).sum())
        alone = m.generate(img[b:b + 1], prompt_tokens=prompts[b:b + 1, :n], max_new_tokens=6)
        assert torch.equal(batched[b, : alone.shape[1]], alone[0])


def test_greedy_matches_stepwise_argmax_of_forward():
    m = sharpen(make())
    img = images(2)
    out = m.generate(img, max_new_tokens=5)
    seq = torch.full((2, 1), 1)
    for t in range(5):
        logits = m(img, seq)["caption_logits"][:, -1]
        logits[:, :2] = -math.inf
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
    for b in range(2):
        row = seq[b, 1:]
        ends = (row == 2).nonzero()
        n = int(ends[0]) + 1 if len(ends) else 5
        assert torch.equal(out[b, :n], row[:n])
        assert (out[b, n:] == 0).all()


@pytest.mark.parametrize("seed", [0, 2])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_search_finds_the_exhaustive_best(seed, length_penalty):
    """Tiny vocabulary: enumerate every sequence; a beam as wide as all prefixes is exact."""
    torch.manual_seed(seed)
    m = MaMMUT(MaMMUTConfig.from_name("test", vocab_size=6)).eval()
    with torch.no_grad():
        m.text.token_embed.weight.mul_(2)
    img = images(2)
    L = 3
    out = m.generate(img, max_new_tokens=L, num_beams=16, length_penalty=length_penalty)
    for b in range(2):
        best, best_seq = -math.inf, None
        for n in range(1, L + 1):
            for seq in itertools.product(range(2, 6), repeat=n):  # never pad (0) or begin (1)
                if 2 in seq[:-1] or (n < L and seq[-1] != 2):
                    continue  # eos only at the end; shorter ones must end with eos
                full = torch.tensor([[1, *seq]])
                logits = m(img[b:b + 1], full)["caption_logits"][0, :-1]
                logits[:, :2] = -math.inf
                logp = logits.log_softmax(-1)
                score = logp.gather(1, full[0, 1:, None]).sum().item() / n ** length_penalty
                if score > best:
                    best, best_seq = score, seq
        got = [t for t in out[b].tolist() if t != 0]
        assert got == list(best_seq)


def test_one_beam_without_length_penalty_is_greedy():
    m = sharpen(make())
    img = images(3)
    assert torch.equal(m.generate(img, max_new_tokens=6, num_beams=1),
                       m.generate(img, max_new_tokens=6, num_beams=1, use_cache=False))
    greedy = m.generate(img, max_new_tokens=6)
    beam1 = m.generate(img, max_new_tokens=6, num_beams=1, length_penalty=0.0)
    assert torch.equal(greedy, beam1)


def test_generate_rejects_overlong_prompt():
    m = make()
    with pytest.raises(ValueError, match="context_length"):
        m.generate(images(1), prompt_tokens=torch.ones(1, 16, dtype=torch.long), max_new_tokens=3)


# --- cropped positional embeddings -------------------------------------------------------------
def test_cpe_only_in_training_and_only_when_enabled():
    m = make(cropped_pos_embed=True, cpe_grid=8)
    img = images(2)
    torch.testing.assert_close(m.encode_image(img), m.encode_image(img))  # eval: deterministic
    m.train()
    a, b = m.encode_image(img), m.encode_image(img)
    assert not torch.allclose(a, b)  # random crops
    m2 = make(cropped_pos_embed=False).train()
    torch.testing.assert_close(m2.encode_image(img), m2.encode_image(img))


def test_cpe_grid_zero_outside_the_loader_is_refused():
    m = make(cropped_pos_embed=True).train()  # cpe_grid=0: derived by the config loader only
    with pytest.raises(ValueError, match="model.cpe_grid=0"):
        m.encode_image(images(1))


def test_cpe_full_crop_is_upsample_then_resize(monkeypatch):
    """With the whole grid as the crop, CPE = upsample to cpe_grid, then resize back."""
    m = make(cropped_pos_embed=True, cpe_grid=8, cpe_scale_min=1.0, cpe_scale_max=1.0,
             cpe_ratio_min=1.0, cpe_ratio_max=1.0)
    pos = m.visual.grid_pos_embed().permute(0, 3, 1, 2)  # (1, C, 2, 2)
    big = F.interpolate(pos, size=(8, 8), mode="bilinear", align_corners=False)
    ref = F.interpolate(big, size=m.visual.grid, mode="bilinear", align_corners=False)
    got = m.visual.cropped_pos_embed(3)
    for b in range(3):
        torch.testing.assert_close(got[b], ref[0].permute(1, 2, 0), atol=1e-5, rtol=1e-5)


def test_cpe_crop_region_matches_manual_crop(monkeypatch):
    """A quarter-area crop in the top-left corner equals slicing the upsampled grid."""
    m = make(cropped_pos_embed=True, cpe_grid=8, cpe_scale_min=0.25, cpe_scale_max=0.25,
             cpe_ratio_min=1.0, cpe_ratio_max=1.0)
    monkeypatch.setattr(torch, "rand", lambda n, device=None: torch.zeros(n))  # -> corner at (0, 0)
    got = m.visual.cropped_pos_embed(1)[0]  # (2, 2, C)
    pos = m.visual.grid_pos_embed().permute(0, 3, 1, 2)
    big = F.interpolate(pos, size=(8, 8), mode="bilinear", align_corners=False)
    # rand=0 puts the crop's corner at (0, 0): it covers the top-left 4x4 of the 8x8 grid
    ref = F.interpolate(big[:, :, :4, :4], size=(2, 2), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, ref[0].permute(1, 2, 0), atol=1e-5, rtol=1e-5)


def test_other_resolution_resamples_positions():
    m = make()
    out = m.image_tokens(torch.randn(1, 3, 64, 64))
    assert out.shape[1] == 1 + 16  # class token + 4x4 patches
