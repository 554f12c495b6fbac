"""A full disk during training: the checkpoint save that fails with ENOSPC stops the run with one
line naming the file, the previous last.ckpt stays loadable, no temporary is left behind after
the next start, and `ckpt_path=last` resumes from it.

The disk fills at the file-write level (a write past a byte budget raises OSError(ENOSPC), as
a full tmpfs does): torch.save then reports a RuntimeError whose context is that OSError,
exactly what a real full disk gives."""

import errno
import os
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

from mammut_pl import config as config_lib
from mammut_pl import fit, resume, runtime
from mammut_pl.resume import check_resume_checkpoint, read_checkpoint
from tests.helpers import SMALL_MODEL

pytestmark = pytest.mark.e2e


class FullDiskFile:
    """A file whose writes fail with ENOSPC once `budget` bytes are written (the first ones land)."""

    def __init__(self, f, budget: int) -> None:
        self._f, self._budget = f, budget

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if n > self._budget:
            self._f.write(bytes(memoryview(data).cast("B")[: self._budget]))
            self._budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


class Steps(Callback):
    def __init__(self) -> None:
        self.start, self.batches = None, 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = trainer.global_step

    def on_train_batch_end(self, trainer, *args) -> None:
        self.batches += 1


def test_enospc_on_save_stops_cleanly_and_resumes(tmp_path, monkeypatch, capsys):
    from mammut_pl.data.demo import write_demo

    world = write_demo(tmp_path / "world", tiny=True)
    overrides = [f"data.root={world}/webdata", f"data.webdata.val_root={world}/coco", f"data.tokenizer={world}/tokenizer.json",
                 f"output_dir={tmp_path}/outputs", "mlflow.enabled=false", "data.num_workers=0", "data.batch_size=8",
                 "trainer.enable_progress_bar=false", "trainer.limit_val_batches=0", "checkpoint_every_n_steps=2",
                 "trainer.max_steps=6", *SMALL_MODEL]
    saves = []
    real_open = open

    def disk_fills_after_first_save(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "w" in mode:
            saves.append(Path(path).name)
            if len(saves) >= 2:  # the step-2 save lands, the step-4 one finds the disk full
                return FullDiskFile(f, budget=4096)
        return f

    monkeypatch.setattr(resume, "open", disk_fills_after_first_save, raising=False)
    assert fit.main(["experiment=demo", *overrides]) == 1
    monkeypatch.undo()
    err = capsys.readouterr().err
    (run,) = (tmp_path / "outputs" / "demo").iterdir()
    last = run / "checkpoints" / "last.ckpt"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert f"cannot save checkpoint {last}" in errors[0] and "no space left on device" in errors[0]
    assert "the previous last.ckpt is kept" in errors[0]
    assert len(saves) == 2  # it stopped at the failed save, no retry loop

    # the previous checkpoint is whole and resumable; the failed save left no temporary
    assert read_checkpoint(last)["global_step"] == 2
    check_resume_checkpoint(last)
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]

    # a temporary as a SIGKILL mid-save would leave: gone once the run starts again
    (last.parent / ".last.ckpt.tmp-999999").write_bytes(b"PK\x03\x04 partial")
    steps = Steps()
    runtime.run(config_lib.load("demo", [*overrides, "ckpt_path=last"]), extra_callbacks=[steps], report=False)
    assert steps.start == 2 and steps.batches == 4  # resumed from the kept step-2 checkpoint
    assert read_checkpoint(last)["global_step"] == 6
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
    assert [p.name for p in (tmp_path / "outputs" / "demo").iterdir()] == [run.name]
