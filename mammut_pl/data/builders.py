"""Config -> tokenizer and LightningDataModule, one builder per `data.name`."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L

from mammut_pl.config import Config, ConfigError
from mammut_pl.data.tokenizer import Tokenizer, build_tokenizer

log = logging.getLogger("mammut_pl")


def prepare_data(cfg: Config) -> None:
    """Write the embedded demo world if this experiment runs on it and it is missing."""
    d = cfg.data
    missing = not Path(d.root).exists() or (d.zeroshot_root and not Path(d.zeroshot_root).exists())
    if d.demo and missing:  # absent, or written before a dataset was added (an older version: rewritten)
        from mammut_pl.data.demo import write_demo

        world = Path(d.root).parent
        log.info("writing the embedded demo data to %s", world)
        write_demo(world, tiny=demo_world_is_tiny(world))


def demo_world_is_tiny(world: Path) -> bool:
    try:
        return bool(json.loads((world / "manifest.json").read_text()).get("tiny", False))
    except (OSError, ValueError):
        return False


def build_tokenizer_for(cfg: Config) -> Tokenizer:
    """The tokenizer decides the model's vocabulary and special token ids (set in cfg.model)."""
    adopt_openmammut_architecture(cfg)
    tok = build_tokenizer(cfg.data.tokenizer)
    ids = dict(vocab_size=tok.vocab_size, pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id)
    changed = {k: v for k, v in ids.items() if getattr(cfg.model, k) != v}
    if changed:
        log.info("model.%s set from data.tokenizer=%s", ", model.".join(f"{k}={v}" for k, v in changed.items()),
                 cfg.data.tokenizer)
        cfg.model = dataclasses.replace(cfg.model, **ids)
    return tok


def adopt_openmammut_architecture(cfg: Config) -> None:
    """model.init_from=<openMaMMUT folder>: the model architecture is the folder's (CLIP BPE only)."""
    from mammut_pl.model.openmammut import architecture_of, is_openmammut_dir

    folder = cfg.model.init_from
    if not is_openmammut_dir(folder):
        return
    if cfg.data.tokenizer != "clip":
        raise ConfigError(f"`data.tokenizer`: {cfg.data.tokenizer!r}, but model.init_from={folder} is an "
                          "openMaMMUT folder, trained with CLIP BPE: set data.tokenizer=clip")
    arch = architecture_of(folder)
    log.info("model.init_from=%s is an openMaMMUT folder: the model architecture (model.%s) is taken from its "
             "open_clip_config.json, replacing the experiment's", folder, ", model.".join(sorted(arch)))
    cfg.model = dataclasses.replace(cfg.model, **arch)


def _common(cfg: Config, tokenizer: Tokenizer) -> dict[str, Any]:
    d, m = cfg.data, cfg.model
    return dict(tokenizer=tokenizer, image_size=m.image_size, context_length=m.context_length,
                batch_size=d.batch_size, num_workers=d.num_workers, augment=d.augment,
                crop_scale_min=d.crop_scale_min)


def _coco(cfg: Config, tokenizer: Tokenizer, root: str = "", seed: bool = True) -> L.LightningDataModule:
    from mammut_pl.data.coco import CocoCaptionsDataModule

    d, c = cfg.data, cfg.data.coco
    return CocoCaptionsDataModule(root or d.root, eval_batch_size=d.eval_batch_size, karpathy_file=c.karpathy_file,
                                  val_split=c.val_split, test_split=c.test_split, max_eval_images=c.max_eval_images,
                                  **({"seed": cfg.seed} if seed else {}), **_common(cfg, tokenizer))


def _vqav2(cfg: Config, tokenizer: Tokenizer) -> L.LightningDataModule:
    from mammut_pl.data.vqav2 import VQAv2DataModule

    d, q = cfg.data, cfg.data.vqav2
    return VQAv2DataModule(d.root, eval_batch_size=d.eval_batch_size, train_split=q.train_split,
                           val_split=q.val_split, test_split=q.test_split, predict_split=q.predict_split,
                           prompt=q.prompt, max_answer_tokens=q.max_answer_tokens,
                           max_eval_questions=q.max_eval_questions, seed=cfg.seed, **_common(cfg, tokenizer))


def _msrvtt(cfg: Config, tokenizer: Tokenizer, task: str = "caption") -> L.LightningDataModule:
    from mammut_pl.data.msrvtt import MSRVTTDataModule

    d, m, v = cfg.data, cfg.data.msrvtt, cfg.video
    return MSRVTTDataModule(d.root, task=task, eval_batch_size=d.eval_batch_size, num_frames=v.num_frames, fps=v.fps,
                            sampling=v.sampling, video_dir=m.video_dir, answer_vocab_size=v.answer_vocab_size,
                            prompt=m.prompt, max_answer_tokens=m.max_answer_tokens,
                            max_eval_questions=m.max_eval_questions, captions_file=m.captions_file,
                            retrieval_csv=m.retrieval_csv, cache_clips=v.cache_clips, test_split=m.test_split,
                            seed=cfg.seed, **_common(cfg, tokenizer))


def _webdata(cfg: Config, tokenizer: Tokenizer) -> L.LightningDataModule:
    from mammut_pl.data.webdata import WebDataModule

    d, w = cfg.data, cfg.data.webdata
    val = _coco(cfg, tokenizer, root=w.val_root, seed=False) if w.val_root else None  # read with data.coco.*
    return WebDataModule(d.root, shards=w.shards, resampled=w.resampled, steps_per_epoch=w.steps_per_epoch,
                         shuffle_buffer=w.shuffle_buffer, seed=cfg.seed, val=val, **_common(cfg, tokenizer))


def _lvis(cfg: Config, tokenizer: Tokenizer) -> L.LightningDataModule:
    from mammut_pl.data.lvis import LVISDataModule

    d, lv, t = cfg.data, cfg.data.lvis, cfg.detection
    return LVISDataModule(d.root, image_size=t.image_size, train_file=lv.train_file, val_file=lv.val_file,
                          test_file=lv.test_file, base_only=t.base_only, jitter=(lv.jitter_min, lv.jitter_max),
                          batch_size=d.batch_size, eval_batch_size=d.eval_batch_size, num_workers=d.num_workers,
                          max_eval_images=lv.max_eval_images, seed=cfg.seed)


BUILDERS: dict[str, Callable[..., L.LightningDataModule]] = {
    "coco": _coco, "vqav2": _vqav2, "msrvtt": _msrvtt, "webdata": _webdata, "lvis": _lvis}


def build_datamodule(cfg: Config, tokenizer: Tokenizer, **options: Any) -> L.LightningDataModule:
    """The datamodule of `data.name`; `options` are the task's own datamodule arguments
    (TaskSpec.datamodule_options, e.g. MSRVTT's task="qa")."""
    if cfg.data.name not in BUILDERS:
        raise ConfigError(f"`data.name`: {cfg.data.name!r} has no datamodule for task {cfg.task!r}")
    return BUILDERS[cfg.data.name](cfg, tokenizer, **options)


def has_eval_data(datamodule: Any) -> bool:
    """False for web shards without data.webdata.val_root (no validation / test loop then)."""
    return bool(getattr(datamodule, "has_eval_data", True))
