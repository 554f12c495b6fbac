"""Sparse tubes (mammut_pl.model.video) against independent references: the image encoder itself,
hand-worked inflation, a brute-force sin-cos formula, and per-frame encoding done frame by frame."""

import math

import pytest
import torch
from torch.testing import assert_close

from mammut_pl import config as C
from mammut_pl.model import MaMMUT, MaMMUTConfig
from mammut_pl.tasks import load_config
from mammut_pl.model.video import (
    SparseTubes,
    TubeSpec,
    VideoConfig,
    VideoMaMMUT,
    count_tokens,
    encoder_flops,
    inflate_patch_weight,
    sincos_3d,
)

# test preset: test_vit (patch 16, width 64) on 32 px images: a 2 x 2 grid per frame
CFG = MaMMUTConfig.from_name("test")
TUBES = ["2x16x16 2x16x16 0x0x0", "4x8x8 4x8x8 0x8x8", "1x16x16 1x16x16 1x0x0"]


def model(**video) -> VideoMaMMUT:
    torch.manual_seed(0)
    return VideoMaMMUT(CFG, VideoConfig(**{"tube_specs": TUBES, "frame_stride": 2, **video})).eval()


def test_sincos_3d_matches_the_formula_element_by_element():
    dim = 64  # not a multiple of 6: 20 channels per axis, 4 zero channels
    t, y, x = torch.tensor([0.0, 3.0, 1.5]), torch.tensor([0.0, 1.0, -2.0]), torch.tensor([2.0, 0.0, 7.25])
    got = sincos_3d(t, y, x, dim)
    d = 2 * (dim // 6)
    for n in range(3):
        expected = []
        for coord in (t[n].item(), y[n].item(), x[n].item()):
            expected += [math.sin(coord / 10000 ** (i / (d // 2))) for i in range(d // 2)]
            expected += [math.cos(coord / 10000 ** (i / (d // 2))) for i in range(d // 2)]
        expected += [0.0] * (dim - 3 * d)
        assert_close(got[n], torch.tensor(expected), atol=1e-6, rtol=0)


@torch.no_grad()
def test_gate_at_init_a_one_frame_clip_is_the_image_model():
    m = model(tubes=False, frame_stride=1)
    images = torch.randn(3, 3, 32, 32)
    image_out = m.visual(images)
    assert_close(m.image_tokens(images[:, None]), image_out)  # (B, 1, 3, H, W): the video path
    assert_close(m.encode_image(images[:, None]), m.encode_image(images))
    # the reference can fail: an open gate, or no gate at all, changes the tokens
    m.video.gate.fill_(0.5)
    assert not torch.allclose(m.image_tokens(images[:, None]), image_out, atol=1e-4)
    ungated = model(tubes=False, frame_stride=1, gated_connection=False)
    ungated.load_state_dict(m.state_dict())
    assert not torch.allclose(ungated.image_tokens(images[:, None]), image_out, atol=1e-4)
    # without the fixed embedding, any gate value leaves the image model unchanged
    no_fixed = model(tubes=False, frame_stride=1, fixed_pos_embed=False)
    no_fixed.load_state_dict(m.state_dict())
    assert_close(no_fixed.image_tokens(images[:, None]), image_out)


def test_inflation_by_hand():
    # one output channel, one input channel with weights 1 2 / 3 4, the others 0
    w = torch.zeros(1, 3, 2, 2)
    w[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    w3 = inflate_patch_weight(w, (2, 2, 2))
    assert w3.shape == (1, 3, 2, 2, 2)
    assert_close(w3[0, 0, 0], torch.tensor([[0.5, 1.0], [1.5, 2.0]]))  # divided by kt = 2
    assert_close(w3[0, 0, 1], w3[0, 0, 0])
    # a static 2-frame clip with pixels 1 1 / 1 1: 2 x (0.5 + 1 + 1.5 + 2) = 10 = the 2D output
    clip = torch.ones(1, 3, 2, 2, 2)
    assert torch.nn.functional.conv3d(clip, w3).item() == pytest.approx(10.0)
    # a resized kernel (4 x 4) keeps each kernel's sum: a uniform patch gives the same output
    w4 = inflate_patch_weight(w, (3, 4, 4))
    assert w4[0, 0].sum().item() == pytest.approx(10.0)


@torch.no_grad()
def test_inflated_tube_over_a_static_clip_equals_the_2d_projection():
    m = model()
    frame = torch.randn(2, 3, 32, 32)
    static = frame[:, None].expand(-1, 8, -1, -1, -1)  # (B, T, 3, H, W), the same frame 8 times
    conv = m.video.tubes[0]  # kernel 2x16x16, stride 2x16x16: the 2D patch grid, 2 frames deep
    got = conv(static.transpose(1, 2))  # (B, C, 4, 2, 2)
    want = m.visual.vit.patch_embed.proj(frame)  # (B, C, 2, 2)
    for t in range(got.shape[2]):
        assert_close(got[:, :, t], want, atol=1e-5, rtol=1e-5)
    # a uniform frame through the resized 8 x 8 kernel: the 2D output too
    flat = torch.full((1, 3, 32, 32), 0.3)
    tube8 = m.video.tubes[1](flat[:, :, None].expand(-1, -1, 8, -1, -1))
    assert_close(tube8[0, :, 0, 0, 0], m.visual.vit.patch_embed.proj(flat)[0, :, 0, 0], atol=1e-5, rtol=1e-5)
    # moving content: the tube sees the average over its frames, no longer one frame
    moving = torch.stack([frame, frame.roll(8, -1)], 1).repeat(1, 4, 1, 1, 1)
    assert not torch.allclose(conv(moving.transpose(1, 2))[:, :, 0], want, atol=1e-3)


@torch.no_grad()
def test_token_counts_and_switches():
    clip = torch.randn(2, 8, 3, 32, 32)
    full = model()
    frames_only = model(tubes=False)
    n_full, n_frames = full.image_tokens(clip).shape[1], frames_only.image_tokens(clip).shape[1]
    P = 1  # test_vit's class token
    # frames 0, 2, 4, 6 (4 x 4 tokens); tubes: 4 x (2 x 2) + 2 x (3 x 3: 8 px kernels from pixel 8) + 7 x (2 x 2)
    assert n_frames - P == 4 * 4 == count_tokens(frames_only.video_config, 8, 32, 16)
    assert n_full - P == 16 + 16 + 2 * 3 * 3 + 7 * 4 == count_tokens(full.video_config, 8, 32, 16)
    assert len(frames_only.video.tubes) == 0 and len(full.video.tubes) == 3
    assert TubeSpec.parse("8x8x8 16x32x32").offset == (0, 0, 0)
    # gradients reach the gate and every tube
    full.train()
    with torch.enable_grad():
        full.image_tokens(clip).sum().backward()
    assert full.video.gate.grad is not None and all(t.weight.grad is not None for t in full.video.tubes)


@torch.no_grad()
def test_per_frame_baseline_is_each_frame_through_the_image_model():
    m = model(encoding="per_frame")
    clip = torch.randn(2, 3, 3, 32, 32)
    out = m.image_tokens(clip)  # (B, P + T*N, C)
    per = [m.visual(clip[:, t]) for t in range(3)]
    assert out.shape == (2, 1 + 3 * 4, 64)
    for t in range(3):
        assert_close(out[:, 1 + 4 * t: 1 + 4 * (t + 1)], per[t][:, 1:])  # gate 0: exactly frame t's tokens
    assert_close(out[:, 0], torch.stack([p[:, 0] for p in per]).mean(0))
    assert len(m.video.tubes) == 0


def test_tubes_cost_less_than_per_frame_encoding_at_equal_frames():
    clip = torch.randn(1, 8, 3, 32, 32)
    # sparse: 1 frame (4 tokens) + 2 x 4 tube tokens in one pass, vs 8 frames x 4 tokens in 8 passes
    tubes = model(tube_specs=["2x16x16 4x16x16 0x0x0"], frame_stride=8)
    per_frame = model(encoding="per_frame")
    assert count_tokens(tubes.video_config, 8, 32, 16) == 12
    assert encoder_flops(tubes, clip) < 0.5 * encoder_flops(per_frame, clip)


def test_generation_and_the_decoder_take_clips():
    m = model()
    clip = torch.randn(2, 8, 3, 32, 32)
    tokens = torch.randint(3, CFG.vocab_size, (2, 6))
    out = m(clip, tokens, packed=True)
    assert out["image_embed"].shape == (2, CFG.embed_dim)
    assert m.generate(clip, max_new_tokens=3).shape[0] == 2
    # the decoder and the image encoder are the image model's modules: same parameter names
    assert set(MaMMUT(CFG).state_dict()) == {k for k in m.state_dict() if not k.startswith("video.")}


@pytest.mark.parametrize("overrides, message", [
    (["video.tube_specs=[8x8]"], "video.tube_specs"),
    (["video.tube_specs=[32x8x8 8x16x16]"], "video.tube_specs"),  # longer than the 16-frame clip
    (["video.encoding=perframe"], "video.encoding"),
    (["video.sampling=dense"], "video.sampling"),
    (["video.frame_offset=20"], "video.frame_offset"),
    (["data.name=coco"], "data.name"),
])
def test_bad_video_config_named(overrides, message):
    with pytest.raises(C.ConfigError, match=message.replace(".", r"\.")):
        load_config("msrvtt_qa", overrides)


def test_init_from_an_image_checkpoint_inflates_the_tubes(tmp_path):
    from mammut_pl.tasks.video import VideoQATask

    overrides = [f"model.{k}={v}" for k, v in dict(encoder="test_vit", image_size=32, width=32, depth=4, heads=2,
                                                     num_cross_attn=2, vocab_size=128, context_length=16,
                                                     embed_dim=32, bos_id=1, eos_id=2).items()]
    overrides += ["model.encoder_kwargs.patch_size=16", "video.num_frames=8", f"video.tube_specs={TUBES}"]
    torch.manual_seed(1)
    image = MaMMUT(C.load("msrvtt_qa", overrides).model.architecture())  # an image model of the same size
    torch.save(image.state_dict(), tmp_path / "image.pt")
    cfg = C.load("msrvtt_qa", overrides + [f"model.init_from={tmp_path / 'image.pt'}"])
    task = VideoQATask(C.to_dict(cfg))
    assert_close(task.model.visual.vit.patch_embed.proj.weight, image.visual.vit.patch_embed.proj.weight)
    for spec, tube in zip(task.model.video.specs, task.model.video.tubes):
        assert_close(tube.weight, inflate_patch_weight(image.visual.vit.patch_embed.proj.weight, spec.kernel))
        assert_close(tube.bias, image.visual.vit.patch_embed.proj.bias)
    # a video checkpoint keeps its own (trained) tubes
    with torch.no_grad():
        task.model.video.tubes[0].weight.add_(1.0)
    torch.save(task.model.state_dict(), tmp_path / "video.pt")
    again = VideoQATask(C.to_dict(C.load("msrvtt_qa", overrides + [f"model.init_from={tmp_path / 'video.pt'}"])))
    assert_close(again.model.video.tubes[0].weight, task.model.video.tubes[0].weight)


def test_sparse_tubes_hold_no_encoder_weights():
    m = model()
    assert all(not k.startswith("visual") for k in m.video.state_dict())
    assert isinstance(m.video, SparseTubes)


def test_new_params_lr_scale_speeds_up_only_the_tubes_and_the_gate():
    from types import SimpleNamespace

    from mammut_pl.tasks.video import VideoQATask

    overrides = [f"model.{k}={v}" for k, v in dict(encoder="test_vit", image_size=32, width=32, depth=2, heads=2,
                                                     num_cross_attn=1, vocab_size=128, context_length=16,
                                                     embed_dim=32, bos_id=1, eos_id=2).items()]
    overrides += ["model.encoder_kwargs.patch_size=16", "video.num_frames=8", f"video.tube_specs={TUBES}",
                  "optim.lr=0.002", "optim.weight_decay=0.1"]

    def lr_and_decay(extra: list[str]) -> dict[str, tuple[float, float]]:
        task = VideoQATask(C.to_dict(C.load("msrvtt_qa", overrides + extra)))
        task._trainer = SimpleNamespace(estimated_stepping_batches=100)
        opt = task.configure_optimizers()["optimizer"]
        by_id = {id(p): (g["initial_lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
        named = dict(task.named_parameters())
        assert len(by_id) == len(named)  # every parameter in exactly one group
        return {n: by_id[id(p)] for n, p in named.items()}

    plain, fast = lr_and_decay(["video.new_params_lr_scale=1"]), lr_and_decay(["video.new_params_lr_scale=10"])
    new = {n for n in plain if n.startswith("model.video.")}
    assert "model.video.gate" in new and any(".tubes." in n for n in new)
    for n, (lr, decay) in plain.items():
        assert lr == pytest.approx(0.002)
        assert fast[n] == (pytest.approx(0.02), decay) if n in new else fast[n] == (lr, decay)
    assert plain["model.video.gate"][1] == 0.0 and plain["model.video.tubes.0.weight"][1] == 0.1
    with pytest.raises(C.ConfigError, match="video.new_params_lr_scale"):
        C.load("msrvtt_qa", ["video.new_params_lr_scale=0"])
