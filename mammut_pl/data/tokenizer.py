"""Text tokenizers: one small interface over open_clip's CLIP BPE and HuggingFace `tokenizers` files.

Every tokenizer lays a batch out the same way, which the model and the losses rely on:

    [bos] + encode(text)[: context_length - 2] + [eos] + [pad] * ...

so the eos token is always present (the contrastive pass pools at it) and padding is `pad_id`.

`build_tokenizer(spec)` turns the config value `data.tokenizer` into a tokenizer:
"clip" -> the CLIP BPE bundled with open_clip (offline), or a path to a `tokenizer.json`.
`train_tokenizer(texts, path)` learns a small WordPiece vocabulary (used by the demo world).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    import torch

__all__ = ["Tokenizer", "ClipTokenizer", "HFTokenizer", "build_tokenizer", "train_tokenizer", "SPECIAL_TOKENS"]

# Special tokens of our own tokenizer.json files; [PAD] is id 0 so zero-initialised buffers are padding.
PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
REQUIRED_SPECIAL_TOKENS = (PAD, BOS, EOS)  # [UNK] is optional: byte-level vocabularies have no unknowns

# Decoders leave a space before punctuation ("left , and"); join it back for readable text.
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:%)\]}])")
_SPACE_AFTER_OPEN = re.compile(r"([(\[{])\s+")
_SPACED_CONTRACTION = re.compile(r"\s*'\s*(s|t|m|re|ve|ll|d)\b", re.IGNORECASE)


def _clean_text(text: str) -> str:
    text = " ".join(text.split())
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _SPACE_AFTER_OPEN.sub(r"\1", text)
    return _SPACED_CONTRACTION.sub(r"'\1", text)


class Tokenizer:
    """Abstract tokenizer: `encode`/`_decode_ids` are per backend, the batch layout is shared."""

    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int
    # True where pad_id is also an ordinary token (CLIP pads with 0 = "!"): then only trailing pads are dropped.
    pad_is_token: bool = False

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""
        raise NotImplementedError

    def _decode_ids(self, ids: list[int]) -> str:
        """Backend decode of content ids (no specials)."""
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of a token sequence: stops at the first eos, drops bos and padding, cleans spacing."""
        if hasattr(ids, "tolist"):  # torch.Tensor / np.ndarray
            ids = ids.tolist()
        content: list[int] = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i == self.bos_id or (i == self.pad_id and not self.pad_is_token):
                continue
            content.append(i)
        if self.pad_is_token:
            while content and content[-1] == self.pad_id:
                content.pop()
        return _clean_text(self._decode_ids(content))

    def batch_decode(self, batch: Sequence[Sequence[int]] | torch.Tensor) -> list[str]:
        return [self.decode(row) for row in batch]

    def __call__(self, texts: Sequence[str], context_length: int, pad_to_longest: bool = False) -> torch.Tensor:
        """(B, T) LongTensor; T = context_length, or the longest row when `pad_to_longest`."""
        import torch  # lazily: the demo writer and tokenizer training do not need torch

        if isinstance(texts, str):
            texts = [texts]
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 to hold bos and eos, got {context_length}")
        rows = [[self.bos_id, *ids[: context_length - 2], self.eos_id] for ids in self.encode_batch(list(texts))]
        length = max((len(r) for r in rows), default=2) if pad_to_longest else context_length
        out = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        for b, row in enumerate(rows):
            out[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(vocab_size={self.vocab_size}, pad_id={self.pad_id}, "
                f"bos_id={self.bos_id}, eos_id={self.eos_id})")


class ClipTokenizer(Tokenizer):
    """CLIP's lower-cased BPE (49408 tokens) as shipped in open_clip's wheel; works offline."""

    pad_is_token = True

    def __init__(self) -> None:
        # open_clip imports torchvision/timm (seconds): import only when a CLIP tokenizer is asked for.
        from open_clip.tokenizer import SimpleTokenizer

        self._tok = SimpleTokenizer()
        self.vocab_size = len(self._tok.encoder)  # 49408
        self.bos_id = self._tok.sot_token_id  # 49406 <start_of_text>
        self.eos_id = self._tok.eot_token_id  # 49407 <end_of_text>
        self.pad_id = 0  # open_clip pads with 0

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text))

    def _decode_ids(self, ids: list[int]) -> str:
        return self._tok.decode(ids)


class HFTokenizer(Tokenizer):
    """A HuggingFace `tokenizers` tokenizer.json with [PAD] [BOS] [EOS] (and usually [UNK]) tokens."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer as _HFTok

        self.path = Path(path)
        try:
            tok = _HFTok.from_file(str(self.path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise ValueError(f"{self.path}: not a readable HuggingFace tokenizer.json ({e})") from e
        self._init_from(tok)

    @classmethod
    def from_tokenizer(cls, tok, path: str | Path | None = None) -> "HFTokenizer":
        self = cls.__new__(cls)
        self.path = Path(path) if path is not None else None
        self._init_from(tok)
        return self

    def _init_from(self, tok) -> None:
        ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t in REQUIRED_SPECIAL_TOKENS if ids[t] is None]
        if missing:
            raise ValueError(
                f"{self.path or 'tokenizer'}: special token(s) {', '.join(missing)} missing from the vocabulary; "
                f"a tokenizer.json for mammut_pl needs {', '.join(REQUIRED_SPECIAL_TOKENS)} (and usually {UNK})"
            )
        self._tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.pad_id, self.bos_id, self.eos_id = ids[PAD], ids[BOS], ids[EOS]
        self.unk_id: int | None = ids[UNK]

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def _decode_ids(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)


def build_tokenizer(spec: str | Path) -> Tokenizer:
    """`data.tokenizer` -> Tokenizer: "clip", or a path to a tokenizer.json (or a folder holding one)."""
    if isinstance(spec, str) and spec.strip().lower() == "clip":
        return ClipTokenizer()
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "tokenizer.json").is_file():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"tokenizer file not found: {str(path)!r}; data.tokenizer expects \"clip\" or a path to a "
            f"HuggingFace tokenizer.json (e.g. the demo's DIR/tokenizer.json)"
        )
    return HFTokenizer(path)


# --- training -------------------------------------------------------------------------------------------------

def _empty_wordpiece(vocab: dict[str, int] | None = None):
    """The tokenizer pipeline of our files: BERT normaliser (lower-case) + BERT pre-tokeniser, WordPiece."""
    from tokenizers import Tokenizer as _HFTok, decoders, models, normalizers, pre_tokenizers, processors

    tok = _HFTok(models.WordPiece(vocab=vocab or {UNK: 0}, unk_token=UNK, max_input_chars_per_word=100))
    if vocab:
        tok.add_special_tokens(list(SPECIAL_TOKENS))  # marks the existing ids as special (skipped on decode)
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # splits on whitespace and punctuation
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # "circ ##le" -> "circle"
    if vocab:
        # For HF-native users (encode(add_special_tokens=True)); mammut_pl adds bos/eos itself.
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} $B {EOS}",
            special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])],
        )
    return tok


def train_tokenizer(texts: Iterable[str], path: str | Path, vocab_size: int = 1000) -> HFTokenizer:
    """Learn a small WordPiece vocabulary from `texts`, save it as a tokenizer.json at `path`, return it.

    Layout: [PAD]=0 [UNK]=1 [BOS]=2 [EOS]=3, then single characters (printable ASCII plus any seen) with
    their "##" continuations, then whole words by descending frequency (ties alphabetical) up to
    `vocab_size`. Words outside the vocabulary fall back to characters, so nothing common becomes [UNK].

    The counting is done here rather than with `tokenizers.trainers.WordPieceTrainer` because that trainer
    breaks frequency ties in hash-map order: the same texts give different vocabularies from run to run.
    Normalisation and pre-tokenisation are the library's own, so training and encoding split words alike.
    """
    path = Path(path)
    tok = _empty_wordpiece()
    normalizer, pre_tok = tok.normalizer, tok.pre_tokenizer
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in pre_tok.pre_tokenize_str(normalizer.normalize_str(text)))

    seen_chars = {c for w in counts for c in w}
    alphabet = sorted(set(string.ascii_lowercase + string.digits + string.punctuation) | seen_chars)
    pieces = list(SPECIAL_TOKENS) + alphabet + ["##" + c for c in alphabet if c not in string.punctuation]
    if vocab_size < len(pieces):
        raise ValueError(f"vocab_size={vocab_size} is below the {len(pieces)} special and character tokens")
    taken = set(pieces)
    for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(pieces) >= vocab_size:
            break
        if word not in taken:
            pieces.append(word)
            taken.add(word)
    vocab = {p: i for i, p in enumerate(pieces)}

    tok = _empty_wordpiece(vocab)
    path.parent.mkdir(parents=True, exist_ok=True)
    # tokenizers writes the vocabulary in id order, so identical texts give a byte-identical file.
    text = json.dumps(json.loads(tok.to_str()), indent=1, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")
    return HFTokenizer(path)
