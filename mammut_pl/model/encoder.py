"""Image encoder: a timm VisionTransformer whose positional embeddings we control.

We re-run timm's ViT forward in three visible steps (patches + positions ->
prefix tokens -> blocks) so that the positional embedding can be swapped:
cropped positional embeddings (RO-ViT) in pretraining, resampled grids for
other resolutions (detection), and extra tokens (video tubes) later.
"""

from __future__ import annotations

import math

import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from mammut_pl.model.config import MaMMUTConfig


class ImageEncoder(nn.Module):
    def __init__(self, config: MaMMUTConfig) -> None:
        super().__init__()
        self.config = config
        try:
            vit = timm.create_model(
                config.encoder,
                pretrained=False,
                num_classes=0,
                img_size=config.image_size,
                dynamic_img_size=True,  # patch_embed returns (B, gh, gw, C); we add positions ourselves
                # final_ln_after_pool: timm's fc_norm (LayerNorm after pooling, none on the tokens)
                **({"fc_norm": True} if config.final_ln_after_pool else {}),
                **config.encoder_kwargs,
            )
        except RuntimeError as err:  # timm's "Unknown model" error
            raise ValueError(f"model.encoder={config.encoder!r}: {err}") from None
        if not isinstance(vit, VisionTransformer) or vit.pos_embed is None:
            raise ValueError(
                f"model.encoder={config.encoder!r}: expected a timm VisionTransformer with learned "
                f"absolute positional embeddings (vit_*, deit_*, test_vit), got {type(vit).__name__}"
            )
        patch = vit.patch_embed.patch_size
        if config.image_size % patch[0] or config.image_size % patch[1]:
            raise ValueError(
                f"model.image_size={config.image_size}: must be divisible by the encoder's patch size {patch[0]}"
            )
        self.vit = vit
        self.width = vit.embed_dim  # C
        self.patch_size = patch[0]
        self.grid = tuple(vit.patch_embed.grid_size)  # (gh, gw) at config.image_size
        # pos_embed holds the prefix (class/register) positions first unless no_embed_class
        self.num_prefix_pos = 0 if vit.no_embed_class else vit.num_prefix_tokens

    # --- positional embeddings -------------------------------------------------
    def grid_pos_embed(self, grid: tuple[int, int] | None = None) -> Tensor:
        """Learned patch positions as (1, gh, gw, C), resampled if `grid` differs from training."""
        pos = self.vit.pos_embed[:, self.num_prefix_pos :]  # (1, gh*gw, C)
        gh, gw = self.grid
        if grid is not None and tuple(grid) != (gh, gw):
            pos = resample_abs_pos_embed(pos, list(grid), [gh, gw], num_prefix_tokens=0)
            gh, gw = grid
        return pos.reshape(1, gh, gw, -1)

    def cropped_pos_embed(self, batch_size: int) -> Tensor:
        """RO-ViT cropped positional embeddings: (B, gh, gw, C), one random crop per image.

        The grid is upsampled to cpe_grid x cpe_grid (the detection grid), a random region
        (sample_crop_boxes: RandomResizedCrop's rule, as RO-ViT draws it) is cropped and resized
        back, so each image is seen as a region of a larger one. Crop + resize is one bilinear
        grid_sample at the crop's cell centres.
        """
        cfg = self.config
        if cfg.cpe_grid <= 0:
            raise ValueError(
                f"model.cpe_grid={cfg.cpe_grid!r}: 0 means 'derive from detection.image_size / patch size', "
                "which the config loader does; set it when building MaMMUTConfig directly"
            )
        pos = self.grid_pos_embed().permute(0, 3, 1, 2)  # (1, C, gh, gw)
        big = F.interpolate(pos, size=(cfg.cpe_grid, cfg.cpe_grid), mode="bilinear", align_corners=False)
        x0, y0, w, h = sample_crop_boxes(batch_size, (cfg.cpe_scale_min, cfg.cpe_scale_max),
                                         (cfg.cpe_ratio_min, cfg.cpe_ratio_max), pos.device).unbind(-1)
        cx, cy = 2 * x0 + w - 1, 2 * y0 + h - 1  # crop centre in grid_sample's [-1, 1] coordinates
        zero = torch.zeros_like(w)
        theta = torch.stack([torch.stack([w, zero, cx], -1), torch.stack([zero, h, cy], -1)], 1)  # (B, 2, 3)
        gh, gw = self.grid
        sample_grid = F.affine_grid(theta, [batch_size, pos.shape[1], gh, gw], align_corners=False)
        crops = F.grid_sample(big.expand(batch_size, -1, -1, -1), sample_grid, mode="bilinear", align_corners=False)
        return crops.permute(0, 2, 3, 1)  # (B, gh, gw, C)

    # --- forward in three steps ---------------------------------------------------
    def embed_patches(self, images: Tensor) -> Tensor:
        """Patch tokens with positional embeddings: (B, 3, H, W) -> (B, gh*gw, C)."""
        x = self.vit.patch_embed(images)  # (B, gh, gw, C)
        B, gh, gw, C = x.shape
        if self.training and self.config.cropped_pos_embed and (gh, gw) == self.grid:
            x = x + self.cropped_pos_embed(B).to(x.dtype)
        else:
            x = x + self.grid_pos_embed((gh, gw)).to(x.dtype)
        return x.reshape(B, gh * gw, C)

    def transformer(self, patch_tokens: Tensor) -> Tensor:
        """Prefix tokens + ViT blocks + final norm: (B, N, C) -> (B, P + N, C)."""
        vit = self.vit
        B = patch_tokens.shape[0]
        prefix = []
        if vit.cls_token is not None:
            prefix.append(vit.cls_token.expand(B, -1, -1))
        if vit.reg_token is not None:
            prefix.append(vit.reg_token.expand(B, -1, -1))
        if prefix:
            prefix = torch.cat(prefix, dim=1)
            if self.num_prefix_pos:
                prefix = prefix + vit.pos_embed[:, : self.num_prefix_pos]
            x = torch.cat([prefix.to(patch_tokens.dtype), patch_tokens], dim=1)
        else:
            x = patch_tokens
        x = vit.pos_drop(x)
        x = vit.norm_pre(x)
        if vit.grad_checkpointing and self.training and torch.is_grad_enabled():  # model.grad_checkpointing
            x = checkpoint_seq(vit.blocks, x, use_reentrant=False)  # activations recomputed block by block in backward
        else:
            x = vit.blocks(x)
        return vit.norm(x)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> image tokens (B, P + N, C), P = class/register tokens."""
        return self.transformer(self.embed_patches(images))

    def pool(self, tokens: Tensor) -> Tensor:
        """Image tokens (B, P + N, C) -> one vector per image (B, C)."""
        if self.config.image_pool == "token":
            if self.vit.cls_token is None:
                raise ValueError(f"model.image_pool='token' but model.encoder={self.config.encoder!r} has no class token")
            pooled = tokens[:, 0]
        elif self.config.image_pool == "avg_all":  # open_clip's avg_all: class token included
            pooled = tokens.mean(dim=1)
        else:
            pooled = tokens[:, self.vit.num_prefix_tokens :].mean(dim=1)
        return self.vit.fc_norm(pooled) if self.config.final_ln_after_pool else pooled

    # --- LiT: a locked image tower -------------------------------------------------------
    def lock(self, unlocked_blocks: int = 0) -> None:
        """Lock the tower (LiT, Zhai et al. 2022): no gradients, and eval mode (no dropout /
        drop-path) for good, as `train()` keeps it; the last `unlocked_blocks` blocks and the
        final norm stay trainable."""
        blocks = self.vit.blocks
        if not 0 <= unlocked_blocks <= len(blocks):
            raise ValueError(f"model.freeze_encoder_unlocked_blocks={unlocked_blocks}: the encoder has "
                             f"{len(blocks)} blocks")
        self.requires_grad_(False)
        self.unlocked = list(blocks[len(blocks) - unlocked_blocks:])
        if unlocked_blocks:
            self.unlocked.append(self.vit.norm)
        for module in self.unlocked:
            module.requires_grad_(True)
        self.locked = True
        self.train(self.training)

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        if getattr(self, "locked", False) and mode:  # Lightning switches train and eval mode around validation
            super().train(False)
            for module in self.unlocked:
                module.train(True)
        return self


def sample_crop_boxes(batch_size: int, scale: tuple[float, float], ratio: tuple[float, float],
                      device: torch.device | None = None, attempts: int = 10) -> Tensor:
    """Random crops of the unit square as (B, 4) = (x0, y0, w, h), drawn by RandomResizedCrop's rule
    (RO-ViT draws its CPE regions this way): area ~ U(scale), log aspect (w / h) ~ U(log ratio); a
    draw that does not fit (w > 1 or h > 1) is redrawn, up to `attempts` times, then the whole square
    (the unit square's aspect 1 lies in any sensible ratio range); the corner is uniform where the
    crop fits. Clamping instead of redrawing would inflate the area (mean ~0.52 vs ~0.43 for the
    default 0.1-1 area, 1/2-2 aspect)."""
    area = torch.empty(batch_size, attempts, device=device).uniform_(scale[0], scale[1])
    log_ratio = torch.empty(batch_size, attempts, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    w_all, h_all = (area * log_ratio.exp()).sqrt(), (area / log_ratio.exp()).sqrt()  # (B, attempts)
    fits = (w_all <= 1) & (h_all <= 1)
    first = fits.float().argmax(dim=1, keepdim=True)  # the first attempt that fits (0 if none)
    any_fit = fits.any(dim=1)
    w = torch.where(any_fit, w_all.gather(1, first)[:, 0], torch.ones_like(area[:, 0]))
    h = torch.where(any_fit, h_all.gather(1, first)[:, 0], torch.ones_like(area[:, 0]))
    x0 = torch.rand(batch_size, device=device) * (1 - w)
    y0 = torch.rand(batch_size, device=device) * (1 - h)
    return torch.stack([x0, y0, w, h], -1)
