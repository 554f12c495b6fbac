"""Scale-out pieces that need several processes but no training: webdataset shards split over
2 gloo ranks x 2 DataLoader workers (each sample once per epoch; resampled mode: the same
number of batches on every rank, so uneven shards cannot hang DDP), and the demo world
written once when several processes (DDP ranks, sweep workers) ask for it at the same time."""

import io
import json
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.ddp
SHARD_SIZES = (2, 3, 4, 5, 6)  # uneven on purpose: rank 0 gets shards 0, 2, 4 (12 samples), rank 1 8


def write_shards(root: Path, sizes=SHARD_SIZES) -> list[str]:
    """img2dataset-like shards KEY.png + KEY.txt; each caption names its sample's key."""
    root.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buf, format="PNG")
    png = buf.getvalue()
    urls = []
    for s, n in enumerate(sizes):
        path = root / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(n):
                key = f"{s * 10000 + i:09d}"
                for ext, data in (("png", png), ("txt", f"sample {key}".encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        urls.append(str(path))
    return urls


def _no_transform(img):
    return 0


def _captions(items):
    return {"captions": [it["caption"] for it in items], "skipped": sum(it["skipped"] for it in items)}


def _rank_main(rank, world, urls, out):
    from tests.helpers.ddp_group import gloo_group

    with gloo_group(rank, world, out):
        _rank_batches(rank, urls, out)


def _rank_batches(rank, urls, out):
    from torch.utils.data import DataLoader

    from mammut_pl.data.webdata import WebDataModule, WebPairStream

    got = {}
    for mode, resampled, batch_size in (("disjoint", False, 1), ("resampled", True, 2)):
        stream = WebPairStream(urls, _no_transform, _captions, batch_size, shuffle_buffer=4, seed=0,
                               resampled=resampled, batches_per_epoch=5)
        # disjoint: workers started by spawn (the default in a process mp.spawn started), which have no
        # process group; resampled: fork (quicker to start)
        loader = DataLoader(stream, batch_size=None, num_workers=2, persistent_workers=True,
                            multiprocessing_context="fork" if resampled else None)
        got[mode] = [[b["captions"] for b in loader] for _ in range(2)]  # two epochs
        del loader  # its persistent workers are stopped and joined now, before the group goes, not at exit
    try:  # fewer shards than ranks, not resampled: refused before any rank waits forever
        WebDataModule(str(Path(urls[0]).parent), None, 8, 8, shards=Path(urls[0]).name).train_dataloader()
    except ValueError as err:
        got["refused"] = str(err)
    Path(out, f"rank{rank}.json").write_text(json.dumps(got))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """2 gloo ranks x 2 DataLoader workers over 5 uneven shards: each mode's batches, per rank and epoch."""
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("ranks")
    urls = write_shards(tmp / "shards")
    mp.spawn(_rank_main, args=(2, urls, str(tmp)), nprocs=2, join=True)
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]


def test_shards_split_over_ranks_and_workers_each_sample_once_per_epoch(ranks):
    every = {f"sample {s * 10000 + i:09d}" for s, n in enumerate(SHARD_SIZES) for i in range(n)}
    for epoch in range(2):
        seen = [[c for batch in r["disjoint"][epoch] for c in batch] for r in ranks]
        counts = Counter(seen[0] + seen[1])
        assert set(counts) == every and set(counts.values()) == {1}, counts  # each sample exactly once
        # rank r reads shards r, r + 2, ...: uneven shards give the ranks 12 and 8 samples
        assert (len(seen[0]), len(seen[1])) == (12, 8)
    assert ranks[0]["disjoint"][0] != ranks[0]["disjoint"][1]  # reshuffled each epoch
    assert "1 shard(s) for 2 ranks" in ranks[0]["refused"] and "data.webdata.resampled=true" in ranks[0]["refused"]


def test_resampled_gives_every_rank_the_same_number_of_steps(ranks):
    for r in ranks:
        assert [len(e) for e in r["resampled"]] == [5, 5]  # N steps on every rank, every epoch: no DDP hang
        assert all(len(batch) == 2 for e in r["resampled"] for batch in e)
    assert ranks[0]["resampled"][0] != ranks[1]["resampled"][0]  # the ranks draw different samples


def test_concurrent_demo_writers_write_the_world_once(tmp_path):
    """Three processes (e.g. DDP ranks started by torchrun) ask for the same demo world at once:
    one writes it, the others wait and reuse it; no temporary folder is left behind."""
    code = "import sys; from mammut_pl.data.demo import write_demo; write_demo(sys.argv[1], tiny=True)"
    out = tmp_path / "world"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], logs
    assert sum("demo data written to" in log for log in logs) == 1, logs
    assert sum("demo data already at" in log for log in logs) == 2, logs
    assert json.loads((out / "manifest.json").read_text())["tiny"] is True
    assert not [p.name for p in tmp_path.iterdir() if p.name != "world"]
