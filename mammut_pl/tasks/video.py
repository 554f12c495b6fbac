"""Video tasks on MSR-VTT with the sparse-tube encoder (`mammut_pl.model.video`).

- `VideoQATask` (task=video_qa, experiment=msrvtt_qa): MSRVTT-QA as open-ended generation,
  exactly as VQA: the question is the decoder's prompt, the loss is on the answer tokens,
  evaluation generates the answer and scores top-1 exact match after normalisation
  (answers outside the top-K training vocabulary count as wrong), overall and per question
  type, next to the majority-answer baseline.
- `VideoCaptioningTask` (task=video_captioning, experiment=msrvtt_caption): caption loss
  (+ the contrastive loss when loss.contrastive_weight > 0), BLEU / CIDEr as captioning
  scores them, and at test text -> video retrieval R@1/5/10 on the 1k-A sentences.

Clips that could not be decoded arrive as `batch["skipped"]`: counted (train/skipped_samples,
{val,test}/skipped_videos). In training another item has taken their place (MSRVTT datasets), so a
training batch is never empty; in evaluation their questions count as wrong.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from torch import Tensor

from mammut_pl.config import Config, ConfigError, encoder_patch_size
from mammut_pl.losses import build_contrastive_loss, mammut_loss
from mammut_pl.metrics.retrieval import RECALL_KEYS, RetrievalRecall
from mammut_pl.metrics.video_qa import QUESTION_TYPES, VideoQAAccuracy, exact_match
from mammut_pl.model.packing import TextIndex
from mammut_pl.model.video import VideoMaMMUT
from mammut_pl.tasks.base import load_weights, write_results_json
from mammut_pl.tasks.captioning import CAPTION_KEYS, CaptioningTask
from mammut_pl.tasks.registry import EvalSpec, PredictSpec, TaskSpec, register_eval, register_task
from mammut_pl.tasks.reporting import caption_lines, caption_scores_line, decoding_line, limit, recall_lines
from mammut_pl.tasks.vqa import VQATask, gather_results

log = logging.getLogger(__name__)


class VideoModel:
    """Mixin: the model is a VideoMaMMUT; an image checkpoint's patch projection is inflated
    into the tube projections (a video checkpoint's own tubes are kept)."""

    def build_model(self) -> VideoMaMMUT:
        return VideoMaMMUT(self.cfg.model.architecture(), self.cfg.video.architecture())

    def init_from(self, path: str) -> None:
        super().init_from(path)  # type: ignore[misc]
        if not any(k.startswith("video.tubes.") for k in load_weights(path)):
            self.model.inflate_tubes()
            log.info("model.init_from=%s: an image checkpoint; tube projections inflated from its patch projection",
                     path)

    def lr_scale(self, name: str) -> float:
        return self.cfg.video.new_params_lr_scale if name.startswith("model.video.") else 1.0

    def count_skipped(self, batch: dict[str, Any], stage: str) -> None:
        n = int(batch.get("skipped", 0))
        if stage == "train":
            self._skipped_train = getattr(self, "_skipped_train", 0) + n
            self.log("train/skipped_samples", float(self._skipped_train), batch_size=max(1, len(batch["images"])))
        elif n:
            self.log(f"{stage}/skipped_videos", float(n), reduce_fx="sum", on_step=False, on_epoch=True,
                     batch_size=1)


class VideoQATask(VideoModel, VQATask):
    def __init__(self, cfg: dict[str, Any], tokenizer=None) -> None:
        super().__init__(cfg, tokenizer)
        self.val_accuracy = VideoQAAccuracy()
        self.test_accuracy = VideoQAAccuracy()
        self._vocab_set: set[str] | None = None
        self.results_path: Path | None = None  # where test wrote the answers JSON (set after a test)

    def setup(self, stage: str) -> None:
        ctx = self.context
        if ctx is not None and ctx.answer_vocabulary is not None:
            vocab = set(ctx.answer_vocabulary())
            self.val_accuracy.vocabulary = self.test_accuracy.vocabulary = self._vocab_set = vocab

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        self.count_skipped(batch, "train")  # training batches are never empty: broken clips are replaced
        return super().training_step(batch, batch_idx)

    def _eval_step(self, batch: dict[str, Any], metric: VideoQAAccuracy, stage: str) -> list[str]:
        self.count_skipped(batch, stage)
        if batch["skipped"]:  # not decodable: asked, not answered -> wrong
            metric.update([""] * batch["skipped"], batch["skipped_answers"], batch["skipped_questions"])
        if not len(batch["images"]):
            return []
        self.log(f"{stage}/answer_loss", self.answer_loss(batch["images"], batch["tokens"], batch["answer_mask"]),
                 batch_size=len(batch["images"]), sync_dist=True)
        predictions = self.answer(batch["images"], batch["prompt_tokens"])
        metric.update(predictions, [a[0] for a in batch["answers"]], batch["questions"])
        return predictions

    def _keep(self, batch: dict[str, Any], predictions: list[str]) -> list[dict[str, Any]]:
        if not predictions:
            return []
        return super()._keep(batch, predictions)

    def on_test_epoch_end(self) -> None:
        self._log_accuracy(self.test_accuracy, "test")
        results = gather_results(self.results)
        if self.trainer.is_global_zero and results:
            split = self.context.test_split if self.context is not None else "test"
            path = write_results_json(results, Path(self.trainer.default_root_dir) / f"msrvtt_qa_{split}_results.json",
                                      "question_id")
            self.results_path = path
            log.info("MSRVTT-QA answers (%d) written to %s", len(results), path)
            if isinstance(self.logger, MLFlowLogger):
                self.logger.experiment.log_artifact(self.logger.run_id, str(path))

    def constant_answer_score(self, answer: str, questions: list) -> float:
        """Exact-match accuracy when every question gets `answer` (VQATask's majority baseline)."""
        metric = VideoQAAccuracy(vocabulary=self._vocab_set)
        metric.update([answer] * len(questions), [q.answer for q in questions], [q.question for q in questions])
        return float(metric.compute()["accuracy"])

    def report_lines(self, metrics: dict[str, float], datamodule: Any) -> list[str]:
        if "test/accuracy" not in metrics:
            return []
        ctx = datamodule.eval_context()
        types = "  ".join(f"{t} {metrics[f'test/accuracy/{t}']:.1f}" for t in QUESTION_TYPES
                          if f"test/accuracy/{t}" in metrics)
        lines = [f"MSRVTT-QA accuracy (test, top-1 exact match): {metrics['test/accuracy']:.2f}   [{types}]"]
        if "test/majority_baseline" in metrics:
            lines.append(f"  majority-answer baseline ({ctx.majority_answer()!r} for every question): "
                         f"{metrics['test/majority_baseline']:.2f}")
        if metrics.get("test/skipped_videos"):
            lines.append(f"  {metrics['test/skipped_videos']:.0f} test videos could not be decoded (counted wrong)")
        by_id = {q.question_id: q for q in ctx.eval_questions(ctx.test_split)}
        rows = [r for r in self.results if r["question_id"] in by_id][: self.cfg.eval.num_examples]
        if rows:
            lines.append("questions, generated answers and the reference answer:")
        for r in rows:
            q = by_id[r["question_id"]]
            ok = exact_match(r["answer"], q.answer, self._vocab_set)
            lines.append(f"  {q.video_id:>10} {q.question!r:44} -> {r['answer']!r:10} ({q.answer!r}{', ok' if ok else ''})")
        return lines


class VideoCaptioningTask(VideoModel, CaptioningTask):
    def __init__(self, cfg: dict[str, Any], tokenizer=None) -> None:
        super().__init__(cfg, tokenizer)
        loss = self.cfg.loss
        self.contrastive_loss = build_contrastive_loss(loss.contrastive, loss.focal_gamma, loss.focal_alpha)
        self.test_retrieval = RetrievalRecall()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        self.count_skipped(batch, "train")  # training batches are never empty: broken clips are replaced
        clips = batch["images"]
        losses = self.packed_step(self.step_losses, clips, batch["tokens"], batch.get("text_index"))
        for name in ("caption_loss", "contrastive_loss"):
            if name in losses:
                self.log(f"train/{name}", losses[name], batch_size=len(clips))
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=len(clips))
        return self.check_finite(losses["loss"])

    def step_losses(self, clips: Tensor, tokens: Tensor, text_index: TextIndex) -> dict[str, Tensor]:
        """Forward and losses: what model.compile=true compiles (see MaMMUTTask.packed_step)."""
        w_con, w_cap = self.cfg.loss.contrastive_weight, self.cfg.loss.caption_weight
        out = self.model(clips, tokens, contrastive=w_con > 0, generative=w_cap > 0, packed=True,
                         text_index=text_index)
        return mammut_loss(out, self.contrastive_loss, w_con, w_cap, self.cfg.loss.label_smoothing)

    def _eval_step(self, batch: dict[str, Any], metric, stage: str) -> None:
        self.count_skipped(batch, stage)
        if len(batch["images"]):
            super()._eval_step(batch, metric, stage)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        if len(batch["images"]) and batch.get("retrieval_tokens") is not None:
            ids = batch["image_ids"]
            video_embed = self.model.encode_image(batch["images"])
            text_embed = self.model.encode_text(batch["retrieval_tokens"])
            self.test_retrieval.update(video_embed, ids, text_embed, batch["retrieval_ids"], batch["retrieval_ids"])

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self.test_retrieval.update_called:
            for name, value in self.test_retrieval.compute().items():
                # the retrieval metric's image -> text / text -> image are video -> text / text -> video here
                self.log(f"test/{name.replace('i2t', 'v2t').replace('t2i', 't2v')}", value)
            self.test_retrieval.reset()

    def report_lines(self, metrics: dict[str, float], datamodule: Any) -> list[str]:
        lines = []
        if "test/CIDEr" in metrics:
            lines.append(caption_scores_line(self.cfg, metrics, "test", len(self.results)).replace("images", "videos"))
        if "test/t2v_R@1" in metrics:
            r = [metrics.get(f"test/t2v_R@{k}", float("nan")) for k in (1, 5, 10)]
            lines.append(f"text -> video retrieval (1k-A sentences): R@1 {r[0]:5.1f}  R@5 {r[1]:5.1f}  R@10 {r[2]:5.1f}")
        for r in self.results[: self.cfg.eval.num_examples]:
            lines.append(f"  generated: {r['caption']!r}\n  reference: {r['references'][0]!r}")
        return lines


# --- what the suite needs to know about the video tasks -------------------------------------------
VIDEO_RECALL_KEYS = tuple(k.replace("i2t", "v2t").replace("t2i", "t2v") for k in RECALL_KEYS)


def own_report(cfg: Config, task: Any, datamodule: Any, metrics: dict[str, float]) -> list[str]:
    return task.report_lines(metrics, datamodule)


def describe_qa(split: str, cfg: Config, datamodule: Any) -> dict[str, Any]:
    ctx = datamodule.eval_context()
    questions = ctx.eval_questions(ctx.test_split)
    return {"data": "msrvtt", "root": cfg.data.root, "split": ctx.test_split,
            "questions": len(questions), "videos": len({q.video_id for q in questions}),
            "subset": limit("data.msrvtt.max_eval_questions", cfg.data.msrvtt.max_eval_questions)}


def describe_captions(split: str, cfg: Config, datamodule: Any) -> dict[str, Any]:
    split = datamodule.eval_context().test_split
    videos = datamodule.videos(split)
    return {"data": "msrvtt", "root": cfg.data.root, "split": split, "videos": len(videos),
            "captions": sum(len(v.captions) for v in videos),
            "retrieval_sentences": sum(bool(v.retrieval_text) for v in videos),
            "subset": limit("data.msrvtt.max_eval_questions", cfg.data.msrvtt.max_eval_questions)}


def set_test_split(cfg: Config, split: str) -> None:
    cfg.data.msrvtt.test_split = split  # {split}_qa.json, or the captions file's split


def qa_table(report: dict[str, Any]) -> list[str]:
    m = report["metrics"]
    types = "  ".join(f"{t} {m[f'accuracy/{t}']:.1f}" for t in QUESTION_TYPES if f"accuracy/{t}" in m)
    lines = [decoding_line(report["decoding"]), f"accuracy (top-1 exact match): {m['accuracy']:.2f}   [{types}]"]
    if "majority_baseline" in m:
        lines.append(f"majority-answer baseline ({report['majority_answer']!r} for every question): "
                     f"{m['majority_baseline']:.2f}")
    return lines


def caption_table(report: dict[str, Any]) -> list[str]:
    m = report["metrics"]
    lines = [decoding_line(report["decoding"]), *caption_lines(m)]
    if "t2v_R@1" in m:
        lines += [f"retrieval on the {report['retrieval_sentences']} 1k-A sentences:",
                  *recall_lines(m, (("t2v", "text -> video"), ("v2t", "video -> text")))]
    return lines


def check_clip_tokens(cfg: Config) -> None:
    """Every tube and the 2D frames must yield tokens for clips of video.num_frames x model.image_size."""
    try:
        cfg.video.check_clip(cfg.video.num_frames, cfg.model.image_size, encoder_patch_size(cfg.model))
    except ValueError as err:
        raise ConfigError(f"`video`: {err}") from None


register_task(TaskSpec("video_qa", VideoQATask, monitor=("val/accuracy", "max"), experiment="msrvtt_qa",
                       datasets=("msrvtt",), check=check_clip_tokens,
                       datamodule_options={"task": "qa"}, report=own_report,
                       predict=PredictSpec(inputs="video", question="required",
                                           question_hint="answers questions about videos")))
register_task(TaskSpec("video_captioning", VideoCaptioningTask, monitor=("val/CIDEr", "max"),
                       experiment="msrvtt_caption", datasets=("msrvtt",), check=check_clip_tokens,
                       datamodule_options={"task": "caption"}, report=own_report,
                       predict=PredictSpec(inputs="video")))
register_eval(EvalSpec("videoqa", task="video_qa", own_data="msrvtt_qa", lines=qa_table,
                       metrics=("accuracy", *(f"accuracy/{t}" for t in QUESTION_TYPES), "majority_baseline",
                                "skipped_videos"),
                       describe=describe_qa, set_split=set_test_split, decoding=True,
                       extra=lambda dm: {"majority_answer": dm.eval_context().majority_answer()}, skipped="questions whose video"))
register_eval(EvalSpec("video_caption", task="video_captioning", own_data="msrvtt_caption", lines=caption_table,
                       metrics=(*CAPTION_KEYS, *VIDEO_RECALL_KEYS, "skipped_videos"),
                       describe=describe_captions, set_split=set_test_split, decoding=True))
