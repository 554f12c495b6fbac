"""openMaMMUT checkpoints (LAION's open_clip fork, `open_clip.mammut_model.MaMMUT`) in and out.

The fork's architecture is a set of MaMMUTConfig options (see OPENMAMMUT in
model/config.py); this file translates its JSON config and its state_dict
names. One table of rules (`_rules`) serves both directions, and every key is
accounted for: a source tensor that no rule uses, or a model tensor that no
rule fills, is an error naming the keys.

Hub layout: a folder with `open_clip_config.json` ({"model_cfg": ..., "preprocess_cfg": ...})
and `open_clip_model.safetensors` or `open_clip_pytorch_model.bin`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from mammut_pl.model.config import OPENMAMMUT, MaMMUTConfig
from mammut_pl.model.mammut import MaMMUT

log = logging.getLogger(__name__)

CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FORK_VOCAB = 49408  # the fork's token embedding always has 49408 rows
# timm's CLIP image towers by (width, layers, patch, heads); other shapes use kwargs on the B-16 one
TIMM_CLIP = {(768, 12, 32, 12): "vit_base_patch32_clip_224", (768, 12, 16, 12): "vit_base_patch16_clip_224",
             (1024, 24, 14, 16): "vit_large_patch14_clip_224", (1280, 32, 14, 16): "vit_huge_patch14_clip_224"}
# the fork's options this port implements only at one value: key -> (supported value, default)
_VISION_FIXED = {"ls_init_value": None, "patch_dropout": 0.0, "attentional_pool": False, "no_ln_pre": False,
                 "pos_embed_type": "learnable", "timm_model_name": None, "act_kwargs": None, "norm_kwargs": None}
_TEXT_FIXED = {"ls_init_value": None, "does_full_decoding": True, "hf_model_name": None}


# MaMMUTConfig fields that are training choices, not architecture: model.init_from keeps the experiment's
TRAINING_KEYS = ("dropout", "cropped_pos_embed", "cpe_grid", "cpe_scale_min", "cpe_scale_max", "cpe_ratio_min",
                 "cpe_ratio_max", "max_logit_scale", "init_logit_scale", "init_logit_bias")


def is_openmammut_dir(path: str | Path) -> bool:
    return bool(path) and (Path(path) / CONFIG_FILE).is_file()


# --- config ------------------------------------------------------------------------------
def config_from_open_clip(model_cfg: dict[str, Any], logit_bias: bool = False) -> MaMMUTConfig:
    """A fork `model_cfg` (mammut_ViT-*.json or open_clip_config.json's "model_cfg") -> MaMMUTConfig."""
    v, t = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})

    def unsupported(where: str, key: str, value: Any, why: str) -> ValueError:
        return ValueError(f"openMaMMUT config: {where}.{key}={value!r} is not supported ({why})")

    if model_cfg.get("quick_gelu", False):
        raise unsupported("model_cfg", "quick_gelu", True, "the released models use exact GELU")
    for where, cfg, fixed in (("vision_cfg", v, _VISION_FIXED), ("text_cfg", t, _TEXT_FIXED)):
        for key, value in fixed.items():
            if cfg.get(key, value) != value:
                raise unsupported(where, key, cfg[key], f"only {value!r} is implemented")
    if v.get("pool_type", "tok") != "avg_all":
        raise unsupported("vision_cfg", "pool_type", v.get("pool_type", "tok"),
                          "only 'avg_all': with 'tok'/'avg' the fork drops the class token from the cross-attention memory")
    if not isinstance(v.get("layers", 12), int):
        raise unsupported("vision_cfg", "layers", v["layers"], "a ViT is needed, not a ResNet")
    width, layers, patch = v.get("width", 768), v.get("layers", 12), v.get("patch_size", 16)
    heads = width // v.get("head_width", 64)
    mlp_ratio = float(v.get("mlp_ratio", 4.0))
    encoder = TIMM_CLIP.get((width, layers, patch, heads))
    encoder_kwargs: dict[str, Any] = {}
    if encoder is None or mlp_ratio != 4.0:
        encoder = "vit_base_patch16_clip_224"
        encoder_kwargs = dict(patch_size=patch, embed_dim=width, depth=layers, num_heads=heads, mlp_ratio=mlp_ratio)
    vocab = t.get("vocab_size", FORK_VOCAB)
    if vocab != FORK_VOCAB:
        raise unsupported("text_cfg", "vocab_size", vocab, f"the fork's token embedding has {FORK_VOCAB} rows "
                          "and its LM head vocab_size columns; only equal sizes load")
    image_size = v.get("image_size", 224)
    if not isinstance(image_size, int):
        raise unsupported("vision_cfg", "image_size", image_size, "square images only")
    return MaMMUTConfig(**{
        **OPENMAMMUT,
        "encoder": encoder, "encoder_kwargs": encoder_kwargs, "image_size": image_size,
        "final_ln_after_pool": bool(v.get("final_ln_after_pool", False)),
        "width": t.get("width", 512), "depth": t.get("layers", 12), "heads": t.get("heads", 8),
        "mlp_ratio": float(t.get("mlp_ratio", 4)), "cross_attn_ratio": t.get("cross_attn_ratio", 1),
        "has_mlp": bool(t.get("has_mlp", True)), "context_length": t.get("context_length", 77),
        "embed_dim": model_cfg["embed_dim"], "logit_bias": logit_bias,
    })


def check_compatible(config: MaMMUTConfig) -> None:
    """Raise naming the first model.* option that the fork's MaMMUT cannot express."""
    for key in ("image_pool", "image_to_text", "cross_attn_block", "mlp_act", "text_pool",
                "separate_final_ln", "text_proj", "tie_lm_head", "logit_bias", "vocab_size", "pad_id"):
        if getattr(config, key) != OPENMAMMUT.get(key, True):
            raise ValueError(f"not openMaMMUT-compatible: model.{key}={getattr(config, key)!r} "
                             f"(the fork needs {OPENMAMMUT.get(key, True)!r})")
    if not config.cross_attn_ratio:
        raise ValueError("not openMaMMUT-compatible: model.cross_attn_ratio=0 (the fork places cross-attention "
                         "blocks by a ratio; set model.cross_attn_ratio)")


def _vision_cfg(model: MaMMUT) -> dict[str, Any]:
    vit, cfg = model.visual.vit, model.config
    checks = {"a class token": vit.cls_token is not None, "no register tokens": vit.reg_token is None,
              "a LayerNorm before the blocks (pre_norm=True)": isinstance(vit.norm_pre, nn.LayerNorm),
              "no patch-embedding bias": vit.patch_embed.proj.bias is None,
              "class token inside the positional embedding": not vit.no_embed_class,
              "LayerNorm eps 1e-5": all(m.eps == 1e-5 for m in vit.modules() if isinstance(m, nn.LayerNorm)),
              "exact GELU": all(type(b.mlp.act) is nn.GELU and b.mlp.act.approximate == "none" for b in vit.blocks)}
    for what, ok in checks.items():
        if not ok:
            raise ValueError(f"not openMaMMUT-compatible: model.encoder={cfg.encoder!r} needs {what} "
                             "(a timm *_clip_* ViT)")
    width, heads = vit.embed_dim, vit.blocks[0].attn.num_heads
    return {"image_size": cfg.image_size, "layers": len(vit.blocks), "width": width, "head_width": width // heads,
            "mlp_ratio": vit.blocks[0].mlp.fc1.out_features / width, "patch_size": model.visual.patch_size,
            "output_tokens": True, "pool_type": "avg_all", "final_ln_after_pool": cfg.final_ln_after_pool}


def open_clip_config(model: MaMMUT) -> dict[str, Any]:
    """The hub `open_clip_config.json` of a compatible model."""
    cfg = model.config
    check_compatible(cfg)
    text = {"context_length": cfg.context_length, "vocab_size": cfg.vocab_size, "width": cfg.width,
            "heads": cfg.heads, "layers": cfg.depth, "mlp_ratio": cfg.mlp_ratio, "output_tokens": True,
            "cross_attn_ratio": cfg.cross_attn_ratio, "does_full_decoding": True, "has_mlp": cfg.has_mlp}
    model_cfg = {"embed_dim": cfg.embed_dim, "vision_cfg": _vision_cfg(model), "text_cfg": text, "custom_text": True}
    return {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)}}


# --- state_dict names ------------------------------------------------------------------------
@dataclass
class _Rule:
    fork: str  # one fork tensor ...
    ours: tuple[str, ...]  # ... and the model tensor(s) it becomes
    to_ours: Callable[[Tensor], tuple[Tensor, ...]]
    to_fork: Callable[..., Tensor]


def _same(fork: str, ours: str) -> _Rule:
    return _Rule(fork, (ours,), lambda x: (x,), lambda x: x)


def _transposed(fork: str, ours: str) -> _Rule:  # fork: x @ P (in, out); ours: nn.Linear (out, in)
    return _Rule(fork, (ours,), lambda x: (x.t(),), lambda x: x.t())


def _pairs(fork: str, ours: str, names: dict[str, str]) -> list[_Rule]:
    return [_same(f"{fork}.{a}.{p}", f"{ours}.{b}.{p}") for a, b in names.items() for p in ("weight", "bias")]


def _rules(config: MaMMUTConfig, vision_layers: int) -> list[_Rule]:
    W = config.width
    vit = "visual.vit"
    rules = [
        _same("visual.conv1.weight", f"{vit}.patch_embed.proj.weight"),
        _Rule("visual.class_embedding", (f"{vit}.cls_token",), lambda x: (x.view(1, 1, -1),), lambda x: x.view(-1)),
        _Rule("visual.positional_embedding", (f"{vit}.pos_embed",), lambda x: (x[None],), lambda x: x[0]),
        *_pairs("visual", vit, {"ln_pre": "norm_pre",
                                "ln_post": "fc_norm" if config.final_ln_after_pool else "norm"}),
        _transposed("visual.proj", "image_proj.weight"),
        _transposed("map_viz2txt_kv", "image_to_text.weight"),
        _same("logit_scale", "logit_scale"),
        _same("text.token_embedding.weight", "text.token_embed.weight"),
        _same("text.positional_embedding", "text.pos_embed"),
        *_pairs("text", "text", {"ln_final": "ln_final"}),
        _transposed("text.text_projection", "text.lm_head.weight"),
    ]
    if config.logit_bias:
        rules.append(_same("logit_bias", "logit_bias"))
    for i in range(vision_layers):
        rules += _pairs(f"visual.transformer.resblocks.{i}", f"{vit}.blocks.{i}", {
            "ln_1": "norm1", "attn.out_proj": "attn.proj", "ln_2": "norm2", "mlp.c_fc": "mlp.fc1",
            "mlp.c_proj": "mlp.fc2"})
        rules += [_same(f"visual.transformer.resblocks.{i}.attn.in_proj_{p}", f"{vit}.blocks.{i}.attn.qkv.{p}")
                  for p in ("weight", "bias")]
    cross = config.cross_attn_layers
    for i in range(config.depth):
        fork, ours = f"text.resblocks.{i}", f"text.layers.{i}"
        names = {"ln_1": "ln_self", "attn.out_proj": "self_attn.proj"}
        if config.has_mlp or i not in cross:
            names.update({"ln_2": "ln_mlp", "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"})
        rules += _pairs(fork, ours, names)
        rules += [_same(f"{fork}.attn.in_proj_{p}", f"{ours}.self_attn.qkv.{p}") for p in ("weight", "bias")]
    for j, i in enumerate(cross):
        fork, ours = f"text.cross_attn.{j}", f"text.layers.{i}"
        rules += _pairs(fork, ours, {"ln_1": "ln_cross", "ln_1_kv": "cross_attn.ln_kv",
                                     "attn.out_proj": "cross_attn.proj", "ln_2": "ln_cross_mlp",
                                     "mlp.c_fc": "cross_mlp.fc", "mlp.c_proj": "cross_mlp.proj"})
        for p in ("weight", "bias"):  # the fork's in_proj holds q, k, v; ours q and kv
            rules.append(_Rule(f"{fork}.attn.in_proj_{p}", (f"{ours}.cross_attn.q.{p}", f"{ours}.cross_attn.kv.{p}"),
                               lambda x: (x[:W], x[W:]), lambda q, kv: torch.cat([q, kv])))
    return rules


def _check_keys(what: str, have: set[str], want: set[str]) -> None:
    missing, unexpected = sorted(want - have), sorted(have - want)
    if missing or unexpected:
        raise ValueError(f"{what}: {len(missing)} missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
                         f"{len(unexpected)} unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")


def _vision_layers(model: MaMMUT) -> int:
    return len(model.visual.vit.blocks)


def to_suite_state_dict(fork_state: dict[str, Tensor], model: MaMMUT, source: str = "openMaMMUT") -> dict[str, Tensor]:
    """The fork's state_dict -> this model's names; strict both ways, shapes checked."""
    rules = _rules(model.config, _vision_layers(model))
    _check_keys(f"{source}: state_dict does not match the model_cfg", set(fork_state), {r.fork for r in rules})
    own = model.state_dict()
    out: dict[str, Tensor] = {}
    for rule in rules:
        for key, value in zip(rule.ours, rule.to_ours(fork_state[rule.fork])):
            if tuple(value.shape) != tuple(own[key].shape):
                raise ValueError(f"{source}: {rule.fork} gives {key} of shape {tuple(value.shape)}, "
                                 f"the model_cfg needs {tuple(own[key].shape)}")
            out[key] = value
    _check_keys(f"{source}: mapped weights do not fill the model", set(out), set(own))
    return out


def to_fork_state_dict(model: MaMMUT) -> dict[str, Tensor]:
    """This model's weights under the fork's names (an openMaMMUT-compatible model only)."""
    check_compatible(model.config)
    own = model.state_dict()
    rules = _rules(model.config, _vision_layers(model))
    _check_keys("export: the model's weights do not match the fork's layout", set(own),
                {k for r in rules for k in r.ours})
    return {r.fork: r.to_fork(*(own[k] for k in r.ours)).contiguous() for r in rules}


# --- files -------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the openMaMMUT config: {err}") from None


def _model_cfg(cfg: dict[str, Any] | str | Path, where: str) -> dict[str, Any]:
    if not isinstance(cfg, dict):
        cfg = _read_json(Path(cfg))
    cfg = cfg.get("model_cfg", cfg)  # open_clip_config.json wraps it; mammut_ViT-*.json is bare
    if not isinstance(cfg, dict) or "embed_dim" not in cfg or "text_cfg" not in cfg or "vision_cfg" not in cfg:
        raise ValueError(f"{where}: expected an open_clip model_cfg with embed_dim, vision_cfg and text_cfg")
    return cfg


def read_folder_config(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model_cfg, preprocess_cfg) of a hub-layout folder."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not an openMaMMUT folder (no {CONFIG_FILE})")
    raw = _read_json(path)
    pre = raw.get("preprocess_cfg", {})
    for key, ours in (("mean", CLIP_MEAN), ("std", CLIP_STD)):
        if key in pre and any(abs(a - b) > 1e-6 for a, b in zip(pre[key], ours)):
            log.warning("%s: preprocess_cfg.%s=%s differs from this suite's CLIP normalisation %s",
                        path, key, pre[key], ours)
    return _model_cfg(raw, str(path)), pre


def _load_tensors(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: cannot load as a weights-only torch file: {err}") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds no state_dict")
    if state and all(k.startswith("module.") for k in state):  # DDP training checkpoint (epoch_N.pt)
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """The fork's state_dict from a hub folder, a .safetensors/.bin, or an epoch_N.pt."""
    p = Path(path)
    if p.is_dir():
        files = [p / name for name in WEIGHT_FILES if (p / name).is_file()]
        if not files:
            raise FileNotFoundError(f"{p}: no weights file (expected one of {WEIGHT_FILES})")
        p = files[0]
    elif not p.is_file():
        raise FileNotFoundError(f"openMaMMUT checkpoint not found: {p}")
    return _load_tensors(p)


def config_for(path: str | Path, model_cfg: dict[str, Any] | str | Path | None = None,
               state: dict[str, Tensor] | None = None) -> MaMMUTConfig:
    """The MaMMUTConfig of a folder (its open_clip_config.json) or of a checkpoint + its model_cfg."""
    p = Path(path)
    if model_cfg is not None:
        cfg = _model_cfg(model_cfg, str(model_cfg) if not isinstance(model_cfg, dict) else "model_cfg")
    elif p.is_dir():
        cfg, _ = read_folder_config(p)
    else:
        raise ValueError(f"{p}: an open_clip checkpoint file needs its model config (model_cfg=dict or JSON path)")
    return config_from_open_clip(cfg, logit_bias=state is not None and "logit_bias" in state)


def architecture_of(folder: str | Path) -> dict[str, Any]:
    """The model.* architecture keys of a hub folder (what model.init_from=<folder> replaces)."""
    p = Path(folder)
    weights = p / WEIGHT_FILES[0]
    if weights.is_file():  # read the key names only
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            has_bias = "logit_bias" in f.keys()
    else:
        has_bias = "logit_bias" in read_weights(p)
    config = config_from_open_clip(read_folder_config(p)[0], logit_bias=has_bias)
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in TRAINING_KEYS}


def load_openmammut(path: str | Path, model_cfg: dict[str, Any] | str | Path | None = None) -> MaMMUT:
    """An openMaMMUT model (hub folder, or open_clip checkpoint + model_cfg) as a MaMMUT, in eval mode.

    Every tensor of the checkpoint is used and every weight of the model filled,
    or a ValueError names the keys that are not.
    """
    state = read_weights(path)
    model = MaMMUT(config_for(path, model_cfg, state))
    model.load_state_dict(to_suite_state_dict(state, model, source=str(path)), strict=True)
    return model.eval()


def save_openmammut(model: MaMMUT, out: str | Path) -> Path:
    """Write `model` in the hub layout (open_clip_config.json + open_clip_model.safetensors)."""
    from safetensors.torch import save_file

    config = open_clip_config(model)  # raises first if the architecture is not compatible
    state = to_fork_state_dict(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.detach().cpu() for k, v in state.items()}, str(out / WEIGHT_FILES[0]))
    return out

