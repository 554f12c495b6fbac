"""Zero-shot classification as a Lightning test loop (`evaluate task=zeroshot`) and as a validation
callback during pretraining (`data.zeroshot_root`: `val/zeroshot_top1`, as open_clip's --imagenet-val).

Any model with `encode_image(images)` and `encode_text(tokens)` works: a suite checkpoint's MaMMUT or
an openMaMMUT folder (hub layout, `open_clip_config.json`) loaded by `mammut_pl.model.load_openmammut`
with the CLIP tokenizer and image preprocessing its config names."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from mammut_pl.config import Config, ConfigError
from mammut_pl.data.imagefolder import image_folder_loader
from mammut_pl.metrics.zeroshot import ZeroShotAccuracy
from mammut_pl.tasks.registry import EvalSpec, register_eval
from mammut_pl.zeroshot import build_classifier, class_names, read_templates, zero_shot_logits

log = logging.getLogger(__name__)
SUITE = "mammut_pl checkpoint"
REPORTED = ("top1", "top5", "mean_per_class_recall")


@dataclass
class ImageTextModel:
    """What zero-shot evaluation needs from a checkpoint (checkpoint.load_image_text_model)."""

    model: nn.Module  # encode_image (B, 3, H, W) -> (B, D), encode_text (B, T) -> (B, D)
    tokenize: Callable[[list[str]], Tensor]  # texts -> (B, T) token ids
    transform: Callable[[Any], Tensor]  # PIL image -> (3, H, W), the model's evaluation preprocessing
    kind: str  # SUITE | "openMaMMUT folder"


def load_openmammut_folder(path: str | Path) -> ImageTextModel:
    """An openMaMMUT hub folder: weights through load_openmammut, the CLIP tokenizer at the config's
    context length (open_clip pads to it: the contrastive pass averages over every position), and
    open_clip's evaluation transform from the config's image size and preprocess_cfg."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from mammut_pl.model.openmammut import load_openmammut, read_folder_config

    model_cfg, preprocess_cfg = read_folder_config(path)
    size = model_cfg["vision_cfg"].get("image_size")
    if not isinstance(size, (int, list, tuple)):
        raise ValueError(f"{path}: expected model_cfg.vision_cfg.image_size in its open_clip_config.json, got {size!r}")
    known = set(PreprocessCfg.__dataclass_fields__)
    preprocess = PreprocessCfg(**{"size": size, **{k: v for k, v in preprocess_cfg.items() if k in known}})
    return ImageTextModel(model=load_openmammut(path, model_cfg).eval(), tokenize=open_clip.get_tokenizer(f"local-dir:{path}"),
                         transform=image_transform_v2(preprocess, is_train=False), kind="openMaMMUT folder")


def suite_model(model: nn.Module, tokenizer: Any, cfg: Config) -> ImageTextModel:
    """A suite checkpoint's MaMMUT with its tokenizer and evaluation transform."""
    from mammut_pl.data.transforms import image_transform

    # an openMaMMUT-style contrastive pass (text_pool "mean_all") averages every context position,
    # padding included: its texts must be padded to the full context, as open_clip's tokenizer does
    full = getattr(getattr(model, "config", None), "text_pool", "mean") == "mean_all"
    return ImageTextModel(model, suite_tokenize(tokenizer, cfg.model.context_length, not full),
                          image_transform(cfg.model.image_size, train=False), SUITE)


def suite_tokenize(tokenizer: Any, context_length: int, pad_to_longest: bool = True) -> Callable[[list[str]], Tensor]:
    # the suite's default contrastive pass masks padding: padding to the longest text is exact (and short)
    return lambda texts: tokenizer(texts, context_length, pad_to_longest=pad_to_longest)


# --- the test loop -----------------------------------------------------------------------------------
class ZeroShotTask(L.LightningModule):
    """Builds the classifier once per test run, then scores every (images, labels) batch."""

    def __init__(self, model: nn.Module, tokenize: Callable[[list[str]], Tensor], classnames: list[str],
                 templates: list[str], text_batch_size: int = 1000) -> None:
        super().__init__()
        self.model, self.tokenize = model, tokenize
        self.classnames, self.templates, self.text_batch_size = list(classnames), list(templates), text_batch_size
        self.accuracy = ZeroShotAccuracy(len(classnames))
        self.classifier: Tensor | None = None
        self.results: dict[str, Tensor] = {}

    def on_test_epoch_start(self) -> None:
        log.info("zero-shot classifier: %d classes x %d templates", len(self.classnames), len(self.templates))
        self.classifier = build_classifier(self.model.encode_text, self.tokenize, self.classnames, self.templates,
                                           self.text_batch_size, self.device)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.accuracy.update(zero_shot_logits(self.model.encode_image(images), self.classifier), labels)

    def on_test_epoch_end(self) -> None:
        self.results = {k: v.detach().cpu() for k, v in self.accuracy.compute().items()}  # summed over ranks
        for k in REPORTED:
            self.log(f"test/{k}", self.results[k].float())
        self.accuracy.reset()


# --- during pretraining --------------------------------------------------------------------------------
class ZeroShotValidation(Callback):
    """Zero-shot top-1 / top-5 on an ImageFolder after each validation (`val/zeroshot_top1`,
    `val/zeroshot_top5`) and after the test run that follows training (`test/zeroshot_*`, the final
    weights); the classifier is rebuilt from the current weights with the task's own tokenizer.
    Under DDP each rank scores every world-th batch and the counts are summed."""

    def __init__(self, root: str, classnames: str = "", templates: str = "openai", batch_size: int = 64,
                 num_workers: int = 0) -> None:
        self.root, self.classnames_spec, self.templates_spec = root, classnames, templates
        self.batch_size, self.num_workers = batch_size, num_workers
        self.loader: Any = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # read the folder, names and templates now: a bad path fails before any training
        self.loader = image_folder_loader(self.root, pl_module.cfg.model.image_size, self.batch_size, self.num_workers)
        self.classnames, self.names_from = class_names(self.loader.dataset.folders, self.classnames_spec)
        self.templates = read_templates(self.templates_spec)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.score(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.score(trainer, pl_module, "test")

    @torch.no_grad()
    def score(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        start = time.perf_counter()
        zs = suite_model(pl_module.model, pl_module.tokenizer, pl_module.cfg)
        model, tokenize, device = zs.model, zs.tokenize, pl_module.device
        metric = ZeroShotAccuracy(len(self.classnames)).to(device)
        with trainer.precision_plugin.forward_context():
            classifier = build_classifier(model.encode_text, tokenize, self.classnames, self.templates, device=device)
            for i, (images, labels) in enumerate(self.loader):
                if i % trainer.world_size == trainer.global_rank:
                    logits = zero_shot_logits(model.encode_image(images.to(device)), classifier)
                    metric.update(logits, labels.to(device))
        scores = metric.compute()  # synced across ranks
        pl_module.log(f"{stage}/zeroshot_top1", scores["top1"].float())
        pl_module.log(f"{stage}/zeroshot_top5", scores["top5"].float())
        log.info("%s zero-shot: %d images, %d classes x %d templates: top-1 %.1f (%.1f s)", stage,
                 len(self.loader.dataset), len(self.classnames), len(self.templates), scores["top1"],
                 time.perf_counter() - start)


# --- one evaluation ------------------------------------------------------------------------------------
def run_zeroshot(zs: ImageTextModel, root: str, classnames: str = "", templates: str = "openai",
                 batch_size: int = 64, num_workers: int = 2, trainer_kwargs: dict[str, Any] | None = None,
                 text_batch_size: int = 1000) -> dict[str, Any]:
    """Score `zs` on the ImageFolder `root`; the report's data part, metrics and per-class results."""
    loader = image_folder_loader(root, batch_size=batch_size, num_workers=num_workers, transform=zs.transform)
    folders = loader.dataset.folders
    names, names_from = class_names(folders, classnames)
    prompts = read_templates(templates)
    task = ZeroShotTask(zs.model, zs.tokenize, names, prompts, text_batch_size)
    trainer = L.Trainer(**{"accelerator": "auto", "devices": 1, "precision": "32-true", "logger": False,
                           "enable_checkpointing": False, "enable_model_summary": False, **(trainer_kwargs or {})})
    trainer.test(task, dataloaders=loader, verbose=False)
    if not trainer.is_global_zero:
        return {}
    r = task.results
    per_class = [{"class": i, "folder": f, "name": n, "images": int(r["images"][i]),
                  "top1": float(r["recall@1"][i]), "top5": float(r["recall@5"][i])}
                 for i, (f, n) in enumerate(zip(folders, names))]
    return {"root": str(root), "model": zs.kind, "images": len(loader.dataset), "classes": len(folders),
            "classnames": names_from, "templates": templates, "num_templates": len(prompts),
            "metrics": {k: float(r[k]) for k in REPORTED}, "chance_top1": 100.0 / len(folders),
            "per_class": per_class}


def evaluate_zeroshot(model: ImageTextModel, cfg: Config, own: dict[str, str], given: set[str],
                      trainer_kwargs: dict[str, Any]) -> dict[str, Any]:
    """EvalSpec.run of `evaluate task=zeroshot`: data.root=, else the run's own data.zeroshot_root
    (with its class names and templates); classnames= / templates= override either."""
    d = cfg.data
    if "data.root" in given:
        root, names, templates = d.root, own.get("classnames", ""), own.get("templates", "openai")
    elif d.zeroshot_root and model.kind == SUITE:  # the ImageFolder the run validated on
        root, names, templates = (d.zeroshot_root, own.get("classnames", d.zeroshot_classnames),
                                  own.get("templates", d.zeroshot_templates))
    else:
        raise ConfigError("task=zeroshot: give data.root=/path/to/imagefolder (one sub-folder of images per class)")
    result = run_zeroshot(model, root, names, templates, d.eval_batch_size, d.num_workers, trainer_kwargs)
    if not result:  # another rank
        return {}
    folder = Path(root).resolve()
    data = "imagenet-1k" if result["classnames"] == "imagenet-1k" else folder.parent.name
    return {"data": data, "split": folder.name, **result}


def zeroshot_lines(report: dict[str, Any], worst: int = 5) -> list[str]:
    m = report["metrics"]
    lines = [f"class names: {report['classnames']}; templates: {report['templates']} ({report['num_templates']})",
             f"top-1 {m['top1']:.2f}  top-5 {m['top5']:.2f}  mean per-class recall {m['mean_per_class_recall']:.2f}"
             f"  (%, chance top-1 {report['chance_top1']:.2f})"]
    hardest = sorted((c for c in report["per_class"] if c["images"]), key=lambda c: c["top1"])[:worst]
    if len(report["per_class"]) > worst:
        lines.append("lowest top-1: " + ", ".join(f"{c['name']} {c['top1']:.0f}" for c in hardest))
    return lines


def zeroshot_line(root: str, metrics: dict[str, float]) -> str:
    """The end-of-fit report's line (data.zeroshot_root, test/zeroshot_* of the final weights)."""
    try:
        n = sum(p.is_dir() for p in Path(root).iterdir())
        chance = f", chance {100 / n:.1f}" if n else ""
    except OSError:
        n, chance = "?", ""
    return (f"zero-shot classification ({n} classes, {os.path.normpath(root)}): top-1 {metrics['test/zeroshot_top1']:.1f}"
            f"  top-5 {metrics.get('test/zeroshot_top5', float('nan')):.1f}{chance}")


register_eval(EvalSpec("zeroshot", task="pretrain", metrics=REPORTED, lines=zeroshot_lines,
                       keys=("classnames", "templates"), run=evaluate_zeroshot))
