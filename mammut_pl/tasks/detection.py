"""Open-vocabulary detection on LVIS (experiment=lvis): MaMMUT's encoder + a detection head
(mammut_pl/model/detection.py), class embeddings from the contrastive text pass.

Training: base categories only (rare ones held out), Hungarian-matched focal + L1 + GIoU losses.
Validation / test: every category (rare included) scored with the official LVIS protocol
(mammut_pl.metrics.lvis_eval): AP, AP50, AP75, APs/m/l, APr, APc, APf logged as `val/...`,
`test/...`. Test also writes the results JSON ([{"image_id", "category_id", "bbox", "score"}],
at most 300 per image) to the run folder and MLflow.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from mammut_pl.config import Config, ConfigError, encoder_patch_size
from mammut_pl.metrics.lvis import KEYS as LVIS_KEYS
from mammut_pl.metrics.lvis import lvis_eval
from mammut_pl.model.detection import OpenVocabDetector, class_names, class_text_embeddings, federated_classes
from mammut_pl.tasks.base import MaMMUTTask
from mammut_pl.tasks.inference import detect_inputs
from mammut_pl.tasks.registry import EvalSpec, PredictSpec, TaskSpec, register_eval, register_task
from mammut_pl.tasks.reporting import limit

log = logging.getLogger(__name__)


class DetectionTask(MaMMUTTask):
    def __init__(self, cfg: dict[str, Any], tokenizer=None) -> None:
        super().__init__(cfg, tokenizer)
        self.detector = OpenVocabDetector(self.model, self.cfg.detection,
                                          vlm_softmax=self.cfg.loss.contrastive == "softmax")
        if not self.cfg.detection.train_text:  # the text side stays as pretrained: rare names keep their meaning
            for p in self.model.text.parameters():
                p.requires_grad_(False)
        self._text_cache: dict[str, Tensor] = {}
        self._class_weights: Tensor | None = None  # federated loss: the draw's weights per base class
        self.results: list[dict[str, Any]] = []
        self.results_path: Path | None = None
        self._eval_file = ""  # the annotation file of the running validation / test

    # --- class embeddings --------------------------------------------------------------------------
    def class_embeddings(self, which: str) -> Tensor:
        """(K, D) text embeddings of the "train" (base) or "eval" (all) categories."""
        ctx = self.context
        cats = ctx.train_categories() if which == "train" else ctx.categories_of(self._eval_file or ctx.val_file)
        if self.cfg.detection.train_text and self.training:
            return class_text_embeddings(self.model, self.tokenizer, class_names(cats), self.cfg.detection.prompts,
                                         self.cfg.model.context_length)
        if which not in self._text_cache:
            with torch.no_grad():
                self._text_cache[which] = class_text_embeddings(self.model, self.tokenizer, class_names(cats),
                                                                self.cfg.detection.prompts,
                                                                self.cfg.model.context_length)
        return self._text_cache[which]

    def novel_classes(self, categories: list[dict[str, Any]]) -> Tensor:
        """(K,) bool over the evaluation `categories`: True for those held out of training (LVIS'
        rare ones with detection.base_only), which get detection.vlm_score_weight_novel."""
        base = {c["id"] for c in self.context.train_categories()}
        return torch.tensor([c["id"] not in base for c in categories])

    def on_train_epoch_start(self) -> None:
        self._text_cache.clear()  # text weights may have changed (train_text) or moved device

    # --- training ---------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        out = self.detector(self.model, batch["images"], self.class_embeddings("train"))
        losses = self.detector.losses(out, batch["targets"], self.loss_classes(batch["targets"]))
        B = len(batch["images"])
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=B)
        for k in ("cls_loss", "obj_loss", "l1_loss", "giou_loss"):
            self.log(f"train/{k}", losses[k], batch_size=B)
        return self.check_finite(losses["loss"])

    def loss_classes(self, targets: list[dict[str, Tensor]]) -> Tensor | None:
        """The federated loss' classes for this batch (None = all): drawn from a generator seeded by
        (seed, step, rank), so a resumed run draws the same ones."""
        d = self.cfg.detection
        if not d.federated_classes:
            return None
        if self._class_weights is None:  # training images per base class, ^ power
            counts = self.context.train_class_image_counts()
            self._class_weights = torch.tensor(counts, dtype=torch.float64) ** d.federated_power
        seed = (self.cfg.seed * 1_000_003 + self.global_step) * 4099 + self.global_rank
        labels = torch.cat([t["labels"].cpu() for t in targets])
        return federated_classes(labels, self._class_weights, d.federated_classes,
                                 torch.Generator().manual_seed(seed))

    # --- evaluation -------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._start_eval(self.context.val_file)

    def on_test_epoch_start(self) -> None:
        self._start_eval(self.context.test_file)

    def _start_eval(self, filename: str) -> None:
        self.results, self._eval_file = [], filename  # scored with that file's own categories
        self._text_cache.pop("eval", None)

    def _eval_step(self, batch: dict[str, Any]) -> None:
        ctx = self.context
        cats = ctx.categories_of(self._eval_file or ctx.val_file)
        out = self.detector(self.model, batch["images"], self.class_embeddings("eval"), self.novel_classes(cats))
        size = batch["images"].shape[-2:]
        for b, image_id in enumerate(batch["image_ids"].tolist()):
            h, w = batch["orig_sizes"][b].tolist()
            for bbox, s, k in image_detections(self.detector, out, b, (size[0], size[1]), float(batch["scales"][b]),
                                               (h, w)):
                self.results.append({"image_id": int(image_id), "category_id": int(cats[k]["id"]), "bbox": bbox,
                                     "score": s})

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._score("val", self.context.val_file)

    def on_test_epoch_end(self) -> None:
        test_file = self.context.test_file
        results = self._score("test", test_file)
        if self.trainer.is_global_zero:
            stem = Path(test_file).stem
            self.results_path = write_detections(results, Path(self.trainer.default_root_dir) / f"{stem}_results.json")
            log.info("LVIS detections (%d) written to %s", len(results), self.results_path)
            logger = self.logger
            if logger is not None and hasattr(logger, "run_id"):
                logger.experiment.log_artifact(logger.run_id, str(self.results_path))

    def _score(self, stage: str, filename: str) -> list[dict[str, Any]]:
        results = gather(self.results)
        scores = lvis_eval(self.context.eval_gt(filename), results)
        # every rank holds every detection (gathered): the same scores everywhere
        for key in LVIS_KEYS:
            # -1 = no category has a value (e.g. no large boxes): logged as is, as LVIS prints it
            self.log(f"{stage}/{key}", float(scores[key]))
        images = len({r["image_id"] for r in results})
        self.log(f"{stage}/detections_per_image", len(results) / max(1, images))
        return results


def image_detections(detector: OpenVocabDetector, out: dict[str, Tensor], b: int, canvas: tuple[int, int],
                     scale: float, size: tuple[int, int]) -> list[tuple[list[float], float, int]]:
    """Image b's detections in its original pixels: [([x, y, w, h], score, class index)], best first.

    `canvas` (H, W) is the detection input; the image was resized by `scale` into its top-left
    corner (evaluation's geometry), so boxes are divided by `scale` and clamped to `size` (H, W);
    boxes left empty by the clamp (wholly on the padding) are dropped."""
    boxes, scores, classes = detector.detections(out, b, canvas)
    h, w = size
    boxes = (boxes.double() / scale).cpu()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    rows = []
    for (x0, y0, x1, y1), s, k in zip(boxes.tolist(), scores.tolist(), classes.tolist()):
        if x1 - x0 > 0 and y1 - y0 > 0:
            bbox = [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]
            rows.append((bbox, round(float(s), 5), int(k)))
    return rows


def gather(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rank's detections (a DistributedSampler's padding duplicates an image: kept once)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, rows)
        seen: set[int] = set()
        out = []
        for part in parts:
            images = {r["image_id"] for r in part} - seen
            out += [r for r in part if r["image_id"] in images]
            seen |= images
        return out
    return rows


def write_detections(results: list[dict[str, Any]], path: str | Path) -> Path:
    """The LVIS / COCO results JSON: [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(sorted(results, key=lambda r: (r["image_id"], -r["score"]))))
    tmp.replace(path)
    return path


# --- what the suite needs to know about detection ---------------------------------------------------
def report_lines(cfg: Config, task: DetectionTask, datamodule: Any, metrics: dict[str, float]) -> list[str]:
    """LVIS box AP (official protocol; -1 = no category with boxes of that kind)."""
    if "test/AP" not in metrics:
        return []
    lines = ["LVIS box AP (test): " + "  ".join(f"{k} {100 * metrics[f'test/{k}']:.1f}"
                                                 if metrics.get(f"test/{k}", -1) >= 0 else f"{k} -" for k in LVIS_KEYS),
             "  APr: rare categories, held out of detection training (open vocabulary)"]
    if getattr(task, "results_path", None):
        lines.append(f"results JSON: {task.results_path}")
    return lines


def describe_data(split: str, cfg: Config, datamodule: Any) -> dict[str, Any]:
    ctx = datamodule.eval_context()
    gt = ctx.eval_gt(ctx.test_file)
    return {"data": "lvis", "root": cfg.data.root, "split": split, "annotation_file": ctx.test_file,
            "images": len(gt["images"]), "annotations": len(gt["annotations"]),
            "categories": len(ctx.categories_of(ctx.test_file)),
            "subset": limit("data.lvis.max_eval_images", cfg.data.lvis.max_eval_images)}


def set_test_split(cfg: Config, split: str) -> None:
    if split == "val":
        cfg.data.lvis.test_file = cfg.data.lvis.val_file


def ap_table(report: dict[str, Any]) -> list[str]:
    # x100 as papers report it; -1 = no category has boxes of that kind (LVIS prints -1 too)
    m = report["metrics"]
    return ["LVIS box AP (x100; - = no category with boxes of that kind):",
            "".join(f"{k:>7}" for k in LVIS_KEYS),
            "".join(f"{100 * m[k]:7.1f}" if m.get(k, -1) >= 0 else f"{'-':>7}" for k in LVIS_KEYS),
            "APr: rare categories, held out of detection training (open vocabulary)",
            f"detections per image: {m.get('detections_per_image', 0):.1f}"]


def check_patch_tiling(cfg: Config) -> None:
    """The detection image must tile into whole patches (the feature map the head reads)."""
    patch = encoder_patch_size(cfg.model)
    if cfg.detection.image_size % patch:
        raise ConfigError(f"`detection.image_size`: {cfg.detection.image_size} must be divisible by the encoder's "
                          f"patch size {patch}")


register_task(TaskSpec("detection", DetectionTask, monitor=("val/AP", "max"), experiment="lvis", datasets=("lvis",),
                       check=check_patch_tiling, report=report_lines,
                       predict=PredictSpec(question="refused", question_hint='give image=PATH [categories="name,..."]',
                                           keys=("categories", "score_threshold"), run=detect_inputs)))
register_eval(EvalSpec("detection", task="detection", own_data="lvis", metrics=(*LVIS_KEYS, "detections_per_image"),
                       lines=ap_table, describe=describe_data, set_split=set_test_split))
