"""Load a trained task back from a checkpoint (for evaluate / predict / fine-tuning).

A suite checkpoint (`outputs/EXP/RUN/checkpoints/*.ckpt`) holds the resolved config
(`hyper_parameters.cfg`) and the weights. It is read with `resume.read_checkpoint`
(`weights_only=True`: a file from elsewhere cannot run code; an unusable one raises a
`CheckpointError` naming it and why). `key=value` overrides are applied on top of
the stored config (e.g. `data.root=/data/coco` to evaluate on other data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mammut_pl import config as config_lib
from mammut_pl.config import Config, ConfigError
from mammut_pl.data.builders import build_tokenizer_for
from mammut_pl.resume import CheckpointError, read_checkpoint
from mammut_pl.tasks import build_task


def checkpoint_config(ckpt: dict[str, Any], path: str | Path, overrides: list[str] | None = None) -> Config:
    """The stored config with `key=value` overrides applied and validated."""
    stored = ckpt.get("hyper_parameters", {}).get("cfg")
    if not isinstance(stored, dict):
        raise ValueError(f"{path}: holds no mammut_pl config (hyper_parameters.cfg); "
                         "for plain weights use `fit ... model.init_from=PATH` instead")
    cfg = config_lib.from_dict(stored)
    if overrides:
        base = OmegaConf.structured(cfg)
        try:
            merged = OmegaConf.merge(base, OmegaConf.from_dotlist(overrides))
        except OmegaConfBaseException as err:  # names the key, and the closest valid one
            raise config_lib._friendly(err, base, "command line") from None
        except Exception as err:  # noqa: BLE001 - unparsable dotlist
            raise ConfigError(f"bad override for the checkpoint's config: {str(err).splitlines()[0]}") from None
        cfg = config_lib.from_dict(OmegaConf.to_container(merged))
    return cfg


def load_task(path: str | Path, overrides: list[str] | None = None, task: str | None = None):
    """(config, LightningModule with the checkpoint's weights, tokenizer), in eval mode.

    `task` builds another task around the same weights (e.g. a pretraining
    checkpoint evaluated for retrieval with `task="pretrain"`). `path` may also be an openMaMMUT
    folder (hub layout): the typed defaults + overrides, with its architecture and weights."""
    from mammut_pl.model.openmammut import is_openmammut_dir

    if is_openmammut_dir(path):
        cfg = folder_config(path, overrides)
        if task:
            cfg.task = task
        return (cfg, *task_from_folder(cfg))
    ckpt = read_checkpoint(path)
    cfg = checkpoint_config(ckpt, path, overrides)
    if task:
        cfg.task = task
    module, tokenizer = task_with_weights(cfg, ckpt, path)
    return cfg, module, tokenizer


def folder_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """The config for an openMaMMUT folder: typed defaults + overrides, model.init_from=the folder
    (its architecture is adopted when the tokenizer is built), CLIP BPE."""
    return config_lib.load("", [f"model.init_from={path}", "data.tokenizer=clip", *(overrides or [])])


def task_from_folder(cfg: Config):
    """(LightningModule with the openMaMMUT folder's architecture and weights, tokenizer), in eval mode."""
    cfg.model.compile = False
    tokenizer = build_tokenizer_for(cfg)  # takes the folder's architecture
    module = build_task(cfg, tokenizer)  # loads its weights (model.init_from)
    return module.eval(), tokenizer


def task_with_weights(cfg: Config, ckpt: dict[str, Any], path: str | Path):
    """(LightningModule for `cfg` holding the checkpoint's model weights, tokenizer), in eval mode."""
    if not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a mammut_pl checkpoint (no 'state_dict')")
    cfg.model.init_from = ""  # the weights come from this checkpoint
    cfg.model.encoder_weights = ""
    cfg.model.compile = False
    tokenizer = build_tokenizer_for(cfg)
    module = build_task(cfg, tokenizer)
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    own = module.model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and own[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{path}: {len(wrong)} tensors do not fit the configured model, e.g. {wrong[0]} "
                         "(another architecture or tokenizer than the checkpoint's?)")
    missing, _ = module.model.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks {len(missing)} model tensors, e.g. {missing[:3]} "
                         "(was it trained with another architecture?)")
    load_task_head(module, ckpt, path, cfg.task)
    module.eval()
    return module, tokenizer


def load_task_head(module: Any, ckpt: dict[str, Any], path: str | Path, task: str) -> None:
    """The task's own trained tensors outside the model (the detection head: `detector.*`); a
    checkpoint without them (another task's) would leave them freshly initialised: an error."""
    head = {k: v for k, v in module.state_dict().items() if not k.startswith("model.")}
    if not head:
        return
    stored = ckpt["state_dict"]
    lacking = [k for k in head if k not in stored]
    if lacking:
        raise ValueError(f"{path}: the checkpoint lacks {len(lacking)} tensors of task={task} outside the model, "
                         f"e.g. {lacking[:2]} (a checkpoint of another task?)")
    wrong = [f"{k} {tuple(stored[k].shape)} vs {tuple(v.shape)}" for k, v in head.items() if stored[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{path}: {len(wrong)} tensors do not fit task={task}, e.g. {wrong[0]}")
    module.load_state_dict({k: stored[k] for k in head}, strict=False)


def load_image_text_model(path: str | Path, overrides: list[str], task: str = "pretrain"):
    """(config, model with encode_image / encode_text + its tokenizer and preprocessing) from a suite
    checkpoint or an openMaMMUT folder (hub layout: open_clip_config.json; its architecture, tokenizer
    and preprocessing come from that file, so only data.* reading keys and trainer.* apply)."""
    from mammut_pl.model.openmammut import is_openmammut_dir
    from mammut_pl.tasks.zeroshot import load_openmammut_folder, suite_model

    if not is_openmammut_dir(path):
        cfg, module, tokenizer = load_task(path, overrides, task=task)
        return cfg, suite_model(module.model, tokenizer, cfg)
    given = [o.split("=", 1)[0] for o in overrides]
    foreign = sorted(k for k in given if not k.startswith(("data.root", "data.eval_batch_size", "data.num_workers",
                                                          "trainer.")))
    if foreign:
        raise ConfigError(f"ckpt={path} is an openMaMMUT folder (its architecture comes from its open_clip_config.json): "
                          f"{', '.join(foreign)} do not apply; only data.root, data.eval_batch_size, "
                          "data.num_workers and trainer.* do")
    cfg = config_lib.load("", [o for o in overrides if not o.startswith("trainer.")])
    return cfg, load_openmammut_folder(path)


def export_openmammut(ckpt: str | Path, out: str | Path) -> Path:
    """A suite checkpoint -> hub-layout openMaMMUT folder (python -m mammut_pl.export); its
    architecture must be openMaMMUT-compatible and its tokenizer CLIP BPE (the fork's vocabulary)."""
    from mammut_pl.model import MaMMUT
    from mammut_pl.model.openmammut import check_compatible, save_openmammut

    obj = read_checkpoint(ckpt)
    cfg = checkpoint_config(obj, ckpt)
    if cfg.data.tokenizer != "clip":
        raise ValueError(f"{ckpt}: data.tokenizer={cfg.data.tokenizer!r}: openMaMMUT needs the CLIP BPE tokenizer")
    config = cfg.model.architecture()
    check_compatible(config)  # before building anything: names the first incompatible model.* option
    model = MaMMUT(config)
    state = {k[len("model."):]: v for k, v in obj["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{ckpt}: weights do not match its model config: missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}")
    return save_openmammut(model, out)
