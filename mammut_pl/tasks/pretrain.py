"""Pretraining: focal (or softmax / sigmoid) contrastive + captioning loss, weighted;
validation = zero-shot retrieval R@1/5/10 both ways + caption loss."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from mammut_pl.config import Config, ConfigError
from mammut_pl.losses import CaptionLoss, build_contrastive_loss, mammut_loss
from mammut_pl.metrics.retrieval import RECALL_KEYS, RetrievalRecall
from mammut_pl.model.packing import TextIndex
from mammut_pl.tasks.base import MaMMUTTask
from mammut_pl.tasks.registry import EvalSpec, TaskSpec, register_eval, register_task
from mammut_pl.tasks.reporting import example_captions, recall_lines


class PretrainTask(MaMMUTTask):
    compiles_step = True  # model.compile=true compiles step_losses whole

    def __init__(self, cfg: dict[str, Any], tokenizer=None) -> None:
        super().__init__(cfg, tokenizer)
        loss = self.cfg.loss
        self.contrastive_loss = build_contrastive_loss(loss.contrastive, loss.focal_gamma, loss.focal_alpha)
        self.caption_loss = CaptionLoss(self.cfg.model.pad_id, loss.label_smoothing)
        self.val_retrieval = RetrievalRecall()
        self.test_retrieval = RetrievalRecall()
        self._skipped_total = 0

    def losses(self, images: Tensor, tokens: Tensor, text_index: TextIndex | None = None) -> dict[str, Tensor]:
        """The training losses; text_index: the batch's (None: computed from the tokens)."""
        return self.packed_step(self.step_losses, images, tokens, text_index)

    def step_losses(self, images: Tensor, tokens: Tensor, text_index: TextIndex) -> dict[str, Tensor]:
        """Forward and losses: what model.compile=true compiles (see MaMMUTTask.packed_step)."""
        w_con, w_cap = self.cfg.loss.contrastive_weight, self.cfg.loss.caption_weight
        # a pass whose weight is 0 is not run at all (CLIP / captioner baselines);
        # packed: padding is skipped, logits only where the next token is real (see MaMMUT.forward)
        out = self.model(images, tokens, contrastive=w_con > 0, generative=w_cap > 0, packed=True,
                         text_index=text_index)
        losses = mammut_loss(out, self.contrastive_loss, w_con, w_cap, self.caption_loss.label_smoothing)
        losses["logit_scale"] = out["logit_scale"].detach()
        return losses

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        losses = self.losses(batch["images"], batch["tokens"], batch.get("text_index"))
        B = batch["images"].shape[0]
        for name, value in losses.items():  # sync_dist: under DDP, the global batch's value (mean over ranks)
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=B, sync_dist=True)
        if "skipped" in batch:  # web samples skipped by the reader, running total (of all ranks)
            self._skipped_total += int(batch["skipped"])
            self.log("train/skipped_samples", float(self._skipped_total), batch_size=B, sync_dist=True,
                     reduce_fx="sum")
        return self.check_finite(losses["loss"])

    def _retrieval_step(self, batch: dict[str, Any], metric: RetrievalRecall, stage: str) -> None:
        image_tokens = self.model.image_tokens(batch["images"])
        image_embed = self.model.image_embedding(image_tokens)
        text_embed = self.model.encode_text(batch["tokens"])
        metric.update(image_embed, batch["image_ids"], text_embed, batch["text_ids"], batch["text_image_ids"])
        if self.cfg.loss.caption_weight > 0:
            # caption loss on each image's first caption
            first = batch["tokens"][_first_caption_rows(batch["text_image_ids"])]
            logits = self.model.caption_logits(image_tokens, first)
            self.log(f"{stage}/caption_loss", self.caption_loss(logits, first),
                     batch_size=len(first), sync_dist=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._retrieval_step(batch, self.val_retrieval, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_retrieval(self.val_retrieval, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._retrieval_step(batch, self.test_retrieval, "test")

    def on_test_epoch_end(self) -> None:
        self._log_retrieval(self.test_retrieval, "test")

    def _log_retrieval(self, metric: RetrievalRecall, stage: str) -> None:
        if not metric.update_called:
            return
        for name, value in metric.compute().items():
            self.log(f"{stage}/{name}", value)
        metric.reset()


def _first_caption_rows(text_image_ids: Tensor) -> Tensor:
    """Index of the first text of each image (texts are grouped by image, in order)."""
    change = text_image_ids.new_ones(text_image_ids.shape, dtype=bool)
    change[1:] = text_image_ids[1:] != text_image_ids[:-1]
    return change.nonzero().squeeze(1)


def report_lines(cfg: Config, task: PretrainTask, datamodule: Any, metrics: dict[str, float]) -> list[str]:
    """Zero-shot retrieval R@K (with chance level) and greedy example captions."""
    lines = []
    if "test/i2t_R@1" in metrics:
        for direction, name in (("i2t", "image -> text"), ("t2i", "text -> image")):
            r = [metrics.get(f"test/{direction}_R@{k}", float("nan")) for k in (1, 5, 10)]
            lines.append(f"zero-shot retrieval {name}: R@1 {r[0]:5.1f}  R@5 {r[1]:5.1f}  R@10 {r[2]:5.1f}")
        if hasattr(datamodule, "split"):
            images = datamodule.split(datamodule.test_split) if hasattr(datamodule, "test_split") else None
            if images:
                chance = 100.0 / len(images)
                lines.append(f"  ({len(images)} test images; chance R@1 for text -> image = {chance:.1f})")
    if "test/zeroshot_top1" in metrics:  # data.zeroshot_root, scored on the final weights
        from mammut_pl.tasks.zeroshot import zeroshot_line  # here: the registry lists retrieval first

        lines.append(zeroshot_line(cfg.data.zeroshot_root, metrics))
    if cfg.loss.caption_weight > 0:
        lines.append("\ngenerated captions (greedy) vs references:")
        for generated, refs in example_captions(task, datamodule, cfg.eval.num_examples, cfg.eval.max_new_tokens):
            lines.append(f"  generated: {generated!r}\n  reference: {refs[0]!r}")
    return lines


def retrieval_table(report: dict[str, Any]) -> list[str]:
    m = report["metrics"]
    return [*recall_lines(m, (("i2t", "image -> text"), ("t2i", "text -> image"))),
            f"{'mean of the six':16}{m['mean_R']:7.1f}"]


def check_loss_weights(cfg: Config) -> None:
    """Pretraining needs at least one of its two losses."""
    if cfg.loss.contrastive_weight + cfg.loss.caption_weight <= 0:
        raise ConfigError("`loss.caption_weight`: loss.contrastive_weight and loss.caption_weight cannot both be 0")


register_task(TaskSpec("pretrain", PretrainTask, monitor=("val/mean_R", "max"), experiment="pretrain",
                       datasets=("webdata", "coco"), check=check_loss_weights, image_model=True, report=report_lines))
register_eval(EvalSpec("retrieval", task="pretrain", metrics=RECALL_KEYS, lines=retrieval_table))
