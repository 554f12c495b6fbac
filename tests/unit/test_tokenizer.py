"""Tokenizers: batch layout, round trips, errors, deterministic training."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mammut_pl.data.tokenizer import ClipTokenizer, HFTokenizer, build_tokenizer, train_tokenizer

SENTENCES = [
    "a red circle on the left and two blue squares",
    "is there a yellow star?",
    "question: what color is the triangle? answer: red.",
    "an orange cross moves to the right, then a white square appears",
]
CORPUS = SENTENCES * 3 + ["how many shapes are there?", "a picture of a small purple circle", "green stars"]


@pytest.fixture(scope="module")
def clip() -> ClipTokenizer:
    return build_tokenizer("clip")


@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> HFTokenizer:
    return train_tokenizer(CORPUS, tmp_path_factory.mktemp("tok") / "tokenizer.json", vocab_size=300)


@pytest.fixture(params=["clip", "hf"])
def tok(request, clip, hf):
    return clip if request.param == "clip" else hf


def test_clip_ids(clip):
    assert isinstance(clip, ClipTokenizer)
    assert (clip.vocab_size, clip.bos_id, clip.eos_id, clip.pad_id) == (49408, 49406, 49407, 0)


def test_hf_special_ids(hf):
    assert (hf.pad_id, hf.unk_id, hf.bos_id, hf.eos_id) == (0, 1, 2, 3)
    assert hf.vocab_size <= 300


@pytest.mark.parametrize("text", SENTENCES)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert ids and tok.bos_id not in ids and tok.eos_id not in ids  # encode adds no special tokens
    assert tok.decode(ids) == text
    assert tok.decode(tok([text], context_length=64)[0]) == text


def test_decode_is_readable(hf):
    # WordPiece continuations are joined, punctuation attached
    assert hf.decode(hf.encode("A Zebra CIRCLE, on the (left)!")) == "a zebra circle, on the (left)!"


def test_layout(tok):
    out = tok(SENTENCES, context_length=40)
    assert out.dtype == torch.long and out.shape == (len(SENTENCES), 40)
    for row, text in zip(out.tolist(), SENTENCES):
        ids = tok.encode(text)
        assert row[: len(ids) + 2] == [tok.bos_id, *ids, tok.eos_id]
        assert all(i == tok.pad_id for i in row[len(ids) + 2:])


def test_truncation_keeps_eos_last(tok):
    text = " ".join(["red circle"] * 30)
    row = tok([text], context_length=8)[0].tolist()
    assert len(row) == 8 and row[0] == tok.bos_id and row[-1] == tok.eos_id
    assert row[1:-1] == tok.encode(text)[:6]
    assert tok.decode(row) == "red circle red circle red circle"
    with pytest.raises(ValueError, match="context_length"):
        tok(["x"], context_length=1)


def test_pad_to_longest(tok):
    texts = ["red", "a red circle on the left"]
    out = tok(texts, context_length=50, pad_to_longest=True)
    assert out.shape == (2, len(tok.encode(texts[1])) + 2)
    assert out[0, -1].item() == tok.pad_id and out[1, -1].item() == tok.eos_id
    # capped at context_length
    assert tok(texts, context_length=4, pad_to_longest=True).shape == (2, 4)


def test_decode_stops_at_eos_and_drops_specials(tok):
    ids = [tok.bos_id, *tok.encode("a red circle"), tok.eos_id, *tok.encode("garbage after eos"), tok.pad_id]
    assert tok.decode(ids) == "a red circle"
    assert tok.decode(torch.tensor(ids)) == "a red circle"
    assert tok.batch_decode(tok(["a red circle", "two stars"], context_length=12)) == ["a red circle", "two stars"]


def test_pickle(tok):
    # DataLoader workers receive the tokenizer by pickling
    again = pickle.loads(pickle.dumps(tok))
    assert torch.equal(again(SENTENCES, 32), tok(SENTENCES, 32))


def test_build_from_path_and_folder(hf):
    assert isinstance(build_tokenizer(str(hf.path)), HFTokenizer)
    from_folder = build_tokenizer(hf.path.parent)
    assert from_folder.encode(SENTENCES[0]) == hf.encode(SENTENCES[0])


def test_missing_file(tmp_path):
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(FileNotFoundError) as e:
        build_tokenizer(str(missing))
    assert str(missing) in str(e.value) and "data.tokenizer" in str(e.value) and '"clip"' in str(e.value)


def test_missing_special_token(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    t = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "red": 3}, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    t.save(str(path))
    with pytest.raises(ValueError) as e:
        build_tokenizer(path)
    assert str(path) in str(e.value) and "[EOS]" in str(e.value)


def test_unreadable_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        build_tokenizer(path)


def test_train_is_deterministic(tmp_path):
    a = train_tokenizer(CORPUS, tmp_path / "a.json", vocab_size=120)
    train_tokenizer(CORPUS, tmp_path / "b.json", vocab_size=120)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    # and across processes (the tokenizers trainer breaks ties in hash order; ours must not)
    code = ("import json, sys; from mammut_pl.data.tokenizer import train_tokenizer; "
            "train_tokenizer(json.loads(sys.argv[1]), sys.argv[2], vocab_size=120)")
    subprocess.run([sys.executable, "-c", code, json.dumps(CORPUS), str(tmp_path / "c.json")], check=True)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "c.json").read_bytes()
    assert a.vocab_size == 120  # capped: the most frequent words are kept, the rest spelled by characters
    assert a.decode(a.encode("purple triangle")) == "purple triangle"


def test_train_vocab_too_small(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(CORPUS, tmp_path / "t.json", vocab_size=10)


def test_trained_file_is_plain_hf(hf):
    # usable from the tokenizers library alone, with bos/eos added by its post-processor
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(hf.path))
    enc = t.encode("red circle")
    assert enc.ids[0] == hf.bos_id and enc.ids[-1] == hf.eos_id
    assert t.decode(enc.ids) == "red circle"
    assert Path(hf.path).read_text().count("[EOS]") >= 1
