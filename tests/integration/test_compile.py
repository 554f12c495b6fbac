"""model.compile=true: the packed training step compiles whole, with no graph break and no
recompile as caption lengths change, because its data-dependent indices (TextIndex) come from
the collator; and the precomputed indices give exactly the eager losses and gradients."""

import dataclasses

import pytest
import torch
from torch._dynamo.utils import counters

from mammut_pl.data.coco import PairCollator
from mammut_pl.data.tokenizer import Tokenizer
from mammut_pl.model import MaMMUT, MaMMUTConfig
from mammut_pl.model.packing import Packing, TextIndex, real_positions


class LetterTokenizer(Tokenizer):
    """One token per letter (ids 3..28): captions of known lengths, pad 0, bos 1, eos 2."""

    vocab_size, pad_id, bos_id, eos_id = 128, 0, 1, 2

    def encode(self, text: str) -> list[int]:
        return [3 + ord(c) - ord("a") for c in text if c.isalpha()]


def brute_force_index(tokens: torch.Tensor, pad_id: int) -> tuple[list[int], list[int]]:
    """Flat positions of the real tokens (up to each row's last non-pad) and of the positions
    whose next token is not padding: loops over the rows, no tensor tricks."""
    B, T = tokens.shape
    real, caption = [], []
    for b in range(B):
        row = tokens[b].tolist()
        last = max((t for t in range(T) if row[t] != pad_id), default=-1)
        real += [b * T + t for t in range(last + 1)]
        caption += [b * T + t for t in range(T - 1) if row[t + 1] != pad_id]
    return real, caption


def items(captions: list[str]) -> list[dict]:
    return [{"image": torch.zeros(3, 32, 32), "caption": c, "image_id": i} for i, c in enumerate(captions)]


def test_the_collator_computes_the_text_index():
    tok = torch.tensor([[1, 5, 0, 6, 2, 0, 0], [1, 2, 0, 0, 0, 0, 0]])  # an inner pad id (CLIP's "!") stays
    index = TextIndex.of(tok, pad_id=0)
    assert index.real.tolist() == [0, 1, 2, 3, 4, 7, 8] and index.caption.tolist() == [0, 2, 3, 7]
    batch = PairCollator(LetterTokenizer(), 16).pairs(items(["a cat", "the red bus", "no", "a dog and a frisbee"]))
    real, caption = brute_force_index(batch["tokens"], 0)
    assert batch["tokens"].shape == (4, 16)  # the longest caption, cut at the context length
    assert batch["text_index"].real.tolist() == real and batch["text_index"].caption.tolist() == caption
    assert batch["text_index"].pad_id == 0


def test_stacked_packing_equals_the_packing_of_the_stacked_masks():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 5, generator=g) > 0.4, torch.rand(3, 5, generator=g) > 0.6
    stacked = Packing.stack([Packing.of(a), Packing.of(b)])
    reference = Packing.of(torch.cat([a, b]))  # nonzero() over the (2B, T) mask
    assert torch.equal(stacked.index, reference.index) and torch.equal(stacked.mask, reference.mask)
    assert torch.equal(real_positions(torch.tensor([[4, 0, 4, 0, 0]]), 0), torch.tensor([[True] * 3 + [False] * 2]))


@pytest.mark.parametrize("text_pool", ["mean", "mean_all"])
def test_a_precomputed_index_gives_exactly_the_same_outputs(text_pool):
    torch.manual_seed(0)
    m = MaMMUT(MaMMUTConfig.from_name("test", text_pool=text_pool)).train()
    batch = PairCollator(LetterTokenizer(), 16).pairs(items(["a cat", "the red bus", "no", "a dog and a frisbee"]))
    images, tokens = torch.randn(4, 3, 32, 32), batch["tokens"]
    torch.manual_seed(1)
    ours = m(images, tokens, packed=True, text_index=batch["text_index"])
    torch.manual_seed(1)
    own = m(images, tokens, packed=True)  # the model computes the index itself
    for key in ("image_embed", "text_embed", "caption_logits", "caption_targets"):
        assert torch.equal(ours[key], own[key]), key


def test_an_index_for_another_pad_id_is_an_error():
    m = MaMMUT(MaMMUTConfig.from_name("test"))
    tokens = torch.tensor([[1, 5, 2, 0], [1, 2, 0, 0]])
    with pytest.raises(ValueError, match="pad id 7.*model.pad_id=0"):
        m(torch.randn(2, 3, 32, 32), tokens, packed=True, text_index=TextIndex.of(tokens, pad_id=7))


CAPTIONS = ["a cat on a mat", "two dogs", "a red bus in the city street", "birds", "a man riding a wave",
            "a plate of food with rice and chicken", "a clock tower", "people on benches in a park near water"]


def test_the_compiled_step_has_no_graph_break_and_no_recompile():
    """Four batches whose text lengths T, real tokens N and caption targets M all differ: the step
    (forward, losses, backward) compiles once, whole; losses and gradients equal the eager step's."""
    from mammut_pl.tasks.pretrain import PretrainTask

    cfg = {"model": dataclasses.asdict(MaMMUTConfig.from_name("test"))}
    torch.manual_seed(0)
    eager = PretrainTask(cfg)
    torch.manual_seed(0)
    compiled = PretrainTask({**cfg, "model": {**cfg["model"], "compile": True}})
    compiled.compile_backend = "aot_eager"  # what is counted is dynamo's; no C++ build in a unit test
    collate = PairCollator(LetterTokenizer(), 16)  # the test preset's context length
    torch._dynamo.reset()
    counters.clear()
    shapes = set()
    for step in range(4):
        batch = collate.pairs(items([CAPTIONS[(step + i) % len(CAPTIONS)][: 16 - 2 * step] for i in range(4)]))
        images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(step))
        shapes.add((batch["tokens"].shape[1], len(batch["text_index"].real), len(batch["text_index"].caption)))
        for task in (eager, compiled):
            task.model.zero_grad(set_to_none=True)
            task.losses(images, batch["tokens"], batch["text_index"])["loss"].backward()
        torch.testing.assert_close(compiled.losses(images, batch["tokens"], batch["text_index"]),
                                   eager.losses(images, batch["tokens"], batch["text_index"]), atol=1e-5, rtol=1e-5)
        for (name, p), q in zip(eager.model.named_parameters(), compiled.model.parameters()):
            torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert len(shapes) == 4  # every batch has other lengths
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    # one graph for the step (1 here), at most 2 recompiles (the target); the eager task compiled nothing
    assert 1 <= counters["stats"]["unique_graphs"] <= 3
