"""Resume machinery without training: atomic / weights-only checkpoints, RNG state, and the
data position of both datamodules (a resumed loader continues with exactly the batches of an
uninterrupted one, with 0 and 2 workers). The real SIGKILL-and-resume run is in
test_faults_e2e.py."""

import logging
import os
import random

import numpy as np
import pytest
import torch

from mammut_pl.config import ConfigError
from mammut_pl.data.coco import CocoCaptionsDataModule
from mammut_pl.data.tokenizer import build_tokenizer
from mammut_pl.data.webdata import WebDataModule, shard_urls
from mammut_pl.resume import (AtomicCheckpointIO, CheckpointError, ResumeState, capture_rng, check_resume_checkpoint,
                              derive_seed, read_checkpoint, remove_stale_temporaries, restore_rng)
from mammut_pl.tasks.base import load_weights
from tests.helpers.checkpoints import evil_checkpoint
from tests.helpers.fuzz import PALETTE, image_bytes, write_tar


@pytest.fixture(scope="module")
def tok(world):
    return build_tokenizer(str(world / "tokenizer.json"))


# --- checkpoints ------------------------------------------------------------------------------
def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    seeds = {derive_seed(0, e, w, i) for e in range(3) for w in range(3) for i in range(50)}
    assert len(seeds) == 450 and all(0 <= s < 2**63 for s in seeds)


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    torch.save({"rng": capture_rng()}, tmp_path / "r.ckpt")
    expected = (torch.rand(4), random.random(), np.random.rand(3))
    restore_rng(read_checkpoint(tmp_path / "r.ckpt")["rng"])
    got = (torch.rand(4), random.random(), np.random.rand(3))
    assert torch.equal(expected[0], got[0]) and expected[1] == got[1] and np.array_equal(expected[2], got[2])


def test_atomic_save_never_leaves_a_partial_file(tmp_path, monkeypatch):
    io_ = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io_.save_checkpoint({"global_step": 1, "w": torch.arange(10)}, target)
    assert read_checkpoint(target)["global_step"] == 1

    def dies_mid_write(obj, f):  # a crash half-way through writing the new checkpoint
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io_.save_checkpoint({"global_step": 2}, target)
    monkeypatch.undo()
    assert read_checkpoint(target)["global_step"] == 1  # the previous complete file
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    # a temporary left by SIGKILL (no chance to clean up) is never read and is removed on resume
    (target.parent / f".last.ckpt.tmp-{os.getpid()}").write_bytes(b"partial")
    assert len(remove_stale_temporaries(target.parent)) == 1 and not list(target.parent.glob(".*"))


@pytest.mark.parametrize("content, why", [
    ("truncated", "truncated"),
    ("empty", "truncated"),
    ("text", "cannot be read as a checkpoint|truncated"),
    ("list", "not a checkpoint"),
])
def test_unusable_checkpoint_gives_one_error_naming_the_file(tmp_path, content, why):
    p = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}}, p)
    if content == "truncated":
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif content == "empty":
        p.write_bytes(b"")
    elif content == "text":
        p.write_text("epoch: 3\nstep: 1000\n")
    elif content == "list":
        torch.save([1, 2], p)
    for load in (read_checkpoint, AtomicCheckpointIO().load_checkpoint, check_resume_checkpoint):
        with pytest.raises(CheckpointError, match=why) as err:
            load(p)
        assert str(p) in str(err.value)


def test_pickled_objects_are_refused_everywhere(tmp_path):
    """init_from, Lightning's resume load (our CheckpointIO) and the pre-resume check all load with
    weights_only=True: the payload's code never runs."""
    marker = tmp_path / "code_ran"
    ckpt = evil_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(ValueError, match="model.init_from"):
        load_weights(str(ckpt))
    for load in (AtomicCheckpointIO().load_checkpoint, check_resume_checkpoint):
        with pytest.raises(CheckpointError, match="refused: it holds pickled Python objects") as err:
            load(ckpt)
        assert str(ckpt) in str(err.value)
    assert not marker.exists()
    # control: without weights_only the payload would have run
    torch.load(ckpt, weights_only=False)
    assert marker.exists()


def test_resume_check_needs_a_training_checkpoint_of_the_same_architecture(tmp_path):
    weights = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(2)}, weights)
    with pytest.raises(CheckpointError, match="model.init_from"):
        check_resume_checkpoint(weights)
    full = tmp_path / "full.ckpt"
    torch.save({"state_dict": {}, "optimizer_states": [], "loops": {},
                "hyper_parameters": {"cfg": {"model": {"width": 192, "depth": 4, "dropout": 0.0}}}}, full)
    check_resume_checkpoint(full, {"width": 192, "depth": 4, "dropout": 0.1})  # dropout: not a shape
    with pytest.raises(ConfigError, match="model.width: checkpoint 192, now 64"):
        check_resume_checkpoint(full, {"width": 64, "depth": 4})


def test_resume_state_restores_rng_at_train_start_and_stops_on_empty_epochs():
    cb = ResumeState()
    torch.manual_seed(0)
    state = cb.state_dict()
    expected = torch.rand(3)
    torch.manual_seed(123)
    cb.load_state_dict(state)
    cb.on_train_start(None, None)
    assert torch.equal(torch.rand(3), expected)
    cb.on_train_epoch_end(None, None)  # one empty epoch: fine (resumed from an epoch's last batch)
    cb.on_train_epoch_start(None, None)
    with pytest.raises(ValueError, match="no batch in 2 epochs"):
        cb.on_train_epoch_end(None, None)


def test_shell_urls_are_refused(tmp_path):
    with pytest.raises(ValueError, match="pipe:"):
        shard_urls(str(tmp_path), "pipe:curl -s http://x/{0..1}.tar")
    # object stores go through fsspec (no shell): accepted where their package is installed, else
    # one error naming what is missing (issue 18: s3://, gs://, hf:// ... shards)
    import importlib.util

    if importlib.util.find_spec("s3fs") is None:
        with pytest.raises(ValueError, match="data.webdata.shards: 's3://bucket/0.tar': cannot read s3:// URLs.*s3fs"):
            shard_urls(str(tmp_path), "s3://bucket/{0..1}.tar")
    else:
        assert shard_urls(str(tmp_path), "s3://bucket/{0..1}.tar") == ["s3://bucket/0.tar", "s3://bucket/1.tar"]


# --- data positions -------------------------------------------------------------------------------
def _shards(root, n_shards=3, per_shard=7):
    """Shards of different sizes (the last is shorter) with one bad sample each."""
    root.mkdir(exist_ok=True)
    for s in range(n_shards):
        members = []
        for i in range(per_shard - (2 if s == n_shards - 1 else 0)):
            key = f"{s:05d}{i:04d}"
            jpg = b"broken" if i == 3 else image_bytes(PALETTE[(s * 7 + i) % len(PALETTE)])
            members += [(f"{key}.jpg", jpg), (f"{key}.txt", f"shard {s} sample {i}".encode())]
        write_tar(root / f"{s:05d}.tar", members)
    return root


def _same(a, b):
    return (torch.equal(a["images"], b["images"]) and a["data_position"] == b["data_position"]
            and int(a.get("skipped", 0)) == int(b.get("skipped", 0))
            and ("tokens" not in a or torch.equal(a["tokens"], b["tokens"]))
            and ("targets" not in a or all(torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["labels"], y["labels"])
                                           for x, y in zip(a["targets"], b["targets"], strict=True))))


def _iterate(loader, n_epochs):
    """Batches of n_epochs passes over the same loader, calling set_epoch as Lightning does."""
    first = getattr(loader.sampler, "epoch", 0)
    for e in range(n_epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(first + e)
        yield from loader


def _consume(dm, n_epochs, stop_after=None):
    """What training consumes (each batch reported to the datamodule, as ResumeState does); with
    stop_after, stop after that many batches. Returns the batches and the checkpoint state."""
    out = []
    for batch in _iterate(dm.train_dataloader(), n_epochs):
        if len(out) == stop_after:
            break
        dm.consumed(batch["data_position"])
        out.append(batch)
    return out, dm.state_dict()


def _check_resume(make, full, per_epoch, ks):
    for k in ks:
        _, state = _consume(make(), 2, stop_after=k)
        resumed = make()
        resumed.load_state_dict(state)
        # after the last batch of epoch 0 (k == per_epoch) the resumed epoch 0 is empty, as in Lightning
        rest = list(_iterate(resumed.train_dataloader(), 2 if k <= per_epoch else 1))
        assert len(rest) == len(full) - k, (k, len(rest), len(full))
        assert all(_same(a, b) for a, b in zip(rest, full[k:])), k


@pytest.mark.parametrize("num_workers", [0, 2])
def test_webdata_resumes_at_the_exact_batch(tmp_path, tok, num_workers):
    root = _shards(tmp_path / "shards")
    make = lambda: WebDataModule(str(root), tok, image_size=16, context_length=16, batch_size=2,  # noqa: E731
                                 num_workers=num_workers, shuffle_buffer=5, seed=7)
    full, _ = _consume(make(), 2)
    per_epoch = len(full) // 2
    assert per_epoch >= 4 and len({b["data_position"]["worker"] for b in full}) == max(1, num_workers)
    assert sum(int(b["skipped"]) for b in full) == 6  # the bad sample of each shard, each epoch
    # mid-epoch, the epoch's last batch, the next epoch's first (2 workers: also mid round-robin)
    _check_resume(make, full, per_epoch, (1, 3, per_epoch, per_epoch + 1))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_coco_resumes_at_the_exact_batch(world, tok, num_workers):
    make = lambda: CocoCaptionsDataModule(str(world / "coco"), tok, image_size=16, context_length=24,  # noqa: E731
                                          batch_size=8, num_workers=num_workers, seed=5)
    full, _ = _consume(make(), 2)
    per_epoch = len(full) // 2
    _check_resume(make, full, per_epoch, (3, per_epoch + 2))
    # each epoch has its own order, and augmentation differs from epoch to epoch
    assert not torch.equal(full[0]["images"], full[per_epoch]["images"])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_vqav2_resumes_at_the_exact_batch(world, tok, num_workers):
    from mammut_pl.data.vqav2 import VQAv2DataModule

    make = lambda: VQAv2DataModule(str(world / "vqav2"), tok, image_size=16, context_length=24,  # noqa: E731
                                   batch_size=8, num_workers=num_workers, seed=3)
    full, _ = _consume(make(), 2)
    per_epoch = len(full) // 2
    _check_resume(make, full, per_epoch, (2, per_epoch + 1))
    assert [b["question_ids"].tolist() for b in full[:per_epoch]] != [b["question_ids"].tolist() for b in full[per_epoch:]]


@pytest.mark.parametrize("task", ["qa", "caption"])
def test_msrvtt_resumes_at_the_exact_batch(world, tok, task):
    """Random frame sampling and crops are drawn from each item's seed: the resumed clips are the same."""
    from mammut_pl.data.msrvtt import MSRVTTDataModule

    make = lambda: MSRVTTDataModule(str(world / "msrvtt"), tok, image_size=16, context_length=24,  # noqa: E731
                                    task=task, batch_size=2, num_workers=0, num_frames=4, seed=4)
    full, _ = _consume(make(), 2)
    per_epoch = len(full) // 2
    assert per_epoch >= 2
    _check_resume(make, full, per_epoch, (1, per_epoch + 1))
    assert not torch.equal(full[0]["images"], full[per_epoch]["images"])  # new order / frames each epoch


def test_lvis_resumes_at_the_exact_batch(world):
    """Large-scale jitter is drawn from each item's seed: the resumed images and boxes are the same."""
    from mammut_pl.data.lvis import LVISDataModule

    make = lambda: LVISDataModule(str(world / "lvis"), image_size=32, batch_size=4, num_workers=0, seed=6)  # noqa: E731
    full, _ = _consume(make(), 2)
    per_epoch = len(full) // 2
    assert per_epoch >= 3
    _check_resume(make, full, per_epoch, (2, per_epoch + 1))
    assert "tokens" not in full[0] and full[0]["targets"]


def test_changed_loader_settings_restart_the_epoch_with_a_warning(tmp_path, tok, caplog):
    root = _shards(tmp_path / "shards")
    dm = WebDataModule(str(root), tok, image_size=16, context_length=16, batch_size=2, num_workers=0,
                       shuffle_buffer=0)
    _, state = _consume(dm, 1, stop_after=2)
    other = WebDataModule(str(root), tok, image_size=16, context_length=16, batch_size=3, num_workers=0,
                          shuffle_buffer=0)
    with caplog.at_level(logging.WARNING):
        other.load_state_dict(state)
    assert "data position not restored (batch_size 2 -> 3" in caplog.text
    assert next(iter(other.train_dataloader()))["data_position"]["index"] <= 4  # from the start
