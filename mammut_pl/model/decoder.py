"""The MaMMUT text decoder: ONE stack of layers used in two passes.

contrastive_pass: bidirectional self-attention (padding masked), no
    cross-attention, masked mean pooling -> one text embedding.
caption_pass: causal self-attention + cross-attention to the image tokens in
    the M layers that hold it -> next-token hidden states.

The two passes differ only in the self-attention mask and the cross-attention
switch; the weights are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mammut_pl.model.config import MaMMUTConfig


def _split_heads(x: Tensor, heads: int) -> Tensor:
    B, T, W = x.shape
    return x.view(B, T, heads, W // heads).transpose(1, 2)  # (B, h, T, hd)


def _merge_heads(x: Tensor) -> Tensor:
    B, h, T, hd = x.shape
    return x.transpose(1, 2).reshape(B, T, h * hd)  # (B, T, W)


@dataclass
class LayerCache:
    """Self-attention keys/values of one layer, preallocated to the full length."""

    k: Tensor  # (B, h, L_max, hd)
    v: Tensor  # (B, h, L_max, hd)


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(
        self,
        x: Tensor,  # (B, T, W)
        attn_mask: Tensor | None = None,  # bool (B, 1, T, S), True = may attend
        is_causal: bool = False,
        cache: LayerCache | None = None,
        cache_pos: int = 0,  # where x's keys/values go in the cache
    ) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (_split_heads(t, self.heads) for t in (q, k, v))  # (B, h, T, hd)
        if cache is not None:
            T = x.shape[1]
            cache.k[:, :, cache_pos : cache_pos + T] = k
            cache.v[:, :, cache_pos : cache_pos + T] = v
            k = cache.k[:, :, : cache_pos + T]
            v = cache.v[:, :, : cache_pos + T]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.proj(_merge_heads(y))


class CrossAttention(nn.Module):
    """Text queries attend to image tokens; keys/values can be computed once per image."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def memory(self, image_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(B, S, W) image tokens -> keys, values (B, h, S, hd)."""
        k, v = self.kv(image_tokens).chunk(2, dim=-1)
        return _split_heads(k, self.heads), _split_heads(v, self.heads)

    def forward(self, x: Tensor, memory: tuple[Tensor, Tensor]) -> Tensor:
        q = _split_heads(self.q(x), self.heads)
        y = F.scaled_dot_product_attention(
            q, *memory, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(_merge_heads(y))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.proj = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class DecoderLayer(nn.Module):
    """Pre-LN block: self-attention, [cross-attention], MLP."""

    def __init__(self, config: MaMMUTConfig, has_cross_attn: bool) -> None:
        super().__init__()
        w = config.width
        self.ln_self = nn.LayerNorm(w)
        self.self_attn = SelfAttention(w, config.heads, config.dropout)
        self.has_cross_attn = has_cross_attn
        if has_cross_attn:
            self.ln_cross = nn.LayerNorm(w)
            self.cross_attn = CrossAttention(w, config.heads, config.dropout)
        self.ln_mlp = nn.LayerNorm(w)
        self.mlp = MLP(w, int(w * config.mlp_ratio), config.dropout)

    def forward(
        self,
        x: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        memory: tuple[Tensor, Tensor] | None = None,  # None = cross-attention off
        cache: LayerCache | None = None,
        cache_pos: int = 0,
    ) -> Tensor:
        x = x + self.self_attn(self.ln_self(x), attn_mask, is_causal, cache, cache_pos)
        if memory is not None and self.has_cross_attn:
            x = x + self.cross_attn(self.ln_cross(x), memory)
        return x + self.mlp(self.ln_mlp(x))


class TextDecoder(nn.Module):
    def __init__(self, config: MaMMUTConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.token_embed = nn.Embedding(config.vocab_size, w)
        self.pos_embed = nn.Parameter(torch.empty(config.context_length, w))
        cross = set(config.cross_attn_layers)
        self.layers = nn.ModuleList(DecoderLayer(config, i in cross) for i in range(config.depth))
        # each pass has its own final norm: bidirectional and causal features differ in scale
        self.ln_contrastive = nn.LayerNorm(w)
        self.ln_caption = nn.LayerNorm(w)
        self.text_proj = nn.Linear(w, config.embed_dim, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        std = 0.02
        nn.init.normal_(self.token_embed.weight, std=std)
        nn.init.normal_(self.pos_embed, std=0.01)
        for name, p in self.named_parameters():
            if name.endswith(".weight") and p.dim() == 2 and "token_embed" not in name:
                # residual projections scaled down with depth (GPT-2)
                scale = (2 * self.config.depth) ** -0.5 if name.endswith("proj.weight") else 1.0
                nn.init.normal_(p, std=std * scale)
            elif name.endswith(".bias") and "ln_" not in name:
                nn.init.zeros_(p)

    def embed(self, tokens: Tensor, positions: Tensor | None = None) -> Tensor:
        """(B, T) token ids -> (B, T, W); positions default to 0..T-1."""
        T = tokens.shape[1]
        if T > self.config.context_length:
            raise ValueError(f"text of {T} tokens exceeds model.context_length={self.config.context_length}")
        pos = self.pos_embed[:T] if positions is None else self.pos_embed[positions]
        return self.token_embed(tokens) + pos

    def cross_attn_memory(self, image_tokens: Tensor) -> list[tuple[Tensor, Tensor] | None]:
        """Cross-attention keys/values per layer (None where a layer has none), computed once."""
        return [layer.cross_attn.memory(image_tokens) if layer.has_cross_attn else None for layer in self.layers]

    # --- pass 1: contrastive -------------------------------------------------------
    def contrastive_pass(self, tokens: Tensor) -> Tensor:
        """Bidirectional, no cross-attention: (B, T) -> text embedding (B, D), not normalised."""
        real = tokens != self.config.pad_id  # (B, T)
        attn_mask = real[:, None, None, :]  # (B, 1, 1, T): every query sees the real keys
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, attn_mask=attn_mask, memory=None)
        x = self.ln_contrastive(x)
        weights = real.unsqueeze(-1).to(x.dtype)  # masked mean over real tokens
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.text_proj(pooled)

    # --- pass 2: generative --------------------------------------------------------
    def caption_pass(self, tokens: Tensor, memory: list[tuple[Tensor, Tensor] | None]) -> Tensor:
        """Causal, cross-attention on: (B, T) -> hidden states (B, T, W) for next-token logits.

        Texts are right-padded, so the causal mask alone keeps real tokens from
        seeing padding.
        """
        x = self.embed(tokens)
        for layer, mem in zip(self.layers, memory):
            x = layer(x, is_causal=True, memory=mem)
        return self.ln_caption(x)

    def logits(self, hidden: Tensor) -> Tensor:
        """(..., W) -> (..., V), with the output projection tied to the token embedding."""
        return hidden @ self.token_embed.weight.t()

    # --- incremental decoding (generation) ----------------------------------------
    def new_cache(self, batch_size: int, max_len: int, like: Tensor) -> list[LayerCache]:
        shape = (batch_size, self.config.heads, max_len, self.config.head_dim)
        return [
            LayerCache(like.new_zeros(shape), like.new_zeros(shape)) for _ in self.layers
        ]

    def step(
        self,
        tokens: Tensor,  # (B, t) new tokens
        positions: Tensor,  # (B, t) their positions
        attn_mask: Tensor,  # bool (B, 1, t, cache_pos + t)
        memory: list[tuple[Tensor, Tensor] | None],
        cache: list[LayerCache] | None,
        cache_pos: int,
    ) -> Tensor:
        """Causal pass over new tokens given cached keys/values -> hidden states (B, t, W)."""
        x = self.embed(tokens, positions)
        for i, (layer, mem) in enumerate(zip(self.layers, memory)):
            x = layer(x, attn_mask=attn_mask, memory=mem,
                      cache=None if cache is None else cache[i], cache_pos=cache_pos)
        return self.ln_caption(x)
