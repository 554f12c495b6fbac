"""model.encoder_weights: timm and open_clip (CLIP) ViT checkpoints into the image encoder,
checked against open_clip 3.3.0's own encode_image."""

import logging

import open_clip
import pytest
import timm
import torch
from torch.testing import assert_close

from mammut_pl import config as C
from mammut_pl.model import MaMMUT
from mammut_pl.model.config import MaMMUTConfig
from mammut_pl.model.towers import load_encoder_weights

# a small text side: only the image tower matters here
TEXT = dict(width=32, depth=2, heads=2, num_cross_attn=1, vocab_size=64, context_length=8, bos_id=1, eos_id=2)


def clip_b32_model(image_size: int = 224, embed_dim: int = 512, pool: str = "token") -> MaMMUT:
    return MaMMUT(MaMMUTConfig(encoder="vit_base_patch32_clip_224", image_size=image_size, image_pool=pool,
                               embed_dim=embed_dim, **TEXT)).eval()


@pytest.fixture(scope="module")
def open_clip_b32(tmp_path_factory):
    """A random-init open_clip ViT-B-32 with every tensor perturbed (no norm at 1, no bias at 0,
    so a weight loaded into the wrong place shows), saved as open_clip saves a state_dict."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = tmp_path_factory.mktemp("openclip") / "vit_b32.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_open_clip_b32_gives_open_clips_encode_image(open_clip_b32):
    reference, path = open_clip_b32
    ours = clip_b32_model()
    loaded = load_encoder_weights(ours, path)
    assert loaded["projection"] == ["image_proj.weight"]
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.encode_image(images)  # unnormalised (open_clip's default)
        assert_close(ours.encode_image(images, normalize=False), expected, atol=1e-4, rtol=1e-4)
        assert_close(ours.encode_image(images), expected / expected.norm(dim=-1, keepdim=True), atol=1e-5, rtol=0)


def test_open_clip_training_checkpoint_at_another_resolution_matches_open_clips_resize(open_clip_b32, tmp_path):
    """An open_clip training checkpoint (state_dict with module. prefixes) into a 160 px encoder:
    positions resampled 7x7 -> 5x5, as open_clip's own resize_pos_embed does for a 160 px model."""
    reference, _ = open_clip_b32
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "epoch_3.pt")
    ours = clip_b32_model(image_size=160)
    load_encoder_weights(ours, tmp_path / "epoch_3.pt")

    small = open_clip.create_model("ViT-B-32", force_image_size=160).eval()
    resized = dict(reference.state_dict())
    open_clip.model.resize_pos_embed(resized, small)
    small.load_state_dict(resized)
    images = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_close(ours.encode_image(images, normalize=False), small.encode_image(images), atol=1e-4, rtol=1e-4)


def test_projection_that_does_not_fit_stays_fresh_and_says_so(open_clip_b32, caplog):
    _, path = open_clip_b32
    ours = clip_b32_model(embed_dim=256)
    fresh = ours.image_proj.weight.detach().clone()
    with caplog.at_level(logging.WARNING):
        loaded = load_encoder_weights(ours, path)
    assert loaded["projection"] == [] and "head.weight" in loaded["ignored"]
    assert torch.equal(ours.image_proj.weight, fresh)
    assert "does not fit image_proj" in caplog.text and "model.embed_dim=256" in caplog.text


def test_timm_checkpoint_loads_and_its_classifier_head_is_ignored(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("test_vit", num_classes=10, img_size=32)  # patch 16, 6 blocks, a class head
    torch.save(source.state_dict(), tmp_path / "test_vit.pth")
    ours = MaMMUT(MaMMUTConfig.from_name("test"))
    fresh_proj = ours.image_proj.weight.detach().clone()
    loaded = load_encoder_weights(ours, tmp_path / "test_vit.pth")
    assert loaded["ignored"] == ["head.bias", "head.weight"] and loaded["projection"] == []
    for k, v in source.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(ours.visual.vit.state_dict()[k], v), k
    assert torch.equal(ours.image_proj.weight, fresh_proj)
    # the same tower's features: timm's forward_features == our image tokens
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_close(ours.eval().image_tokens(images), source.eval().forward_features(images))


def test_wrong_architecture_names_the_file_and_the_keys(open_clip_b32):
    _, path = open_clip_b32
    with pytest.raises(ValueError) as err:
        load_encoder_weights(MaMMUT(MaMMUTConfig.from_name("test")), path)  # a ViT-B/32 into test_vit
    msg = str(err.value)
    assert str(path) in msg and "model.encoder='test_vit'" in msg
    assert "shape mismatches" in msg and "vit_base_patch32_clip_224" in msg



def test_timm_checkpoint_of_another_depth_lists_missing_and_unexpected_keys(tmp_path):
    torch.save(timm.create_model("test_vit", num_classes=0, img_size=32, depth=5).state_dict(), tmp_path / "d5.pth")
    deeper = MaMMUT(MaMMUTConfig.from_name("test", encoder_kwargs={"depth": 7}))
    with pytest.raises(ValueError, match=r"d5.pth.*missing keys \[blocks\.5\..*unexpected keys none"):
        load_encoder_weights(deeper, tmp_path / "d5.pth")


def test_missing_or_unreadable_file_is_a_clear_error(tmp_path):
    model = MaMMUT(MaMMUTConfig.from_name("test"))
    with pytest.raises(FileNotFoundError, match="model.encoder_weights: file not found"):
        load_encoder_weights(model, tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_encoder_weights(model, tmp_path / "junk.pt")


def test_config_key_loads_the_tower_into_the_task(tmp_path):
    from mammut_pl.tasks.pretrain import PretrainTask

    torch.manual_seed(0)
    source = timm.create_model("test_vit", num_classes=0, img_size=32)
    from safetensors.torch import save_file

    save_file(source.state_dict(), str(tmp_path / "tower.safetensors"))
    overrides = [f"model.{k}={v}" for k, v in MaMMUTConfig.from_name("test").__dict__.items()
                 if k in ("encoder", "image_size", "width", "depth", "heads", "num_cross_attn", "vocab_size",
                          "context_length", "embed_dim", "bos_id", "eos_id")]
    task = PretrainTask(C.to_dict(C.load("", overrides + [f"model.encoder_weights={tmp_path / 'tower.safetensors'}"])))
    assert torch.equal(task.model.visual.vit.pos_embed, source.pos_embed)
