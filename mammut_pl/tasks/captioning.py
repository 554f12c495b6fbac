"""Captioning fine-tuning: the generative pass only, scored as the COCO evaluation scores it.

Training: teacher-forced captioning cross-entropy on (image, caption) pairs.
Validation / test: one caption per image, decoded greedily or with beam search
(eval.num_beams, eval.length_penalty, eval.max_new_tokens), scored against all of
the image's references with BLEU-1..4 and CIDEr(-D) (pycocoevalcap's scorers), plus
the fraction of distinct captions: a captioner that says the same thing for every
image can still score some BLEU, this makes the collapse visible. Test also writes
the official results JSON [{"image_id": int, "caption": str}].
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import MLFlowLogger
from torch import Tensor

from mammut_pl.config import Config
from mammut_pl.losses import CaptionLoss, packed_caption_loss
from mammut_pl.metrics.captioning import CaptionMetrics
from mammut_pl.model.packing import TextIndex
from mammut_pl.tasks.base import MaMMUTTask, write_results_json
from mammut_pl.tasks.registry import EvalSpec, TaskSpec, register_eval, register_task
from mammut_pl.tasks.reporting import caption_lines, caption_scores_line, decoding, decoding_line

log = logging.getLogger(__name__)

# CaptionMetrics' names -> logged names (val/BLEU4, val/CIDEr, val/distinct_captions, ...)
METRIC_NAMES = {"BLEU-1": "BLEU1", "BLEU-2": "BLEU2", "BLEU-3": "BLEU3", "BLEU-4": "BLEU4", "CIDEr": "CIDEr",
                "distinct_fraction": "distinct_captions"}
CAPTION_KEYS = tuple(METRIC_NAMES.values())  # ("BLEU1", ..., "CIDEr", "distinct_captions")


class CaptioningTask(MaMMUTTask):
    compiles_step = True  # model.compile=true compiles step_caption_loss whole

    def __init__(self, cfg: dict[str, Any], tokenizer=None) -> None:
        super().__init__(cfg, tokenizer)
        self.eval_loss = CaptionLoss(self.cfg.model.pad_id)  # plain NLL (no smoothing) on (B, T, V) logits
        self.val_metrics = CaptionMetrics()
        self.test_metrics = CaptionMetrics()
        # the last test epoch's captions: [{"image_id", "caption", "references"}], for the report
        self.results: list[dict[str, Any]] = []
        self.results_path: Path | None = None  # where test writes the results JSON (set after a test)

    def caption_loss(self, images: Tensor, tokens: Tensor, text_index: TextIndex | None = None) -> Tensor:
        """The training loss; text_index: the batch's (None: computed from the tokens)."""
        return self.packed_step(self.step_caption_loss, images, tokens, text_index)

    def step_caption_loss(self, images: Tensor, tokens: Tensor, text_index: TextIndex) -> Tensor:
        """Forward and loss: what model.compile=true compiles (see MaMMUTTask.packed_step)."""
        # packed: padding is skipped and logits are computed only where the next token is real
        out = self.model(images, tokens, contrastive=False, generative=True, packed=True, text_index=text_index)
        return packed_caption_loss(out["caption_logits"], out["caption_targets"], self.cfg.loss.label_smoothing)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        loss = self.caption_loss(batch["images"], batch["tokens"], batch.get("text_index"))
        B = len(batch["images"])
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        self.log("train/caption_loss", loss, batch_size=B)
        return self.check_finite(loss)

    def captions(self, images: Tensor) -> list[str]:
        """One generated caption per image, with the eval.* decoding settings."""
        e = self.cfg.eval
        tokens = self.model.generate(images, max_new_tokens=e.max_new_tokens, num_beams=e.num_beams,
                                     length_penalty=e.length_penalty)
        return self.decode(tokens)

    def _eval_step(self, batch: dict[str, Any], metric: CaptionMetrics, stage: str) -> None:
        # batches follow the retrieval protocol: each image with all of its reference captions
        images, references = batch["images"], batch["captions"]
        metric.update(batch["image_ids"], self.captions(images), references)
        # teacher-forced loss on every reference (images encoded once): over- vs under-fitting at a glance
        rows = torch.repeat_interleave(torch.arange(len(images), device=images.device),
                                       torch.tensor([len(r) for r in references], device=images.device))
        logits = self.model.caption_logits(self.model.image_tokens(images)[rows], batch["tokens"])
        self.log(f"{stage}/caption_loss", self.eval_loss(logits, batch["tokens"]), batch_size=len(rows), sync_dist=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_scores(self.val_metrics, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        if not self.test_metrics.update_called:
            return
        predictions, references = self.test_metrics.results()  # all ranks: a collective under DDP
        self.results = [{"image_id": int(i), "caption": c, "references": references[i]} for i, c in predictions.items()]
        if self.trainer.is_global_zero:
            path = Path(self.trainer.default_root_dir) / f"captions_{self.cfg.data.coco.test_split}_results.json"
            self.results_path = write_results(self.results, path)
            log.info("wrote %d captions to %s", len(self.results), path)
            if isinstance(self.logger, MLFlowLogger):
                self.logger.experiment.log_artifact(self.logger.run_id, str(path))
        self._log_scores(self.test_metrics, "test")

    def _log_scores(self, metric: CaptionMetrics, stage: str) -> None:
        if not metric.update_called:
            return
        for name, value in metric.compute().items():
            self.log(f"{stage}/{METRIC_NAMES.get(name, name)}", value.float())
        metric.reset()


def write_results(results: list[dict[str, Any]], path: str | Path) -> Path:
    """The official COCO captioning results JSON: [{"image_id": int, "caption": str}], one per image."""
    rows = [{"image_id": int(r["image_id"]), "caption": str(r["caption"])} for r in results]
    return write_results_json(rows, path, "image_id")


def report_lines(cfg: Config, task: CaptioningTask, datamodule: Any, metrics: dict[str, float]) -> list[str]:
    """BLEU-4 / CIDEr, the collapse warning, example captions and the results JSON."""
    if "test/CIDEr" not in metrics:
        return []
    results = getattr(task, "results", [])
    lines = [caption_scores_line(cfg, metrics, "test", len(results))]
    if metrics.get("test/distinct_captions", 1.0) < 0.5:
        lines.append("  warning: most images get the same caption: the captioner ignores the image "
                     "(train longer, or start from a pretraining checkpoint: model.init_from=...)")
    lines.append(f"\ngenerated captions ({decoding(cfg)}) vs references:")
    for r in results[: cfg.eval.num_examples]:
        lines.append(f"  generated: {r['caption']!r}\n  reference: {r['references'][0]!r}")
    if getattr(task, "results_path", None):
        lines.append(f"results JSON: {task.results_path}")
    return lines


def captioning_table(report: dict[str, Any]) -> list[str]:
    return [decoding_line(report["decoding"]), *caption_lines(report["metrics"])]


register_task(TaskSpec("captioning", CaptioningTask, monitor=("val/CIDEr", "max"), experiment="coco_captioning",
                       datasets=("coco", "webdata"), image_model=True, report=report_lines))
register_eval(EvalSpec("captioning", task="captioning", metrics=CAPTION_KEYS, lines=captioning_table, decoding=True))
