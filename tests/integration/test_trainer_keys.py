"""Every lightning.Trainer argument the suite passes itself is either overridable with trainer.KEY=
(the command line wins) or refused in one line naming the key, never a raw
"Trainer() got multiple values for keyword argument" traceback."""

import subprocess
import sys
from types import SimpleNamespace

import lightning as L
import pytest


from mammut_pl import config as config_lib
from mammut_pl import evaluation, fit, prediction
from mammut_pl.config import ConfigError
from tests.helpers import SMALL_MODEL, demo_world_args

# what fit / evaluate / predict pass to L.Trainer themselves and keep for themselves
REFUSED = ["logger", "callbacks", "default_root_dir", "enable_checkpointing", "plugins"]


@pytest.mark.parametrize("key", REFUSED)
def test_managed_keys_refused_in_one_line(key, capsys):
    with pytest.raises(ConfigError, match=f"trainer.{key}") as err:
        config_lib.load("demo", [f"trainer.{key}=null"])
    assert "\n" not in str(err.value)
    assert fit.main(["experiment=demo", f"trainer.{key}=null"]) == 2  # the CLI: one line, exit 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"trainer.{key}" in lines[0] and "multiple values" not in lines[0]


# evaluate's own choices (one device, full precision, no summary) give way to the command line
EVAL_OVERRIDES = {"accelerator": "cpu", "devices": 1, "precision": "bf16-mixed", "enable_model_summary": True}


@pytest.mark.parametrize("key", sorted(EVAL_OVERRIDES))
def test_evaluate_trainer_keys_are_overrides(key, tmp_path):
    value = EVAL_OVERRIDES[key]
    kwargs = evaluation.eval_trainer_kwargs(tmp_path, [f"trainer.{key}={str(value).lower()}"])
    assert kwargs[key] == value
    L.Trainer(**kwargs)  # one value per argument


def test_predict_split_passes_trainer_keys(tmp_path, monkeypatch):
    """predict split=: its Trainer takes the command line's trainer.* keys (it used to drop them)."""
    seen, real = {}, L.Trainer
    cfg = config_lib.load("vqa", [])

    class Recorder:
        def __init__(self, **kwargs):
            seen.update(kwargs)
            real(**kwargs)  # the real one accepts them

        def predict(self, *args, **kwargs):
            pass

    monkeypatch.setattr(L, "Trainer", Recorder)
    monkeypatch.setattr(prediction, "build_datamodule", lambda cfg, tok: None)
    args = evaluation.trainer_overrides(["trainer.accelerator=cpu", "trainer.precision=bf16-mixed", "x.y=1"])
    prediction.predict_split(SimpleNamespace(tokenizer=None, results=[]), cfg, "val", tmp_path / "r.json", args)
    assert seen["accelerator"] == "cpu" and seen["precision"] == "bf16-mixed" and seen["devices"] == 1


@pytest.mark.e2e
def test_fit_limit_val_batches_zero(tmp_path):
    """The issue's command: trainer.limit_val_batches=0 trains without validation (no best.ckpt)
    and still tests at the end."""
    from mammut_pl.data.demo import write_demo

    world = write_demo(tmp_path / "world", tiny=True)
    args = [sys.executable, "-m", "mammut_pl.fit", "experiment=demo", "trainer.limit_val_batches=0",
            *demo_world_args(world, "webdata", tmp_path, mlflow=False), f"data.webdata.val_root={world}/coco",
            "trainer.max_steps=2", "trainer.val_check_interval=1", "data.batch_size=8", *SMALL_MODEL]
    r = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "demo").iterdir()
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and "best.ckpt" not in ckpts
    assert "zero-shot retrieval" in r.stdout  # the test at the end ran
