"""Packed text: where the real tokens and the caption targets of a right-padded batch are.

The decoder's per-token work (projections, MLPs, norms) runs on the real tokens only, packed
into (N, W) rows; attention unpacks them to (B, T, W). The indices have data-dependent sizes,
so the collator computes them on the host (TextIndex) and the compiled step takes them as inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def real_positions(tokens: Tensor, pad_id: int) -> Tensor:
    """(B, T) bool: the positions up to each row's last non-padding token.

    CLIP's pad id 0 is also the token "!", so an inner 0 stays in the sequence: the
    attention mask and the loss treat it as before. No data-dependent shape: the
    compiled step computes this itself."""
    nonpad = tokens != pad_id
    return nonpad.flip(1).cummax(1).values.flip(1)


class TextIndex(NamedTuple):
    """Where the real tokens and the caption targets of a right-padded (B, T) batch are.

    Their sizes depend on the data (nonzero()), so they are computed on the host, by the
    collator in a DataLoader worker: the training step then has no data-dependent shape
    (a compiled step has no graph break, a GPU step no host-device sync), and takes them
    as inputs whose lengths N and M are dynamic, like varlen attention's `cu_seqlens`.
    """

    real: Tensor  # (N,) flat positions b * T + t of the real tokens (real_positions)
    caption: Tensor  # (M,) flat positions whose next token is a real token: the teacher-forced inputs
    pad_id: int  # the padding id they were computed for (checked against the model's)

    @classmethod
    def of(cls, tokens: Tensor, pad_id: int) -> TextIndex:
        keep = torch.zeros_like(tokens, dtype=torch.bool)
        keep[:, :-1] = tokens[:, 1:] != pad_id  # padding targets are skipped, as in CaptionLoss
        return cls(real_positions(tokens, pad_id).flatten().nonzero().squeeze(1),
                   keep.flatten().nonzero().squeeze(1), pad_id)


class Packing:
    """The real tokens of a right-padded (B, T) batch, packed into (N, ...) rows.

    Per-token layers run on the packed rows; attention unpacks them to (B, T, ...),
    with zeros at padding that the masks and the causal order keep away from the
    real tokens. `mask` (B, T) marks the kept positions, `index` (N,) their flat
    positions b * T + t (a TextIndex's, computed on the host, or nonzero() here).
    """

    def __init__(self, tokens: Tensor, pad_id: int) -> None:
        real = real_positions(tokens, pad_id)
        self._build(real, real.flatten().nonzero().squeeze(1))

    @classmethod
    def of(cls, real: Tensor, index: Tensor | None = None) -> Packing:
        """From a (B, T) bool mask of the positions to keep, and their flat positions if known
        (else nonzero(): a host-device sync on GPU, a graph break in a compiled step)."""
        packing = cls.__new__(cls)
        packing._build(real, real.flatten().nonzero().squeeze(1) if index is None else index)
        return packing

    def _build(self, real: Tensor, index: Tensor) -> None:
        self.batch, self.length = real.shape
        self.mask = real  # (B, T) bool
        self.index = index  # (N,) flat positions b * T + t
        self.row = real.flatten().cumsum(0) - 1  # flat position -> packed row (valid where real)

    def pack(self, x: Tensor) -> Tensor:
        """(B, T, ...) -> (N, ...)."""
        return x.flatten(0, 1).index_select(0, self.index)

    def unpack(self, x: Tensor) -> Tensor:
        """(N, ...) -> (B, T, ...), zeros at padding."""
        out = x.new_zeros(self.batch * self.length, *x.shape[1:]).index_copy(0, self.index, x)
        return out.view(self.batch, self.length, *x.shape[1:])

    @staticmethod
    def stack(pieces: list[Packing]) -> Packing:
        """The pieces' rows one after the other, as one packing of the (len(pieces) * B, T) batch."""
        if len(pieces) == 1:
            return pieces[0]
        size = pieces[0].batch * pieces[0].length  # piece k's flat positions start at k * B * T
        return Packing.of(torch.cat([p.mask for p in pieces]),
                          torch.cat([p.index + k * size for k, p in enumerate(pieces)]))


def caption_targets(tokens: Tensor, pad_id: int) -> tuple[Tensor, Tensor]:
    """Teacher forcing: flat positions b * T + t whose next token is a real token
    (padding targets are skipped, as in CaptionLoss), and those next tokens."""
    positions = TextIndex.of(tokens, pad_id).caption  # (M,)
    return positions, tokens.flatten()[positions + 1]
