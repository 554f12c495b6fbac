"""MaMMUTConfig: every architectural choice of the model, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

PLACEMENTS = ("interleave", "top", "bottom")
IMAGE_POOLS = ("avg", "token", "avg_all")  # avg_all: mean over every token, class token included
TEXT_POOLS = ("mean", "mean_all")
IMAGE_TO_TEXT = ("linear_ln", "matrix")
MLP_ACTS = ("gelu_tanh", "gelu")


@dataclass
class MaMMUTConfig:
    # --- image encoder (a timm VisionTransformer, built with pretrained=False) ---
    encoder: str = "vit_base_patch16_224"  # any timm ViT name; "test_vit" for tests
    image_size: int = 224  # input resolution (square), must be a multiple of the patch size
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {patch_size: 8, depth: 4}
    image_pool: str = "avg"  # contrastive image embedding: "avg" (patch tokens), "token" (class) or "avg_all"
    final_ln_after_pool: bool = False  # True: the encoder's final LayerNorm runs on the pooled vector
    # (open_clip's ln_post after pooling); the image tokens are then the raw last-block output
    image_to_text: str = "linear_ln"  # image tokens -> cross-attn memory: Linear+LayerNorm, or a bare "matrix"
    # --- text decoder: N layers, cross-attention in M of them ---
    width: int = 512  # decoder hidden size
    depth: int = 12  # N, number of decoder layers
    heads: int = 8
    mlp_ratio: float = 4.0
    num_cross_attn: int = 6  # M, decoder layers that attend to the image in the generative pass
    cross_attn_placement: Any = "interleave"  # "interleave" | "top" | "bottom" | list of layer indices
    cross_attn_ratio: int = 0  # >0: openMaMMUT placement, after layers 0, s, 2s, ... (s = depth // (depth // ratio));
    # sets num_cross_attn = depth // ratio
    cross_attn_block: bool = False  # True: cross-attention is its own residual block after the layer's
    # self-attention (+MLP), with a LayerNorm on the image side and its own MLP (openMaMMUT)
    has_mlp: bool = True  # False: layers followed by a cross-attention block have no MLP (needs cross_attn_block)
    mlp_act: str = "gelu_tanh"  # "gelu_tanh" (approximate) or exact "gelu" (openMaMMUT)
    text_pool: str = "mean"  # contrastive pass: "mean" masks padding (attention + pooling); "mean_all"
    # masks nothing and averages all context positions, padding included (openMaMMUT)
    separate_final_ln: bool = True  # one final LayerNorm per pass (a choice, not in the paper) or one shared
    text_proj: bool = True  # a linear text projection width -> embed_dim (a choice); False needs width == embed_dim
    tie_lm_head: bool = True  # vocabulary projection tied to the token embedding; False: own matrix, no bias
    vocab_size: int = 49408  # set from the tokenizer by the suite
    context_length: int = 77  # max tokens per text, incl. begin/end tokens
    pad_id: int = 0  # the suite sets pad/bos/eos ids from the tokenizer
    bos_id: int = 49406
    eos_id: int = 49407
    dropout: float = 0.0
    # --- contrastive head ---
    embed_dim: int = 512  # joint image-text embedding size
    init_logit_scale: float = math.log(10.0)  # SigLIP init; CLIP uses log(1/0.07)
    init_logit_bias: float = -10.0  # SigLIP init; unused by the softmax loss
    logit_bias: bool = True  # a learned contrastive logit bias (SigLIP); openMaMMUT has none
    max_logit_scale: float = math.log(100.0)
    # --- cropped positional embeddings (RO-ViT), used in pretraining only ---
    cropped_pos_embed: bool = False
    cpe_grid: int = 0  # upsampled grid (tokens per side); 0 = the config loader derives detection.image_size / patch
    cpe_scale_min: float = 0.1  # crop area range, as a fraction of the upsampled grid
    cpe_scale_max: float = 1.0
    cpe_ratio_min: float = 0.5  # crop aspect-ratio range
    cpe_ratio_max: float = 2.0

    def __post_init__(self) -> None:
        def fail(key: str, why: str) -> None:
            raise ValueError(f"model.{key}={getattr(self, key)!r}: {why}")

        for key in ("image_size", "width", "depth", "heads", "vocab_size", "context_length", "embed_dim"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) <= 0:
                fail(key, "must be a positive integer")
        if self.width % self.heads:
            fail("heads", f"must divide model.width={self.width}")
        if (self.width // self.heads) % 2:
            fail("heads", "head size (width / heads) must be even")
        self._check_choices(fail)  # derives num_cross_attn from cross_attn_ratio
        if not 0 <= self.num_cross_attn <= self.depth:
            fail("num_cross_attn", f"must be between 0 and model.depth={self.depth} (M <= N)")
        if self.context_length < 3:
            fail("context_length", "must be at least 3 (begin token, one token, end token)")
        for key in ("pad_id", "bos_id", "eos_id"):
            if not 0 <= getattr(self, key) < self.vocab_size:
                fail(key, f"must be a token id below model.vocab_size={self.vocab_size}")
        if self.pad_id in (self.bos_id, self.eos_id):
            fail("pad_id", "must differ from model.bos_id and model.eos_id")
        if self.image_pool not in IMAGE_POOLS:
            fail("image_pool", f"must be one of {IMAGE_POOLS}")
        if not 0.0 <= self.dropout < 1.0:
            fail("dropout", "must be in [0, 1)")
        if self.mlp_ratio <= 0:
            fail("mlp_ratio", "must be positive")
        if not 0.0 < self.cpe_scale_min <= self.cpe_scale_max <= 1.0:
            fail("cpe_scale_min", "need 0 < cpe_scale_min <= cpe_scale_max <= 1")
        if not 0.0 < self.cpe_ratio_min <= self.cpe_ratio_max:
            fail("cpe_ratio_min", "need 0 < cpe_ratio_min <= cpe_ratio_max")
        # validate and normalise the placement once; the decoder reads cross_attn_layers
        self.cross_attn_placement = _as_placement(self.cross_attn_placement)
        self.cross_attn_layers  # raises with the key named if inconsistent

    def _check_choices(self, fail: Any) -> None:
        for key, allowed in (("text_pool", TEXT_POOLS), ("image_to_text", IMAGE_TO_TEXT), ("mlp_act", MLP_ACTS)):
            if getattr(self, key) not in allowed:
                fail(key, f"must be one of {allowed}")
        if not isinstance(self.cross_attn_ratio, int) or not 0 <= self.cross_attn_ratio <= self.depth:
            fail("cross_attn_ratio", f"must be 0 (off) or an integer in [1, model.depth={self.depth}]")
        if self.cross_attn_ratio:
            self.num_cross_attn = self.depth // self.cross_attn_ratio  # derived, as open_clip does
        if not self.has_mlp and not self.cross_attn_block:
            fail("has_mlp", "False needs model.cross_attn_block=True (the cross-attention block has the MLP)")
        if not self.text_proj and self.width != self.embed_dim:
            fail("text_proj", f"False needs model.width ({self.width}) == model.embed_dim ({self.embed_dim})")

    @property
    def cross_attn_layers(self) -> tuple[int, ...]:
        """Indices (0 = first decoder layer) of the M layers that hold cross-attention."""
        n, m, placement = self.depth, self.num_cross_attn, self.cross_attn_placement
        if self.cross_attn_ratio:  # open_clip's MultimodalTransformer: every `step`-th layer from 0
            layers = tuple(range(0, n, n // m)) if m else ()
            if len(layers) != m:  # open_clip asserts the same
                raise ValueError(f"model.cross_attn_ratio={self.cross_attn_ratio}: model.depth={n} gives "
                                 f"{len(layers)} cross-attention layers {layers}, not depth // ratio = {m}")
            return layers
        if isinstance(placement, list):
            if len(placement) != m:
                raise ValueError(
                    f"model.cross_attn_placement={placement}: lists {len(placement)} layers "
                    f"but model.num_cross_attn={m}"
                )
            if len(set(placement)) != len(placement) or not all(0 <= i < n for i in placement):
                raise ValueError(
                    f"model.cross_attn_placement={placement}: need distinct layer indices in [0, {n})"
                )
            return tuple(sorted(placement))
        if m == 0:
            return ()
        if placement == "top":  # the last M layers, closest to the output
            return tuple(range(n - m, n))
        if placement == "bottom":
            return tuple(range(m))
        # interleave: spread evenly, always ending at the top layer (N=12, M=6 -> 1,3,5,7,9,11)
        return tuple(sorted({n - 1 - (i * n) // m for i in range(m)}))

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> MaMMUTConfig:
        """Named presets; `tiny` is for tests and the CPU demo."""
        if name not in PRESETS:
            raise ValueError(f"unknown MaMMUT preset {name!r}; known: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


def _as_placement(value: Any) -> str | list[int]:
    if isinstance(value, str):
        if value not in PLACEMENTS:
            raise ValueError(
                f"model.cross_attn_placement={value!r}: expected one of {PLACEMENTS} or a list of layer indices"
            )
        return value
    try:
        indices = [int(i) for i in value]
    except (TypeError, ValueError):
        raise ValueError(
            f"model.cross_attn_placement={value!r}: expected one of {PLACEMENTS} or a list of layer indices"
        ) from None
    if any(float(i) != float(j) for i, j in zip(indices, value)):
        raise ValueError(f"model.cross_attn_placement={value!r}: layer indices must be integers")
    return indices


PRESETS: dict[str, dict[str, Any]] = {
    # tests: timm's registered tiny ViT (patch 16, 64 wide, 6 blocks)
    "test": dict(encoder="test_vit", image_size=32, width=32, depth=4, heads=2, num_cross_attn=2,
                 vocab_size=128, context_length=16, embed_dim=32, bos_id=1, eos_id=2),
    # CPU demo: a 4-block ViT-Tiny on 64 px images, patch 8 (64 tokens)
    "tiny": dict(encoder="vit_tiny_patch16_224", image_size=64,
                 encoder_kwargs={"patch_size": 8, "depth": 4}, width=192, depth=4, heads=3,
                 num_cross_attn=2, context_length=32, embed_dim=128),
    # the bench's matched size against open_clip's coca_ViT-B-32
    "b32": dict(encoder="vit_base_patch32_224", image_size=224, width=512, depth=12, heads=8,
                num_cross_attn=6, context_length=76, embed_dim=512),
    "b16": dict(encoder="vit_base_patch16_224", image_size=224, width=512, depth=12, heads=8,
                num_cross_attn=6, context_length=77, embed_dim=512),
}

# openMaMMUT (LAION's open_clip fork, model_configs/mammut_ViT-*.json): CLIP-style timm ViT towers,
# separate cross-attention blocks after every 2nd decoder layer, no text projection, untied LM head.
OPENMAMMUT = dict(image_size=224, image_pool="avg_all", final_ln_after_pool=True, image_to_text="matrix",
                  cross_attn_ratio=2, cross_attn_block=True, mlp_act="gelu", text_pool="mean_all",
                  separate_final_ln=False, text_proj=False, tie_lm_head=False, logit_bias=False,
                  init_logit_scale=math.log(1 / 0.07), vocab_size=49408, context_length=77,
                  pad_id=0, bos_id=49406, eos_id=49407)
PRESETS.update({
    "openmammut-B-32": dict(OPENMAMMUT, encoder="vit_base_patch32_clip_224", width=512, depth=12, heads=8,
                            embed_dim=512, has_mlp=False),
    "openmammut-B-16": dict(OPENMAMMUT, encoder="vit_base_patch16_clip_224", width=768, depth=12, heads=12,
                            embed_dim=768),
    "openmammut-L-14": dict(OPENMAMMUT, encoder="vit_large_patch14_clip_224", width=768, depth=12, heads=12,
                            embed_dim=768),
    "openmammut-H-14": dict(OPENMAMMUT, encoder="vit_huge_patch14_clip_224", width=1024, depth=24, heads=16,
                            embed_dim=1024),
})
