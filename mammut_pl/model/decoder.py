"""The MaMMUT text decoder: ONE stack of layers used in two passes.

contrastive_pass: bidirectional self-attention (padding masked), no
    cross-attention, masked mean pooling -> one text embedding.
caption_pass: causal self-attention + cross-attention to the image tokens in
    the M layers that hold it -> next-token hidden states.

The two passes differ only in the self-attention mask and the cross-attention
switch; the weights are the same.

Padding costs nothing in training: with a `Packing`, the per-token work
(projections, MLPs, norms: most of the FLOPs) runs on the real tokens only, as
an (N, W) matrix, and only attention sees the padded (B, T) layout.
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


class Packing:
    """The real tokens of a right-padded (B, T) batch, packed into (N, ...) rows.

    A position is real up to its row's last non-padding token (CLIP's pad id 0 is
    also the token "!", so an inner 0 stays in the sequence: the attention mask
    and the loss treat it as before). Per-token layers run on the packed rows;
    attention unpacks them to (B, T, ...), with zeros at padding that the masks
    and the causal order keep away from the real tokens.

    Building one calls nonzero(): a host-device sync, once per step, on GPU.
    """

    def __init__(self, tokens: Tensor, pad_id: int) -> None:
        B, T = tokens.shape
        nonpad = tokens != pad_id
        # real = at or before the last non-padding token of the row
        real = nonpad.flip(1).cummax(1).values.flip(1).flatten()  # (B*T,)
        self.batch, self.length = B, T
        self.index = real.nonzero().squeeze(1)  # (N,) flat positions b * T + t
        self.row = real.cumsum(0) - 1  # flat position -> packed row (valid where real)

    def pack(self, x: Tensor) -> Tensor:
        """(B, T, ...) -> (N, ...)."""
        return x.flatten(0, 1).index_select(0, self.index)

    def unpack(self, x: Tensor) -> Tensor:
        """(N, ...) -> (B, T, ...), zeros at padding."""
        out = x.new_zeros(self.batch * self.length, *x.shape[1:]).index_copy(0, self.index, x)
        return out.view(self.batch, self.length, *x.shape[1:])


def caption_targets(tokens: Tensor, pad_id: int) -> tuple[Tensor, Tensor]:
    """Teacher forcing: flat positions b * T + t whose next token is a real token
    (padding targets are skipped, as in CaptionLoss), and those next tokens."""
    B, T = tokens.shape
    keep = torch.zeros_like(tokens, dtype=torch.bool)
    keep[:, :-1] = tokens[:, 1:] != pad_id
    positions = keep.flatten().nonzero().squeeze(1)  # (M,)
    return positions, tokens.flatten()[positions + 1]


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
        packing: Packing | None = None,  # x is (N, W) packed real tokens
    ) -> Tensor:
        qkv = self.qkv(x)
        if packing is not None:
            qkv = packing.unpack(qkv)  # (B, T, 3W)
        q, k, v = (_split_heads(t, self.heads) for t in qkv.chunk(3, dim=-1))  # (B, h, T, hd)
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
        y = _merge_heads(y)
        return self.proj(y if packing is None else packing.pack(y))


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

    def forward(self, x: Tensor, memory: tuple[Tensor, Tensor], packing: Packing | None = None) -> Tensor:
        q = self.q(x)
        q = _split_heads(q if packing is None else packing.unpack(q), self.heads)
        y = F.scaled_dot_product_attention(
            q, *memory, dropout_p=self.dropout if self.training else 0.0
        )
        y = _merge_heads(y)
        return self.proj(y if packing is None else packing.pack(y))


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
        return self.pool(self.ln_contrastive(x), real)

    def pool(self, x: Tensor, real: Tensor) -> Tensor:
        """Masked mean over the real tokens, projected: (B, T, W) -> (B, D)."""
        weights = real.unsqueeze(-1).to(x.dtype)
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

    # --- both passes at once, padding skipped (training) -----------------------------
    def packed_passes(
        self, tokens: Tensor, memory: list[tuple[Tensor, Tensor] | None] | None, contrastive: bool = True,
    ) -> tuple[Tensor | None, Tensor | None, Packing]:
        """The same two passes, computed together on the real tokens only.

        The passes share weights, so their tokens are stacked into ONE set of rows:
        N real tokens for the contrastive pass, then the same N for the caption pass
        (memory=None: no caption pass). Projections and MLPs run once on (2N, W)
        (bigger matrix products, half the kernel launches); self-attention unpacks
        the rows to (2B, T) with each pass's mask; only the caption rows
        cross-attend. One embedding lookup feeds both.

        Returns the text embedding (B, D) or None, the caption hidden states of the
        real tokens (N, W) or None, and the Packing of one copy of `tokens`.
        """
        B, T = tokens.shape
        real = tokens != self.config.pad_id
        passes = int(contrastive) + int(memory is not None)
        one = Packing(tokens, self.config.pad_id)
        rows = Packing(tokens.repeat(passes, 1), self.config.pad_id) if passes > 1 else one
        N = one.index.numel()
        masks = []
        if contrastive:  # bidirectional over the real keys
            masks.append(real[:, None, None, :].expand(B, 1, T, T))
        if memory is not None:  # causal
            masks.append(torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril().expand(B, 1, T, T))
        attn_mask = torch.cat(masks)  # (passes * B, 1, T, T)
        x = one.pack(self.embed(tokens)).repeat(passes, 1)  # (passes * N, W)
        first_caption_row = N if contrastive else 0
        for i, layer in enumerate(self.layers):  # = DecoderLayer.forward, on the stacked rows
            x = x + layer.self_attn(layer.ln_self(x), attn_mask, packing=rows)
            if memory is not None and memory[i] is not None:
                h = x[first_caption_row:]
                h = h + layer.cross_attn(layer.ln_cross(h), memory[i], packing=one)
                x = torch.cat([x[:first_caption_row], h]) if contrastive else h
            x = x + layer.mlp(layer.ln_mlp(x))
        text = self.pool(self.ln_contrastive(one.unpack(x[:N])), real) if contrastive else None
        hidden = self.ln_caption(x[first_caption_row:]) if memory is not None else None
        return text, hidden, one

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
