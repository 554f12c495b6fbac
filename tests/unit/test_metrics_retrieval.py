"""Tests for mammut_pl.metrics.retrieval.

References: a brute-force full-matrix ``argsort`` implementation of the COCO/Flickr
protocol, a hand-worked 3 x 6 example, a TorchFunctionMode that records every tensor
produced (memory bound), and a 2-process gloo run for the DDP path.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.overrides import TorchFunctionMode

from mammut_pl.metrics.retrieval import RetrievalRecall, retrieval_recall
from tests.helpers import free_port


KS = (1, 5, 10)


@pytest.fixture(autouse=True)
def _single_thread():
    # Many tiny matmuls: with intra-op threads on a busy machine, OpenMP barriers make
    # each one cost milliseconds. Single-threaded they take microseconds.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def brute_force_recall(image_embeds, text_embeds, text_to_image, ks=KS) -> dict[str, float]:
    """Full similarity matrix + argsort, as in the usual CLIP/ALBEF evaluation code."""
    sims = image_embeds @ text_embeds.T  # (N_img, N_txt)
    n_img, n_txt = sims.shape
    i2t_rank = []
    for i in range(n_img):
        order = torch.argsort(sims[i], descending=True, stable=True)
        positions = torch.nonzero(text_to_image[order] == i).flatten()
        i2t_rank.append(int(positions.min()))
    t2i_rank = []
    for j in range(n_txt):
        order = torch.argsort(sims[:, j], descending=True, stable=True)
        t2i_rank.append(int(torch.nonzero(order == text_to_image[j]).flatten()[0]))
    out = {f"i2t_R@{k}": 100.0 * sum(r < k for r in i2t_rank) / n_img for k in ks}
    out.update({f"t2i_R@{k}": 100.0 * sum(r < k for r in t2i_rank) / n_txt for k in ks})
    out["mean_R"] = sum(out.values()) / len(out)
    return out


def make_data(n_img: int, seed: int, dim: int = 4, max_caps: int = 7):
    """Random unit embeddings; 1..max_caps captions per image, texts shuffled.

    A small ``dim`` keeps recalls away from 0/100 so that the comparison is informative;
    texts are noisy copies of their image so there is real signal.
    """
    g = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(n_img, dim, generator=g), dim=1)
    counts = torch.randint(1, max_caps + 1, (n_img,), generator=g)
    text_to_image = torch.repeat_interleave(torch.arange(n_img), counts)
    text_to_image = text_to_image[torch.randperm(text_to_image.numel(), generator=g)]
    texts = images[text_to_image] + 0.8 * torch.randn(text_to_image.numel(), dim, generator=g)
    texts = torch.nn.functional.normalize(texts, dim=1)
    return images, texts, text_to_image


@pytest.mark.parametrize("n_img", [1, 7, 50, 131])
@pytest.mark.parametrize("chunk_size", [1, 3, 16, 50, 1024])
def test_matches_brute_force(n_img: int, chunk_size: int) -> None:
    images, texts, t2i = make_data(n_img, seed=n_img * 31 + chunk_size)
    got = retrieval_recall(images, texts, t2i, ks=KS, chunk_size=chunk_size)
    want = brute_force_recall(images, texts, t2i)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


def test_brute_force_comparison_is_informative() -> None:
    # Guard against a vacuous comparison (everything 0 or 100).
    images, texts, t2i = make_data(131, seed=0)
    want = brute_force_recall(images, texts, t2i)
    assert 0 < want["i2t_R@1"] < 100 and 0 < want["t2i_R@1"] < 100
    assert want["t2i_R@1"] < want["t2i_R@5"] < want["t2i_R@10"]


def test_hand_worked_3x6() -> None:
    # With one-hot images, the text embeddings are the columns of the similarity matrix.
    sims = torch.tensor(
        [
            [0.90, 0.10, 0.80, 0.30, 0.20, 0.00],  # image 0: texts 0,1
            [0.70, 0.60, 0.50, 0.20, 0.10, 0.00],  # image 1: texts 2,3
            [0.95, 0.90, 0.85, 0.80, 0.75, 0.30],  # image 2: texts 4,5
        ]
    )
    images = torch.eye(3)
    texts = sims.T.contiguous()
    t2i = torch.tensor([0, 0, 1, 1, 2, 2])
    # i2t: best positive of image 0 is 0.90 -> rank 0; image 1: 0.50 beaten by 0.70,0.60
    # -> rank 2; image 2: 0.75 beaten by 4 texts -> rank 4.
    # t2i ranks (own image's score vs the column): t0 1, t1 2, t2 2, t3 2, t4 0, t5 0.
    got = retrieval_recall(images, texts, t2i, ks=(1, 2, 5), chunk_size=2)
    want = {
        "i2t_R@1": 100 / 3, "i2t_R@2": 100 / 3, "i2t_R@5": 100.0,
        "t2i_R@1": 100 * 2 / 6, "t2i_R@2": 100 * 3 / 6, "t2i_R@5": 100.0,
    }  # fmt: skip
    want["mean_R"] = sum(want.values()) / 6
    assert got == pytest.approx(want)
    assert want["mean_R"] == pytest.approx(350 / 6)


def test_ties_count_in_favour_of_the_positive() -> None:
    # Documented convention: only strictly greater candidates push the positive down.
    images = torch.eye(2)
    texts = torch.tensor([[0.5, 0.0], [0.5, 0.0], [0.0, 1.0]])  # text 1 ties with text 0
    t2i = torch.tensor([0, 1, 1])
    got = retrieval_recall(images, texts, t2i, ks=(1,))
    assert got["i2t_R@1"] == 100.0  # image 0: positive 0.5 tied with negative 0.5
    assert got["t2i_R@1"] == pytest.approx(100 * 2 / 3)  # text 1: 0.5 (img 0) > 0.0 (img 1)


class _MaxNumelRecorder(TorchFunctionMode):
    """Records the largest tensor produced by any torch call inside the context."""

    def __init__(self) -> None:
        super().__init__()
        self.max_numel = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


def test_memory_is_bounded_by_chunk() -> None:
    n_img, caps, dim, chunk = 200, 5, 8, 32
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(n_img, dim, generator=g), dim=1)
    t2i = torch.arange(n_img).repeat_interleave(caps)
    texts = torch.nn.functional.normalize(torch.randn(n_img * caps, dim, generator=g), dim=1)
    bound = chunk * max(n_img, n_img * caps)

    with _MaxNumelRecorder() as rec:
        retrieval_recall(images, texts, t2i, chunk_size=chunk)
    assert 0 < rec.max_numel <= bound

    # The recorder does see a full similarity matrix, so the check above can fail.
    with _MaxNumelRecorder() as rec_full:
        _ = images @ texts.T
    assert rec_full.max_numel == n_img * n_img * caps > bound


def test_input_validation() -> None:
    images, texts, t2i = make_data(5, seed=1)
    with pytest.raises(ValueError, match="without any caption"):
        retrieval_recall(images, texts, torch.zeros_like(t2i))
    with pytest.raises(ValueError, match="outside"):
        retrieval_recall(images, texts, t2i + 5)
    with pytest.raises(ValueError, match="entries"):
        retrieval_recall(images, texts, t2i[:-1])


# ---------------------------------------------------------------------------------
# torchmetrics wrapper
# ---------------------------------------------------------------------------------


def _global_ids(n_img: int, t2i: torch.Tensor, seed: int):
    """Arbitrary (non-contiguous, shuffled) global ids for images and texts."""
    g = torch.Generator().manual_seed(seed)
    image_ids = 1000 + 7 * torch.randperm(n_img, generator=g)
    text_ids = 50_000 + torch.randperm(t2i.numel(), generator=g)
    return image_ids, text_ids, image_ids[t2i]


def test_metric_dedupes_and_maps_ids() -> None:
    images, texts, t2i = make_data(40, seed=3)
    image_ids, text_ids, text_image_ids = _global_ids(40, t2i, seed=3)
    want = retrieval_recall(images, texts, t2i)

    metric = RetrievalRecall()
    # Images and texts arrive in separate calls and in a different order; the first
    # samples are repeated at the end, as DistributedSampler padding does.
    img_order = torch.cat([torch.randperm(40), torch.arange(3)])
    txt_order = torch.cat([torch.randperm(t2i.numel()), torch.arange(4)])
    for chunk in img_order.split(9):
        metric.update(images[chunk], image_ids[chunk], texts[:0], text_ids[:0], text_ids[:0])
    for chunk in txt_order.split(13):
        metric.update(images[:0], image_ids[:0], texts[chunk], text_ids[chunk], text_image_ids[chunk])
    got = metric.compute()
    assert set(got) == set(want)
    for key in want:
        assert got[key].item() == pytest.approx(want[key], abs=1e-4), key


def test_metric_unknown_image_id_raises() -> None:
    metric = RetrievalRecall()
    metric.update(torch.eye(2), torch.tensor([1, 2]), torch.eye(2), torch.tensor([1, 2]), torch.tensor([1, 3]))
    with pytest.raises(ValueError, match=r"never passed to update\(\): \[3\]"):
        metric.compute()


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    # A forked child must not enter the parent's OpenMP thread pool (it would wait for
    # threads that do not exist in the child): stay single-threaded.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        images, texts, t2i = make_data(30, seed=11)
        image_ids, text_ids, text_image_ids = _global_ids(30, t2i, seed=11)
        # DistributedSampler-style split: rank r takes every world-th sample, padded to
        # equal length by wrapping around.
        def shard(n: int) -> torch.Tensor:
            per_rank = -(-n // world)
            idx = torch.arange(per_rank * world) % n
            return idx[rank::world]

        img_idx, txt_idx = shard(30), shard(t2i.numel())
        metric = RetrievalRecall()
        metric.update(images[img_idx], image_ids[img_idx], texts[txt_idx], text_ids[txt_idx], text_image_ids[txt_idx])
        result = {k: v.item() for k, v in metric.compute().items()}
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_metric_ddp_gloo(tmp_path) -> None:
    # fork: the children inherit the imported modules (spawn would re-import torch and
    # torchmetrics in each child, which dominates the runtime).
    mp.start_processes(
        _ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    images, texts, t2i = make_data(30, seed=11)
    want = retrieval_recall(images, texts, t2i)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got == pytest.approx(want, abs=1e-4)
