"""openMaMMUT checkpoints load exactly: the fork's own outputs (shared fixtures made by
LAION's open_clip_mammut, random weights) are reproduced within 1e-4, the loaded model
trains (packed path) and generates, the full-size presets have the fork's tensors, and
export -> load is a bitwise round trip."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mammut_pl.model import MaMMUT, MaMMUTConfig, load_openmammut
from mammut_pl.model.openmammut import (config_from_open_clip, read_weights, save_openmammut,
                                        to_fork_state_dict)
from tests.helpers import SHARED_FIXTURES, demo_world_args

FIXTURES = SHARED_FIXTURES / "openmammut"
NAMES = ("tiny_mlp", "tiny_nomlp")


def fixture(name: str) -> Path:
    path = FIXTURES / name
    if not (path / "reference.safetensors").is_file():
        pytest.skip(f"shared openMaMMUT fixture missing: {path} (made by LAION's open_clip_mammut; "
                    "see ../shared/fixtures/openmammut/README.md)")
    return path


def reference(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(fixture(name) / "reference.safetensors"))


@pytest.fixture(scope="module", params=NAMES)
def loaded(request):
    return request.param, load_openmammut(fixture(request.param)), reference(request.param)


# --- the fork's outputs -------------------------------------------------------------------------
def test_reproduces_the_forks_outputs(loaded):
    name, m, ref = loaded
    close = dict(atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(m.encode_image(ref["images"]), ref["image_features"], **close)
        torch.testing.assert_close(m.encode_text(ref["tokens"]), ref["text_features"], **close)
        logits = m.caption_logits(m.image_tokens(ref["images"]), ref["tokens"])  # (4, 16, V)
        torch.testing.assert_close(logits[:2], ref["logits"], **close)
        torch.testing.assert_close(logits.logsumexp(-1), ref["logits_logsumexp"], **close)
        assert torch.equal(logits.argmax(-1), ref["logits_argmax"])
        scale, bias = m.scales()
    torch.testing.assert_close(scale.reshape(1), ref["logit_scale"], **close)
    assert bias is None  # the fork has no logit bias
    # has_mlp: false drops the MLP of the layers that a cross-attention block follows
    assert (m.text.layers[0].mlp is None) == (name == "tiny_nomlp")
    assert m.text.layers[1].mlp is not None and m.text.layers[0].cross_mlp is not None


def test_trains_on_the_packed_path_like_the_padded_one(loaded):
    """One training step: the packed forward (mean_all contrastive rows + real caption rows) gives
    the padded path's loss and gradients, and the openMaMMUT-only weights get gradients."""
    from mammut_pl.losses import CaptionLoss, SoftmaxContrastiveLoss

    name, m0, ref = loaded
    m = load_openmammut(fixture(name)).train()
    images, tokens = ref["images"], ref["tokens"]

    def step(packed: bool):
        m.zero_grad()
        out = m(images, tokens, packed=packed)
        con = SoftmaxContrastiveLoss()(out["image_embed"], out["text_embed"], out["logit_scale"], out["logit_bias"])
        if packed:
            cap = F.cross_entropy(out["caption_logits"], out["caption_targets"])
        else:
            cap = CaptionLoss(pad_id=0)(out["caption_logits"], tokens)
        loss = con + cap
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in m.named_parameters()}

    loss_p, grads_p = step(True)
    loss_u, grads_u = step(False)
    assert torch.isfinite(loss_p)
    torch.testing.assert_close(loss_p, loss_u, atol=1e-5, rtol=1e-5)
    for k in grads_u:
        torch.testing.assert_close(grads_p[k], grads_u[k], atol=1e-5, rtol=1e-4, msg=k)
    for k in ("text.lm_head.weight", "text.ln_final.weight", "text.layers.0.cross_mlp.fc.weight",
              "text.layers.0.cross_attn.ln_kv.weight", "image_to_text.weight", "visual.vit.fc_norm.weight",
              "logit_scale"):
        assert grads_p[k].abs().sum() > 0, k


def test_generates_greedy_with_and_without_cache(loaded):
    name, m, ref = loaded
    gen = m.generate(ref["images"], max_new_tokens=6, use_cache=True)
    assert torch.equal(gen, m.generate(ref["images"], max_new_tokens=6, use_cache=False))
    # the first generated token is the fork's argmax after <start_of_text> (unless that is pad/bos,
    # which generation never emits)
    first = ref["logits_argmax"][:, 0]
    ok = (first != 0) & (first != 49406)
    assert torch.equal(gen[ok, 0], first[ok])


# --- strict keys and other sources -----------------------------------------------------------------
def test_training_checkpoint_with_module_prefix_and_json_config(tmp_path):
    path = fixture("tiny_nomlp")
    state = read_weights(path)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "epoch_3.pt")
    m = load_openmammut(tmp_path / "epoch_3.pt", model_cfg=path / "open_clip_config.json")
    ref = reference("tiny_nomlp")
    with torch.no_grad():
        torch.testing.assert_close(m.encode_text(ref["tokens"]), ref["text_features"], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="needs its model config"):
        load_openmammut(tmp_path / "epoch_3.pt")


def test_missing_and_unexpected_keys_are_named(tmp_path):
    path = fixture("tiny_mlp")
    state = read_weights(path)
    cfg = json.loads((path / "open_clip_config.json").read_text())
    state.pop("text.cross_attn.1.ln_1_kv.weight")
    state["text.cross_attn.2.ln_1.weight"] = torch.zeros(32)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"text\.cross_attn\.1\.ln_1_kv\.weight.*text\.cross_attn\.2\.ln_1\.weight"):
        load_openmammut(tmp_path / "bad.pt", model_cfg=cfg)
    # the same weights under the other has_mlp setting: the self-attention MLPs of layers 0, 2 are extra
    nomlp = dict(cfg["model_cfg"], text_cfg=dict(cfg["model_cfg"]["text_cfg"], has_mlp=False))
    with pytest.raises(ValueError, match=r"unexpected keys \['text\.resblocks\.0\.ln_2\.bias'"):
        load_openmammut(path, model_cfg=nomlp)


def test_unsupported_fork_options_are_named():
    base = {"embed_dim": 32, "vision_cfg": {"layers": 2, "width": 64, "patch_size": 8, "image_size": 32,
                                           "pool_type": "avg_all"}, "text_cfg": {"width": 32, "layers": 2}}
    with pytest.raises(ValueError, match="vision_cfg.pool_type='tok'"):
        config_from_open_clip(dict(base, vision_cfg=dict(base["vision_cfg"], pool_type="tok")))
    with pytest.raises(ValueError, match="quick_gelu"):
        config_from_open_clip(dict(base, quick_gelu=True))


@pytest.mark.parametrize("overrides, key", [
    (dict(has_mlp=False), "has_mlp"),
    (dict(text_proj=False, width=64, heads=2), "text_proj"),
    (dict(depth=10, cross_attn_ratio=3), "cross_attn_ratio"),
    (dict(text_pool="max"), "text_pool"),
    (dict(mlp_act="relu"), "mlp_act"),
    (dict(image_to_text="mlp"), "image_to_text"),
])
def test_config_rejects_inconsistent_openmammut_options(overrides, key):
    with pytest.raises(ValueError, match=f"model.{key}"):
        MaMMUTConfig.from_name("test", **overrides)


# --- full-size presets -----------------------------------------------------------------------------
# LAION-AI/open_clip_mammut src/open_clip/model_configs/mammut_ViT-*.json
FORK_CONFIGS = {
    "B-32": {"embed_dim": 512, "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32,
             "output_tokens": True, "pool_type": "avg_all", "final_ln_after_pool": True},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12,
                          "output_tokens": True, "cross_attn_ratio": 2, "does_full_decoding": True,
                          "has_mlp": False}, "custom_text": True},
    "L-14": {"embed_dim": 768, "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14,
             "output_tokens": True, "pool_type": "avg_all", "final_ln_after_pool": True},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12,
                          "output_tokens": True, "cross_attn_ratio": 2, "does_full_decoding": True},
             "custom_text": True},
    "B-16": {"embed_dim": 768, "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16,
             "output_tokens": True, "pool_type": "avg_all", "final_ln_after_pool": True},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12,
                          "output_tokens": True, "cross_attn_ratio": 2, "does_full_decoding": True},
             "custom_text": True},
    "H-14": {"embed_dim": 1024, "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80,
             "patch_size": 14, "output_tokens": True, "pool_type": "avg_all", "final_ln_after_pool": True},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24,
                          "output_tokens": True, "cross_attn_ratio": 2, "does_full_decoding": True},
             "custom_text": True},
}


def fork_state_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """The state_dict the fork's MaMMUT(**cfg) has, written from its module names
    (VisionTransformer, MultimodalTransformer, ResidualAttentionBlock)."""
    v, t, D = cfg["vision_cfg"], cfg["text_cfg"], cfg["embed_dim"]
    C, P, W = v["width"], v["patch_size"], t["width"]
    grid = v["image_size"] // P
    shapes = {"visual.conv1.weight": (C, 3, P, P), "visual.class_embedding": (C,),
              "visual.positional_embedding": (grid * grid + 1, C), "visual.proj": (C, D),
              "text.token_embedding.weight": (49408, W), "text.positional_embedding": (t["context_length"], W),
              "text.text_projection": (W, t["vocab_size"]), "map_viz2txt_kv": (C, W), "logit_scale": ()}
    for ln in ("visual.ln_pre", "visual.ln_post", "text.ln_final"):
        n = W if ln.startswith("text") else C
        shapes.update({f"{ln}.weight": (n,), f"{ln}.bias": (n,)})

    def block(prefix, w, mlp=True, kv=False):
        shapes.update({f"{prefix}.attn.in_proj_weight": (3 * w, w), f"{prefix}.attn.in_proj_bias": (3 * w,),
                       f"{prefix}.attn.out_proj.weight": (w, w), f"{prefix}.attn.out_proj.bias": (w,),
                       f"{prefix}.ln_1.weight": (w,), f"{prefix}.ln_1.bias": (w,)})
        if kv:
            shapes.update({f"{prefix}.ln_1_kv.weight": (w,), f"{prefix}.ln_1_kv.bias": (w,)})
        if mlp:
            shapes.update({f"{prefix}.ln_2.weight": (w,), f"{prefix}.ln_2.bias": (w,),
                           f"{prefix}.mlp.c_fc.weight": (4 * w, w), f"{prefix}.mlp.c_fc.bias": (4 * w,),
                           f"{prefix}.mlp.c_proj.weight": (w, 4 * w), f"{prefix}.mlp.c_proj.bias": (w,)})

    for i in range(v["layers"]):
        block(f"visual.transformer.resblocks.{i}", C)
    n_cross = t["layers"] // t["cross_attn_ratio"]
    step = t["layers"] // n_cross
    for i in range(t["layers"]):
        block(f"text.resblocks.{i}", W, mlp=i % step != 0 or t.get("has_mlp", True))
    for j in range(n_cross):
        block(f"text.cross_attn.{j}", W, kv=True)
    return shapes


@pytest.mark.parametrize("size", ["B-32", "L-14", "B-16", "H-14"])
def test_presets_have_the_forks_tensors(size):
    cfg = MaMMUTConfig.from_name(f"openmammut-{size}")
    assert cfg == config_from_open_clip(FORK_CONFIGS[size])  # the JSON gives the preset
    with torch.device("meta"):
        model = MaMMUT(cfg)
    got = {k: tuple(v.shape) for k, v in to_fork_state_dict(model).items()}
    assert got == fork_state_shapes(FORK_CONFIGS[size])


# --- export ----------------------------------------------------------------------------------------
def suite_checkpoint(path: Path, model: MaMMUT, tokenizer: str = "clip") -> Path:
    from mammut_pl import config as config_lib

    cfg = config_lib.load("", [f"data.tokenizer={tokenizer}"])
    cfg.model = dataclasses.replace(cfg.model, **dataclasses.asdict(model.config))
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"cfg": config_lib.to_dict(cfg)}}, path)
    return path


def test_export_round_trip_is_exact(tmp_path):
    from mammut_pl.export import main

    path = fixture("tiny_nomlp")
    model = load_openmammut(path)
    with torch.no_grad():  # a "trained" model: not the fixture's weights any more
        model.text.lm_head.weight.mul_(1.5)
    ckpt = suite_checkpoint(tmp_path / "run.ckpt", model)
    assert main([f"ckpt={ckpt}", f"out={tmp_path / 'hub'}"]) == 0
    again = load_openmammut(tmp_path / "hub")
    assert again.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    # and the fork's tensors come back bitwise (the LM head excepted: it was changed above)
    original, exported = read_weights(path), read_weights(tmp_path / "hub")
    assert set(original) == set(exported)
    for k in original:
        if k != "text.text_projection":
            assert torch.equal(original[k], exported[k]), k
    torch.testing.assert_close(exported["text.text_projection"], original["text.text_projection"] * 1.5)
    config = json.loads((tmp_path / "hub" / "open_clip_config.json").read_text())
    assert config["model_cfg"]["text_cfg"]["has_mlp"] is False and "preprocess_cfg" in config


def test_export_names_the_incompatible_option(tmp_path, capsys):
    from mammut_pl.export import main

    torch.manual_seed(0)
    paper = MaMMUT(MaMMUTConfig.from_name("test", vocab_size=49408, bos_id=49406, eos_id=49407))
    ckpt = suite_checkpoint(tmp_path / "paper.ckpt", paper)
    assert main([f"ckpt={ckpt}", f"out={tmp_path / 'hub'}"]) == 2
    assert "not openMaMMUT-compatible: model.image_pool='avg'" in capsys.readouterr().err
    assert not (tmp_path / "hub").exists()
    with pytest.raises(ValueError, match="model.separate_final_ln=True"):
        save_openmammut(MaMMUT(MaMMUTConfig.from_name("test", image_pool="avg_all", image_to_text="matrix",
                                                      cross_attn_block=True, mlp_act="gelu",
                                                      text_pool="mean_all", vocab_size=49408, bos_id=49406,
                                                      eos_id=49407)), tmp_path / "hub2")


# --- model.init_from=<openMaMMUT folder> -------------------------------------------------------------
def test_init_from_needs_the_clip_tokenizer(tmp_path):
    from mammut_pl import config as config_lib
    from mammut_pl.data.builders import adopt_openmammut_architecture

    cfg = config_lib.load("vqa", [f"model.init_from={fixture('tiny_mlp')}", "data.tokenizer=/x/tokenizer.json"])
    with pytest.raises(config_lib.ConfigError, match="data.tokenizer=clip"):
        adopt_openmammut_architecture(cfg)
    cfg.data.tokenizer = "clip"
    adopt_openmammut_architecture(cfg)
    from mammut_pl.model.openmammut import TRAINING_KEYS

    fork = dataclasses.asdict(load_openmammut(fixture("tiny_mlp")).config)
    ours = dataclasses.asdict(cfg.model.architecture())
    assert {k: v for k, v in ours.items() if k not in TRAINING_KEYS} == \
        {k: v for k, v in fork.items() if k not in TRAINING_KEYS}
    assert ours["encoder_kwargs"]["embed_dim"] == 64  # the experiment's encoder_kwargs are gone


def test_evaluation_loads_a_folder_as_a_checkpoint():
    """evaluate ... ckpt=<openMaMMUT folder>: the suite's task around the fork's model."""
    from mammut_pl.checkpoint import load_task

    cfg, module, tokenizer = load_task(fixture("tiny_mlp"), task="pretrain")
    ref = reference("tiny_mlp")
    assert tokenizer.vocab_size == 49408 and cfg.model.image_size == 32
    with torch.no_grad():
        torch.testing.assert_close(module.model.encode_text(ref["tokens"]), ref["text_features"],
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.e2e
def test_fit_vqa_from_an_openmammut_folder(tmp_path):
    from mammut_pl.data.demo import write_demo

    folder = fixture("tiny_mlp")
    world = write_demo(tmp_path / "world", tiny=True)
    args = [sys.executable, "-m", "mammut_pl.fit", "experiment=vqa", f"model.init_from={folder}",
            *demo_world_args(world, "vqav2", tmp_path), "data.tokenizer=clip", "data.batch_size=4", "trainer.max_steps=2", "trainer.val_check_interval=2",
            "data.vqav2.max_eval_questions=8"]
    r = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "is an openMaMMUT folder: the model architecture" in r.stderr
    assert "loaded the openMaMMUT weights" in r.stderr
    # the run started from the folder's weights: token rows no text of the demo uses are untouched by AdamW
    ckpt = torch.load(next((tmp_path / "outputs").rglob("last.ckpt")), map_location="cpu", weights_only=True)
    fork = read_weights(folder)
    torch.testing.assert_close(ckpt["state_dict"]["model.text.token_embed.weight"][40000:40010],
                               fork["text.token_embedding.weight"][40000:40010], atol=0, rtol=0)
    assert ckpt["hyper_parameters"]["cfg"]["model"]["cross_attn_block"] is True


@pytest.mark.e2e
def test_evaluate_retrieval_from_an_openmammut_folder(tmp_path, capsys):
    """evaluate task=retrieval ckpt=<folder>: the report equals recall from a full similarity matrix."""
    from tests.helpers.references import brute_force_recall

    from mammut_pl import evaluate
    from mammut_pl.data.demo import write_demo

    folder = fixture("tiny_mlp")
    world = write_demo(tmp_path / "world", tiny=True)
    assert evaluate.main(["task=retrieval", f"ckpt={folder}", "data=coco", f"data.root={world}/coco",
                          f"out={tmp_path / 'out'}", "trainer.enable_progress_bar=false", "data.num_workers=0"]) == 0
    report = json.loads((tmp_path / "out" / "retrieval_coco_test.json").read_text())
    assert report["images"] == 6 and report["captions"] == 30
    assert report["metrics"] == pytest.approx(brute_force_recall(world, folder), abs=1e-4)
