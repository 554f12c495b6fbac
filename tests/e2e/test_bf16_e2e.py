"""bf16-mixed on CPU runs the demo (a few steps, with activation checkpointing and a locked
tower), so a GPU's first bf16 run meets no trivial dtype bug."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.helpers import demo_world_args, logged_runs

pytestmark = pytest.mark.e2e


def test_demo_trains_in_bf16_mixed_with_checkpointing_and_lit(tmp_path):
    from mammut_pl.data.demo import write_demo

    world = write_demo(tmp_path / "world", tiny=True)
    args = [sys.executable, "-m", "mammut_pl.fit", "experiment=demo", *demo_world_args(world, "webdata", tmp_path),
            f"data.webdata.val_root={world}/coco", "trainer.log_every_n_steps=1",
            "trainer.precision=bf16-mixed", "trainer.max_steps=4", "trainer.val_check_interval=2",
            "data.batch_size=8", "model.grad_checkpointing=true", "model.freeze_encoder=true",
            "model.freeze_encoder_unlocked_blocks=1"]
    r = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    client, (run, *_) = logged_runs(tmp_path)
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert math.isfinite(run.data.metrics["val/caption_loss"]) and "test/t2i_R10" in run.data.metrics
    ckpt = torch.load(next(Path(tmp_path, "outputs", "demo").glob("*/checkpoints/last.ckpt")),
                      map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    weights = ckpt["state_dict"]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
