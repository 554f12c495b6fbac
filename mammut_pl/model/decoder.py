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
from mammut_pl.model.packing import Packing, TextIndex, real_positions


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
    """Text queries attend to image tokens; keys/values can be computed once per image.

    norm_kv: a LayerNorm on the image tokens first (openMaMMUT's `ln_1_kv`, one per block).
    """

    def __init__(self, width: int, heads: int, dropout: float, norm_kv: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.ln_kv = nn.LayerNorm(width) if norm_kv else None
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def memory(self, image_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(B, S, W) image tokens -> keys, values (B, h, S, hd)."""
        if self.ln_kv is not None:
            image_tokens = self.ln_kv(image_tokens)
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
    def __init__(self, width: int, hidden: int, dropout: float, act: str = "gelu_tanh") -> None:
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.proj = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)
        self.approximate = "tanh" if act == "gelu_tanh" else "none"

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))


class DecoderLayer(nn.Module):
    """Pre-LN layer, one forward for every path (plain, packed, cached).

    Paper (cross_attn_block=False): self-attention, [cross-attention], MLP; the MLP
    runs in both passes.
    openMaMMUT (cross_attn_block=True): self-attention, MLP (none if has_mlp=False),
    then a cross-attention block (image-side LayerNorm, cross-attention, its own
    MLP) that the contrastive pass skips whole.
    """

    def __init__(self, config: MaMMUTConfig, has_cross_attn: bool) -> None:
        super().__init__()
        w, hidden, heads, p = config.width, int(config.width * config.mlp_ratio), config.heads, config.dropout
        self.ln_self = nn.LayerNorm(w)
        self.self_attn = SelfAttention(w, heads, p)
        self.has_cross_attn = has_cross_attn
        self.cross_block = has_cross_attn and config.cross_attn_block
        if has_cross_attn:
            self.ln_cross = nn.LayerNorm(w)
            self.cross_attn = CrossAttention(w, heads, p, norm_kv=config.cross_attn_block)
        if self.cross_block:
            self.ln_cross_mlp = nn.LayerNorm(w)
            self.cross_mlp = MLP(w, hidden, p, config.mlp_act)
        self.mlp: MLP | None = None
        if config.has_mlp or not self.cross_block:
            self.ln_mlp = nn.LayerNorm(w)
            self.mlp = MLP(w, hidden, p, config.mlp_act)

    def forward(
        self,
        x: Tensor,  # (B, T, W), or (N, W) rows with `packing`
        attn_mask: Tensor | None = None,  # bool (B, 1, T, S), True = may attend
        is_causal: bool = False,
        memory: tuple[Tensor, Tensor] | None = None,  # None = cross-attention off
        cache: LayerCache | None = None,
        cache_pos: int = 0,
        packing: Packing | None = None,  # the layout of x's rows for self-attention
        cross_from: int = 0,  # only rows x[cross_from:] cross-attend (packed: the caption rows)
        cross_packing: Packing | None = None,  # the layout of those rows
    ) -> Tensor:
        x = x + self.self_attn(self.ln_self(x), attn_mask, is_causal, cache, cache_pos, packing)
        cross = memory is not None and self.has_cross_attn
        if cross and not self.cross_block:
            x = self._cross(x, memory, cross_from, cross_packing)
        if self.mlp is not None:
            x = x + self.mlp(self.ln_mlp(x))
        if cross and self.cross_block:
            x = self._cross(x, memory, cross_from, cross_packing)
        return x

    def _cross(self, x: Tensor, memory: tuple[Tensor, Tensor], start: int, packing: Packing | None) -> Tensor:
        h = x[start:]
        h = h + self.cross_attn(self.ln_cross(h), memory, packing)
        if self.cross_block:
            h = h + self.cross_mlp(self.ln_cross_mlp(h))
        return torch.cat([x[:start], h]) if start else h


class TextDecoder(nn.Module):
    def __init__(self, config: MaMMUTConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.token_embed = nn.Embedding(config.vocab_size, w)
        self.pos_embed = nn.Parameter(torch.empty(config.context_length, w))
        cross = set(config.cross_attn_layers)
        self.layers = nn.ModuleList(DecoderLayer(config, i in cross) for i in range(config.depth))
        if config.separate_final_ln:  # bidirectional and causal features differ in scale
            self.ln_contrastive = nn.LayerNorm(w)
            self.ln_caption = nn.LayerNorm(w)
        else:  # one final norm for both passes (openMaMMUT's ln_final)
            self.ln_final = nn.LayerNorm(w)
        self.text_proj = nn.Linear(w, config.embed_dim, bias=False) if config.text_proj else None
        self.lm_head = None if config.tie_lm_head else nn.Linear(w, config.vocab_size, bias=False)
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

    def final_norm(self, which: str) -> nn.LayerNorm:
        """The final LayerNorm of the "contrastive" or the "caption" pass."""
        return getattr(self, f"ln_{which}") if self.config.separate_final_ln else self.ln_final

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
    def pooled_positions(self, tokens: Tensor) -> Tensor:
        """(B, T) bool: the positions the contrastive pass attends to and averages."""
        if self.config.text_pool == "mean_all":  # openMaMMUT: everything, padding included
            return torch.ones_like(tokens, dtype=torch.bool)
        return tokens != self.config.pad_id

    def contrastive_pass(self, tokens: Tensor) -> Tensor:
        """Bidirectional, no cross-attention: (B, T) -> text embedding (B, D), not normalised."""
        real = self.pooled_positions(tokens)  # (B, T)
        # every query sees the pooled keys (mean_all: no mask at all)
        attn_mask = None if self.config.text_pool == "mean_all" else real[:, None, None, :]
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, attn_mask=attn_mask, memory=None)
        return self.pool(self.final_norm("contrastive")(x), real)

    def pool(self, x: Tensor, real: Tensor) -> Tensor:
        """Masked mean over the real tokens, projected: (B, T, W) -> (B, D)."""
        weights = real.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return pooled if self.text_proj is None else self.text_proj(pooled)

    # --- pass 2: generative --------------------------------------------------------
    def caption_pass(self, tokens: Tensor, memory: list[tuple[Tensor, Tensor] | None]) -> Tensor:
        """Causal, cross-attention on: (B, T) -> hidden states (B, T, W) for next-token logits.

        Texts are right-padded, so the causal mask alone keeps real tokens from
        seeing padding.
        """
        x = self.embed(tokens)
        for layer, mem in zip(self.layers, memory):
            x = layer(x, is_causal=True, memory=mem)
        return self.final_norm("caption")(x)

    # --- both passes at once, padding skipped (training) -----------------------------
    def packed_passes(
        self, tokens: Tensor, memory: list[tuple[Tensor, Tensor] | None] | None, contrastive: bool = True,
        index: TextIndex | None = None,
    ) -> tuple[Tensor | None, Tensor | None, Packing]:
        """The same two passes, computed together on the tokens each one needs.

        The passes share weights, so their rows are stacked into ONE set: the
        contrastive pass's tokens (the real ones; every position with
        text_pool=mean_all), then the real tokens again for the caption pass
        (memory=None: no caption pass). Projections and MLPs run once on the
        stacked rows (bigger matrix products, half the kernel launches);
        self-attention unpacks them to (2B, T) with each pass's mask; only the
        caption rows cross-attend. One embedding lookup feeds both.

        index: the batch's TextIndex (from the collator); None computes it here.
        Returns the text embedding (B, D) or None, the caption hidden states of the
        real tokens (N, W) or None, and the Packing of the real tokens.
        """
        B, T = tokens.shape
        pad_id = self.config.pad_id
        if index is None:
            index = TextIndex.of(tokens, pad_id)
        elif index.pad_id != pad_id:
            raise ValueError(f"the batch's text_index was computed for pad id {index.pad_id}, "
                             f"but model.pad_id={pad_id}")
        one = Packing.of(real_positions(tokens, pad_id), index.real)  # the real tokens
        real = self.pooled_positions(tokens)
        # mean_all: every position, in order (no index to look up)
        con = Packing.of(real, torch.arange(B * T, device=tokens.device)) if self.config.text_pool == "mean_all" else one
        pieces = ([con] if contrastive else []) + ([one] if memory is not None else [])
        rows = Packing.stack(pieces)
        masks = []
        if contrastive:  # bidirectional over the pooled keys
            masks.append(real[:, None, None, :].expand(B, 1, T, T))
        if memory is not None:  # causal
            masks.append(torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril().expand(B, 1, T, T))
        attn_mask = torch.cat(masks)  # (passes * B, 1, T, T)
        emb = self.embed(tokens)
        x = torch.cat([p.pack(emb) for p in pieces])  # (rows, W)
        first_caption_row = con.index.numel() if contrastive else 0
        for layer, mem in zip(self.layers, memory or [None] * len(self.layers)):
            x = layer(x, attn_mask, memory=mem, packing=rows, cross_from=first_caption_row, cross_packing=one)
        text = None
        if contrastive:
            text = self.pool(self.final_norm("contrastive")(con.unpack(x[:first_caption_row])), real)
        hidden = self.final_norm("caption")(x[first_caption_row:]) if memory is not None else None
        return text, hidden, one

    def logits(self, hidden: Tensor) -> Tensor:
        """(..., W) -> (..., V): the token embedding (tied) or the LM head."""
        if self.lm_head is not None:
            return self.lm_head(hidden)
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
        return self.final_norm("caption")(x)
