"""Pretrained image towers: timm and open_clip (CLIP) ViT weights into the image encoder.

`model.encoder_weights=PATH` reads one file and converts it with timm's own
`checkpoint_filter_fn`, which knows the OpenAI/open_clip CLIP layout (`visual.conv1`,
`visual.transformer.resblocks.*`, ...) and resamples the positional embeddings when
the checkpoint's grid differs from ours. The encoder must be the matching timm
architecture, e.g. `vit_base_patch32_clip_224` for open_clip's `ViT-B-32` (pre-norm,
class token) -- a mismatch stops with the missing/unexpected keys listed.

CLIP's `visual.proj` (width x embed_dim, no bias) becomes our `image_proj` when
`model.embed_dim` equals its output size; otherwise the projection stays at its fresh
initialisation (logged). A timm classifier head (`head.*`) is never used.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import Tensor, nn

log = logging.getLogger(__name__)

# keys in an open_clip/OpenAI state dict that mark a CLIP visual tower with a projection
CLIP_PROJ_KEYS = ("visual.proj", "module.visual.proj", "visual.head.proj.weight", "module.visual.head.proj.weight")


def read_state_dict(path: str | Path, key: str = "model.encoder_weights") -> dict[str, Tensor]:
    """Tensors of a .safetensors file or a torch file (weights_only: no code runs). A training
    checkpoint's `state_dict` / `model` / `module.` wrappers are unwrapped by the caller's filter."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{key}: file not found: {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a weights file, or holds arbitrary objects
        raise ValueError(f"{key}: cannot read {p} as a weights-only checkpoint: {err}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{key}: {p} holds a {type(obj).__name__}, expected a state_dict")
    return obj


def load_encoder_weights(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load a timm or open_clip ViT checkpoint into `model.visual.vit` (and CLIP's `proj` into
    `model.image_proj` where shapes allow). Returns what was loaded, for logging and tests.

    Raises ValueError naming the file and the missing/unexpected keys when the checkpoint is
    not the encoder's architecture."""
    vit = model.visual.vit
    raw = read_state_dict(path)
    for wrapper in ("state_dict", "model"):  # open_clip training checkpoints, some timm/DeiT files
        if isinstance(raw.get(wrapper), dict):
            raw = raw[wrapper]
    if all(k.startswith("module.") for k in raw) and "module.visual.class_embedding" not in raw:
        raw = {k[len("module."):]: v for k, v in raw.items()}  # DDP-saved timm weights
    is_clip = any(k in raw for k in CLIP_PROJ_KEYS)
    try:
        state = checkpoint_filter_fn(raw, vit)  # open_clip -> timm names, pos_embed resampled
    except Exception as err:  # shapes it cannot reconcile (e.g. another width)
        raise ValueError(f"model.encoder_weights={path}: timm cannot convert it for "
                         f"model.encoder={model.config.encoder!r}: {err}") from None
    head = {k: state.pop(k) for k in [k for k in state if k.startswith("head.")]}
    for prefix in ("visual.head.proj.", "module.visual.head.proj."):  # open_clip with a timm trunk:
        if prefix + "weight" in raw and prefix + "bias" not in raw:  # a bias-free Linear, (D, C)
            head["head.weight"] = raw[prefix + "weight"]
    own = vit.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"model.encoder_weights={path} does not fit model.encoder={model.config.encoder!r} "
            f"(an open_clip ViT-B-32 needs vit_base_patch32_clip_224, ViT-B-16 vit_base_patch16_clip_224, ...): "
            f"missing keys {_short(missing)}, unexpected keys {_short(unexpected)}, shape mismatches {_short(wrong)}"
        )
    vit.load_state_dict(state)
    loaded = {"encoder": sorted(state), "projection": [], "ignored": sorted(head)}
    if is_clip and "head.weight" in head:
        proj = head["head.weight"]  # (D, C): timm stores CLIP's (C, D) proj transposed, as a Linear weight
        if proj.shape == model.image_proj.weight.shape:
            with torch.no_grad():
                model.image_proj.weight.copy_(proj)
            loaded["projection"], loaded["ignored"] = ["image_proj.weight"], []
            if model.config.image_pool != "token":
                log.warning("model.encoder_weights=%s: CLIP pools the class token; with model.image_pool=%s "
                            "the loaded projection sees another input than it was trained on", path,
                            model.config.image_pool)
        else:
            log.warning("model.encoder_weights=%s: CLIP projection %s does not fit image_proj %s "
                        "(model.embed_dim=%d): image_proj keeps its fresh initialisation", path,
                        tuple(proj.shape), tuple(model.image_proj.weight.shape), model.config.embed_dim)
    log.info("model.encoder_weights=%s: loaded %d encoder tensors%s", path, len(state),
             ", and CLIP's projection into image_proj" if loaded["projection"] else "")
    return loaded


def _short(keys: list[str], n: int = 5) -> str:
    if not keys:
        return "none"
    return "[" + ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "") + "]"
