"""MaMMUT: one image encoder, one text decoder used in two passes, and decoding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mammut_pl.model.config import MaMMUTConfig
from mammut_pl.model.decoder import LayerCache, TextDecoder
from mammut_pl.model.packing import TextIndex
from mammut_pl.model.encoder import ImageEncoder


class MaMMUT(nn.Module):
    def __init__(self, config: MaMMUTConfig) -> None:
        super().__init__()
        self.config = config
        self.visual = ImageEncoder(config)
        C, W, D = self.visual.width, config.width, config.embed_dim
        self.image_proj = nn.Linear(C, D, bias=False)  # pooled image -> joint space
        # image tokens -> cross-attention memory: Linear + LayerNorm, or openMaMMUT's bare matrix
        # (its cross-attention blocks normalise the memory themselves)
        self.image_to_text: nn.Module = (nn.Sequential(nn.Linear(C, W), nn.LayerNorm(W))
                                         if config.image_to_text == "linear_ln" else nn.Linear(C, W, bias=False))
        self.text = TextDecoder(config)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(config.init_logit_bias))) if config.logit_bias else None
        nn.init.normal_(self.image_proj.weight, std=C**-0.5)

    # --- the two embeddings --------------------------------------------------------
    def image_tokens(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> encoder tokens (B, S, C)."""
        return self.visual(images)

    def image_embedding(self, image_tokens: Tensor, normalize: bool = True) -> Tensor:
        x = self.image_proj(self.visual.pool(image_tokens))  # (B, D)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor:
        """(B, 3, H, W) -> (B, D) image embedding, L2-normalised by default."""
        return self.image_embedding(self.image_tokens(images), normalize)

    def encode_text(self, tokens: Tensor, normalize: bool = True) -> Tensor:
        """(B, T) -> (B, D) text embedding from the contrastive pass."""
        x = self.text.contrastive_pass(tokens)
        return F.normalize(x, dim=-1) if normalize else x

    def cross_attn_memory(self, image_tokens: Tensor) -> list[tuple[Tensor, Tensor] | None]:
        return self.text.cross_attn_memory(self.image_to_text(image_tokens))

    def caption_logits(self, image_tokens: Tensor, tokens: Tensor) -> Tensor:
        """Generative pass: logits (B, T, V); position t predicts token t + 1."""
        hidden = self.text.caption_pass(tokens, self.cross_attn_memory(image_tokens))
        return self.text.logits(hidden)

    def scales(self) -> tuple[Tensor, Tensor | None]:
        """(temperature, bias) for the contrastive logits; the scale is learned in log space.
        The bias is None when the model has none (model.logit_bias=false)."""
        return self.logit_scale.clamp(max=self.config.max_logit_scale).exp(), self.logit_bias

    def forward(
        self, images: Tensor, tokens: Tensor, contrastive: bool = True, generative: bool = True,
        packed: bool = False, text_index: TextIndex | None = None,
    ) -> dict[str, Tensor | None]:
        """One training step's forward: the image once, the decoder twice (same weights).

        A pass that is switched off (its loss weight is 0) is skipped entirely and
        its outputs are None.

        packed=True skips the padding (what training uses): both passes run together
        on the real tokens only (TextDecoder.packed_passes), and the vocabulary
        projection runs only at the M positions whose next token is a real one.
        `caption_logits` is then (M, V) and `caption_targets` (M,) holds those next
        tokens, so F.cross_entropy(caption_logits, caption_targets) equals
        CaptionLoss on the full (B, T, V) logits. Otherwise `caption_logits` is
        (B, T, V) and `caption_targets` None.

        text_index: the batch's TextIndex (the collators put it in the batch as "text_index"),
        so that the packed step has no data-dependent shape; None computes it here (nonzero():
        a graph break in a compiled step, a host-device sync on GPU).
        """
        image_tokens = self.image_tokens(images)  # (B, S, C)
        scale, bias = self.scales()
        out: dict[str, Tensor | None] = {
            "image_embed": None, "text_embed": None, "caption_logits": None, "caption_targets": None,
            "logit_scale": scale, "logit_bias": bias,
        }
        if contrastive:
            out["image_embed"] = self.image_embedding(image_tokens)  # (B, D)
        if packed and (contrastive or generative):
            memory = self.cross_attn_memory(image_tokens) if generative else None
            if text_index is None:
                text_index = TextIndex.of(tokens, self.config.pad_id)
            text_embed, hidden, packing = self.text.packed_passes(tokens, memory, contrastive, text_index)
            if contrastive:
                out["text_embed"] = F.normalize(text_embed, dim=-1)
            if generative:
                positions = text_index.caption  # (M,) inputs whose next token is real
                out["caption_targets"] = tokens.flatten()[positions + 1]
                out["caption_logits"] = self.text.logits(hidden.index_select(0, packing.row[positions]))  # (M, V)
            return out
        if contrastive:
            out["text_embed"] = self.encode_text(tokens)  # (B, D)
        if generative:
            out["caption_logits"] = self.caption_logits(image_tokens, tokens)  # (B, T, V)
        return out

    # --- decoding --------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        images: Tensor,
        prompt_tokens: Tensor | None = None,
        max_new_tokens: int = 20,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        use_cache: bool = True,
        bos_id: int | None = None,
        eos_id: int | None = None,
    ) -> Tensor:
        """Greedy (num_beams=1) or beam-search decoding conditioned on the images.

        prompt_tokens: (B, P) right-padded with pad_id, starting with the begin
        token (default: just the begin token). Returns the new tokens (B, L),
        ending with eos and padded with pad_id after it. With use_cache the
        self-attention keys/values grow one step at a time and the
        cross-attention keys/values are computed once per image.
        """
        cfg = self.config
        bos_id = cfg.bos_id if bos_id is None else bos_id
        eos_id = cfg.eos_id if eos_id is None else eos_id
        B = images.shape[0]
        if prompt_tokens is None:
            prompt_tokens = torch.full((B, 1), bos_id, dtype=torch.long, device=images.device)
        if prompt_tokens.shape[0] != B:
            raise ValueError(f"prompt_tokens has {prompt_tokens.shape[0]} rows for {B} images")
        lengths = (prompt_tokens != cfg.pad_id).sum(1)
        if (lengths == 0).any():
            raise ValueError("every prompt needs at least one token (the begin token)")
        max_new = min(max_new_tokens, cfg.context_length - int(lengths.max()))
        if max_new <= 0:
            raise ValueError(f"prompts of {int(lengths.max())} tokens leave no room in model.context_length={cfg.context_length}")
        memory = self.cross_attn_memory(self.image_tokens(images))
        state = _DecodingState(self, prompt_tokens, lengths, memory, max_new, use_cache,
                               never=(cfg.pad_id, bos_id))
        if num_beams == 1:
            return _greedy(state, max_new, eos_id, cfg.pad_id)
        return _beam_search(state, B, num_beams, max_new, length_penalty, eos_id, cfg.pad_id)


class _DecodingState:
    """Prompt + generated tokens of N rows, left-aligned so that all rows end together.

    Prompts are left-padded; padded keys are masked and positions count real
    tokens only, so each row sees exactly what it would see alone.
    """

    def __init__(self, model: MaMMUT, prompts: Tensor, lengths: Tensor,
                 memory: list, max_new: int, use_cache: bool, never: tuple[int, ...] = ()) -> None:
        N, P = prompts.shape
        dev = prompts.device
        shift = (P - lengths)[:, None]  # (N, 1) left padding per row
        src = torch.arange(P, device=dev)[None] - shift
        self.valid = src >= 0  # (N, P)
        left = prompts.gather(1, src.clamp(min=0)).masked_fill(~self.valid, model.config.pad_id)
        L = P + max_new
        self.key_valid = torch.cat([self.valid, self.valid.new_ones(N, max_new)], 1)  # (N, L)
        prompt_pos = (self.valid.cumsum(1) - 1).clamp(min=0)
        gen_pos = lengths[:, None] + torch.arange(max_new, device=dev)[None]
        self.positions = torch.cat([prompt_pos, gen_pos], 1)  # (N, L)
        self.model, self.memory, self.P, self.t = model, memory, P, 0
        self.never = list(never)  # tokens never generated (padding, begin)
        self.seq = left  # (N, P + t), grows
        self.cache = model.text.new_cache(N, L, memory_like(memory, model)) if use_cache else None

    def _mask(self, q_start: int, q_len: int, k_len: int) -> Tensor:
        dev = self.seq.device
        q = torch.arange(q_start, q_start + q_len, device=dev)[:, None]
        k = torch.arange(k_len, device=dev)[None]
        allowed = (k <= q)[None] & self.key_valid[:, None, :k_len]  # (N, q_len, k_len)
        allowed = allowed | (k == q)[None]  # padded rows attend to themselves: no NaN
        return allowed[:, None]  # (N, 1, q_len, k_len)

    def _run(self, tokens: Tensor, start: int) -> Tensor:
        T = tokens.shape[1]
        hidden = self.model.text.step(
            tokens, self.positions[:, start : start + T], self._mask(start, T, start + T),
            self.memory, self.cache, start,
        )
        logits = self.model.text.logits(hidden[:, -1]).float()  # (N, V)
        logits[:, self.never] = -torch.inf
        return logits

    def prefill(self) -> Tensor:
        return self._run(self.seq, 0)

    def advance(self, next_tokens: Tensor) -> Tensor:
        """Append one token per row; return the logits for the token after it."""
        self.seq = torch.cat([self.seq, next_tokens[:, None]], 1)
        self.t += 1
        if self.cache is None:  # recompute everything: the reference path
            return self._run(self.seq, 0)
        return self._run(self.seq[:, -1:], self.P + self.t - 1)

    def reorder(self, rows: Tensor) -> None:
        self.seq, self.key_valid, self.positions = self.seq[rows], self.key_valid[rows], self.positions[rows]
        self.memory = [None if m is None else (m[0][rows], m[1][rows]) for m in self.memory]
        if self.cache is not None:
            self.cache = [LayerCache(c.k[rows], c.v[rows]) for c in self.cache]


def memory_like(memory: list, model: MaMMUT) -> Tensor:
    """A tensor with the decoder's dtype/device, to allocate the cache from."""
    for m in memory:
        if m is not None:
            return m[0]
    return model.text.pos_embed


def _greedy(state: _DecodingState, max_new: int, eos_id: int, pad_id: int) -> Tensor:
    N = state.seq.shape[0]
    out = state.seq.new_full((N, max_new), pad_id)
    finished = torch.zeros(N, dtype=torch.bool, device=out.device)
    logits = state.prefill()
    for t in range(max_new):
        token = logits.argmax(-1).masked_fill(finished, pad_id)
        out[:, t] = token
        finished |= token == eos_id
        if bool(finished.all()) or t == max_new - 1:
            break
        logits = state.advance(token)
    return out


def _beam_search(state: _DecodingState, B: int, K: int, max_new: int,
                 length_penalty: float, eos_id: int, pad_id: int) -> Tensor:
    """Standard beam search: K live beams per image; finished hypotheses are scored
    by log-probability / length ** length_penalty."""
    dev = state.seq.device
    state.reorder(torch.arange(B, device=dev).repeat_interleave(K))  # (B*K) rows
    logp = F.log_softmax(state.prefill(), -1)  # (B*K, V)
    V = logp.shape[-1]
    beam_scores = torch.full((B, K), -math.inf, device=dev)
    beam_scores[:, 0] = 0.0  # identical beams at start: keep one
    tokens = torch.empty(B, K, 0, dtype=torch.long, device=dev)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = [False] * B
    for t in range(max_new):
        cand = (beam_scores[:, :, None] + logp.view(B, K, V)).view(B, K * V)
        top_scores, top_idx = cand.topk(2 * K, dim=1)  # (B, 2K)
        src_beam, token = top_idx // V, top_idx % V
        new_scores = torch.full((B, K), -math.inf, device=dev)
        new_src = torch.zeros(B, K, dtype=torch.long, device=dev)
        new_tok = torch.full((B, K), pad_id, dtype=torch.long, device=dev)
        for b in range(B):
            k = 0
            for score, beam, tok in zip(top_scores[b].tolist(), src_beam[b].tolist(), token[b].tolist()):
                if done[b] or k == K:
                    break
                if score == -math.inf:
                    continue
                if tok == eos_id or t == max_new - 1:
                    hyp = tokens[b, beam].tolist() + [tok]
                    finished[b].append((score / len(hyp) ** length_penalty, hyp))
                    continue
                new_scores[b, k], new_src[b, k], new_tok[b, k] = score, beam, tok
                k += 1
            finished[b].sort(key=lambda h: -h[0])
            finished[b] = finished[b][:K]
            if len(finished[b]) == K:  # the best live beam cannot beat the worst kept hypothesis
                best_live = new_scores[b, 0].item() / (t + 1) ** length_penalty
                done[b] = done[b] or best_live <= finished[b][-1][0]
        if all(done) or t == max_new - 1:
            break
        rows = (torch.arange(B, device=dev)[:, None] * K + new_src).view(-1)
        state.reorder(rows)
        tokens = torch.cat([tokens.view(B * K, -1)[rows].view(B, K, -1), new_tok[:, :, None]], 2)
        beam_scores = new_scores
        logp = F.log_softmax(state.advance(new_tok.view(-1)), -1)
    L = max(len(max(f, key=lambda h: h[0])[1]) for f in finished)
    out = torch.full((B, L), pad_id, dtype=torch.long, device=dev)
    for b in range(B):
        best = max(finished[b], key=lambda h: h[0])[1]
        out[b, : len(best)] = torch.tensor(best, device=dev)
    return out
