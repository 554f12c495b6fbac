"""Video: TubeViT-style sparse tubes in front of MaMMUT's image encoder (the paper's video adaptation).

A clip (B, T, 3, H, W) becomes ONE token sequence for the unchanged ViT blocks:

    2D patches of every `frame_stride`-th frame  (the image model's own patch projection)
  + a few 3D "tube" projections (Conv3d), each with its own kernel, stride and offset
    (e.g. 8x8x8 stride 16x32x32: a coarse, long tube; 16x4x4: thin and long in time)

Positions: every token gets the encoder's learned 2D embedding at its spatial centre
(bilinear between grid points for tubes: exact grid values for 2D patches) plus a fixed
3D sin-cos embedding at its (t, y, x) centre, joined through a learned gate:

    pos = learned(y, x) + tanh(gate) * sincos3d(t, y, x)        gate = 0 at init

so a one-frame clip through the 2D path is exactly the image model at the start of
fine-tuning. The tube projections start from the 2D patch projection, inflated
(`inflate_patch_weight`): over a static clip a tube whose spatial kernel is the patch
size outputs exactly what the 2D projection outputs. All tokens pass once through the
ViT; the decoder is unchanged (it cross-attends to these tokens as to image tokens).

Ablation switches (`VideoConfig`): `tubes=False` keeps the sparse frames only,
`fixed_pos_embed=False` drops the sin-cos term, `gated_connection=False` adds it
without the gate. `encoding="per_frame"` is the baseline the paper improves on: every
frame through the ViT alone, tokens concatenated (T times the encoder cost).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mammut_pl.model.config import MaMMUTConfig
from mammut_pl.model.encoder import ImageEncoder
from mammut_pl.model.mammut import MaMMUT
from mammut_pl.model.video_config import ENCODINGS, TUBEVIT_TUBES, TubeSpec, VideoConfig

__all__ = ["ENCODINGS", "TUBEVIT_TUBES", "SparseTubes", "TubeSpec", "VideoConfig", "VideoMaMMUT", "count_tokens",
           "encoder_flops", "inflate_patch_weight", "per_frame_tokens", "sincos_1d", "sincos_3d"]

# --- fixed 3D sin-cos positions -------------------------------------------------------------------
def sincos_1d(pos: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """(N,) positions -> (N, dim): [sin(p * w_0..w_{d/2-1}), cos(p * w_0..)], w_i = T^(-i / (d/2))."""
    half = dim // 2
    omega = temperature ** (-torch.arange(half, dtype=torch.float64, device=pos.device) / half)
    angles = pos.to(torch.float64)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_3d(t: Tensor, y: Tensor, x: Tensor, dim: int) -> Tensor:
    """(N,) coordinates -> (N, dim): 2*(dim//6) channels each for t, y and x (in that order),
    zeros in the remaining dim % 6 channels."""
    d = 2 * (dim // 6)
    parts = [sincos_1d(t, d), sincos_1d(y, d), sincos_1d(x, d)]
    pad = dim - 3 * d
    if pad:
        parts.append(t.new_zeros(t.shape[0], pad, dtype=torch.float32))
    return torch.cat(parts, dim=1)


# --- inflation ------------------------------------------------------------------------------------
def inflate_patch_weight(weight: Tensor, kernel: tuple[int, int, int]) -> Tensor:
    """2D patch projection (C, 3, p, p) -> 3D kernel (C, 3, kt, kh, kw).

    Spatially resized (bilinear, antialiased) and rescaled so that each (out, in) kernel
    sums to the 2D one (a uniform patch gives the same output), then copied over kt
    frames and divided by kt (a static clip gives the 2D output). With (kh, kw) = (p, p)
    the spatial kernel is the 2D kernel itself."""
    kt, kh, kw = kernel
    w = weight.detach().float()
    if (kh, kw) != tuple(w.shape[-2:]):
        resized = F.interpolate(w, size=(kh, kw), mode="bilinear", align_corners=False, antialias=True)
        resized = resized * (w.shape[-2] * w.shape[-1]) / (kh * kw)
        correction = (w.sum((-2, -1)) - resized.sum((-2, -1))) / (kh * kw)  # exact sums
        w = resized + correction[..., None, None]
    return (w[:, :, None] / kt).expand(-1, -1, kt, -1, -1).contiguous().to(weight.dtype)


def grid_coords(pixel: Tensor, patch: int) -> Tensor:
    """Pixel centre -> patch-grid coordinate: 2D patch j has its centre at pixel j * p + (p - 1) / 2."""
    return (pixel - (patch - 1) / 2) / patch


# --- the tokenizer: clip -> tokens ----------------------------------------------------------------
class SparseTubes(nn.Module):
    """Clip -> video tokens for the ViT (without running it). Holds only the new weights: the
    tube projections and the gate; the image encoder is passed in, never registered twice."""

    def __init__(self, config: VideoConfig, visual: ImageEncoder) -> None:
        super().__init__()
        self.config = config
        C, p = visual.width, visual.patch_size
        self.patch_size = p
        self.specs = config.specs
        self.tubes = nn.ModuleList(
            nn.Conv3d(3, C, s.kernel, s.stride, bias=True) for s in self.specs
        )
        # tanh(gate) scales the fixed embedding; 0 at init = the image model's positions only
        self.gate = nn.Parameter(torch.zeros(1))
        self.inflate_from(visual)

    @torch.no_grad()
    def inflate_from(self, visual: ImageEncoder) -> None:
        """Tube projections <- the (possibly just loaded) 2D patch projection, inflated."""
        proj = visual.vit.patch_embed.proj
        for spec, conv in zip(self.specs, self.tubes):
            conv.weight.copy_(inflate_patch_weight(proj.weight, spec.kernel))
            if proj.bias is not None:
                conv.bias.copy_(proj.bias)
            else:
                conv.bias.zero_()

    # positions ------------------------------------------------------------------------------------
    def fixed_weight(self) -> Tensor | None:
        """The factor on the sin-cos term: tanh(gate), 1 without the gate, None when switched off."""
        if not self.config.fixed_pos_embed:
            return None
        return torch.tanh(self.gate) if self.config.gated_connection else self.gate.new_ones(1)

    def positions(self, visual: ImageEncoder, t: Tensor, y: Tensor, x: Tensor) -> Tensor:
        """Token centres (frames; pixels) -> (N, C) position embeddings."""
        gh, gw = visual.grid
        u, v = grid_coords(y, self.patch_size), grid_coords(x, self.patch_size)
        learned = visual.grid_pos_embed().permute(0, 3, 1, 2)  # (1, C, gh, gw)
        where = torch.stack([2 * v / max(gw - 1, 1) - 1, 2 * u / max(gh - 1, 1) - 1], -1)  # (N, 2) as (x, y)
        pos = F.grid_sample(learned, where[None, None].to(learned.dtype), mode="bilinear",
                            padding_mode="border", align_corners=True)[0, :, 0].t()  # (N, C)
        w = self.fixed_weight()
        if w is not None:
            pos = pos + w.to(pos.dtype) * sincos_3d(t, u, v, pos.shape[1]).to(pos)
        return pos

    @staticmethod
    def _centres(grid: tuple[int, int, int], kernel, stride, offset, device) -> tuple[Tensor, Tensor, Tensor]:
        axes = [o + s * torch.arange(n, device=device, dtype=torch.float32) + (k - 1) / 2
                for n, k, s, o in zip(grid, kernel, stride, offset)]
        t, y, x = torch.meshgrid(*axes, indexing="ij")
        return t.flatten(), y.flatten(), x.flatten()

    # tokens ---------------------------------------------------------------------------------------
    def frame_tokens(self, visual: ImageEncoder, clip: Tensor) -> Tensor:
        """2D patches of the sparse frames: (B, T, 3, H, W) -> (B, F*gh*gw, C)."""
        B, T = clip.shape[:2]
        idx = self.config.frame_indices(T)
        frames = clip[:, idx].flatten(0, 1)  # (B*F, 3, H, W)
        x = visual.vit.patch_embed(frames)  # (B*F, gh, gw, C)
        _, gh, gw, C = x.shape
        p = self.patch_size
        if (gh, gw) != visual.grid:
            raise ValueError(f"video frames of {tuple(frames.shape[-2:])} px: expected model.image_size="
                             f"{visual.config.image_size}")
        t, y, xx = self._centres((len(idx), gh, gw), (1, p, p), (self.config.frame_stride, p, p),
                                 (self.config.frame_offset, 0, 0), clip.device)
        pos = self.positions(visual, t, y, xx).view(len(idx), gh * gw, C)
        return (x.reshape(B, len(idx), gh * gw, C) + pos[None].to(x.dtype)).reshape(B, -1, C)

    def tube_tokens(self, visual: ImageEncoder, clip: Tensor) -> list[Tensor]:
        """One (B, n_i, C) tensor per tube spec."""
        video = clip.transpose(1, 2)  # (B, 3, T, H, W)
        out = []
        for spec, conv in zip(self.specs, self.tubes):
            ot, oh, ow = spec.offset
            x = conv(video[:, :, ot:, oh:, ow:])  # (B, C, nt, nh, nw)
            grid = tuple(x.shape[2:])
            if 0 in grid:
                raise ValueError(f"video tube {spec}: no tube fits a clip of {tuple(clip.shape[1:])}")
            x = visual.vit.patch_embed.norm(x.flatten(2).transpose(1, 2))  # (B, n, C)
            t, y, xx = self._centres(grid, spec.kernel, spec.stride, spec.offset, clip.device)
            out.append(x + self.positions(visual, t, y, xx)[None].to(x.dtype))
        return out

    def forward(self, visual: ImageEncoder, clip: Tensor) -> Tensor:
        """(B, T, 3, H, W) -> patch tokens with positions (B, N, C), N = frames' + tubes' tokens."""
        return torch.cat([self.frame_tokens(visual, clip), *self.tube_tokens(visual, clip)], dim=1)


def per_frame_tokens(visual: ImageEncoder, tubes: SparseTubes, clip: Tensor) -> Tensor:
    """The baseline: every frame through the whole ViT alone, (B, T, 3, H, W) -> (B, P + T*N, C).

    Patch tokens get the gated sin-cos of their (t, y, x) after the encoder (so they know
    their frame); the P prefix tokens are averaged over frames, so the output has the
    image encoder's layout (prefix first) and `ImageEncoder.pool` works unchanged."""
    B, T = clip.shape[:2]
    tokens = visual(clip.flatten(0, 1))  # (B*T, P + N, C)
    P = visual.vit.num_prefix_tokens
    C = tokens.shape[-1]
    patches = tokens[:, P:].reshape(B, T, -1, C)  # (B, T, N, C)
    w = tubes.fixed_weight()
    if w is not None:
        p, (gh, gw) = visual.patch_size, visual.grid
        t, y, x = SparseTubes._centres((T, gh, gw), (1, p, p), (1, p, p), (0, 0, 0), clip.device)
        u, v = grid_coords(y, p), grid_coords(x, p)
        patches = patches + (w * sincos_3d(t, u, v, C).to(patches)).view(1, T, gh * gw, C)
    prefix = tokens[:, :P].reshape(B, T, P, C).mean(1)
    return torch.cat([prefix, patches.flatten(1, 2)], dim=1)


# --- the model -------------------------------------------------------------------------------------
class VideoMaMMUT(MaMMUT):
    """MaMMUT whose `image_tokens` also takes clips (B, T, 3, H, W); images (B, 3, H, W) take the
    image path unchanged. Everything downstream (contrastive embedding, caption pass,
    generation) reads `image_tokens`, so the decoder is untouched."""

    def __init__(self, config: MaMMUTConfig, video: VideoConfig) -> None:
        super().__init__(config)
        self.video_config = video
        self.video = SparseTubes(video, self.visual)

    def image_tokens(self, images: Tensor) -> Tensor:
        if images.ndim == 4:
            return super().image_tokens(images)
        if self.video_config.encoding == "per_frame":
            return per_frame_tokens(self.visual, self.video, images)
        return self.visual.transformer(self.video(self.visual, images))  # all tokens, ONE pass

    def inflate_tubes(self) -> None:
        self.video.inflate_from(self.visual)


def encoder_flops(model: VideoMaMMUT, clip: Tensor) -> int:
    """FLOPs of the video encoder (tokenizer + ViT) for `clip`, by torch's FlopCounterMode.

    Attention runs on SDPA's math backend here: the counter has no formula for the CPU flash
    kernel and would leave the attention matmuls (quadratic in the tokens) out."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        model.image_tokens(clip)
    return int(counter.get_total_flops())


def count_tokens(config: VideoConfig, frames: int, image_size: int, patch_size: int) -> int:
    """Patch tokens the ViT sees per clip (tubes encoding: in one pass; per_frame: over T passes)."""
    g = image_size // patch_size
    if config.encoding == "per_frame":
        return frames * g * g
    n = len(config.frame_indices(frames)) * g * g
    return n + sum(math.prod(s.grid(frames, image_size, image_size)) for s in config.specs)
