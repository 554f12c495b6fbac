"""VQA as open-ended generation (the paper's setting): the image through cross-attention,
the question as the decoder's prompt, the answer generated token by token.

Training: teacher forcing with the loss on the answer tokens only. Validation /
test: greedy (or beam) decoding from the prompt, scored with the official VQA
accuracy, overall and per answer type. Test and predict also write the official
results JSON: [{"question_id": int, "answer": str}].
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from mammut_pl.config import Config
from mammut_pl.data.vqav2 import answer_targets
from mammut_pl.losses import global_batch_mean
from mammut_pl.metrics.vqa import VQAAccuracy, vqa_accuracy
from mammut_pl.tasks.base import MaMMUTTask
from mammut_pl.tasks.registry import PredictSpec, TaskSpec, register_task

log = logging.getLogger(__name__)


class VQATask(MaMMUTTask):
    def __init__(self, cfg: dict[str, Any], tokenizer=None) -> None:
        super().__init__(cfg, tokenizer)
        self.val_accuracy = VQAAccuracy()
        self.test_accuracy = VQAAccuracy()
        self.results: list[dict[str, Any]] = []  # test / predict answers, for the results JSON
        self._baselines: dict[str, float] = {}

    def answer_loss(self, images: Tensor, tokens: Tensor, answer_mask: Tensor) -> Tensor:
        """Cross-entropy of the answer tokens (and eos) given image and question."""
        logits = self.model.caption_logits(self.model.image_tokens(images), tokens)  # (B, T, V)
        targets = answer_targets(tokens, answer_mask)  # (B, T-1), -100 outside the answer
        total = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="sum",
                                ignore_index=-100, label_smoothing=self.cfg.loss.label_smoothing)
        return global_batch_mean(total, (targets != -100).sum())  # mean over the answer tokens of all ranks

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        loss = self.answer_loss(batch["images"], batch["tokens"], batch["answer_mask"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["images"]))
        return self.check_finite(loss)

    def answer(self, images: Tensor, prompt_tokens: Tensor) -> list[str]:
        """Generated answers as text, decoded from the question prompts."""
        e = self.cfg.eval
        new = self.model.generate(images, prompt_tokens=prompt_tokens, max_new_tokens=e.max_new_tokens,
                                  num_beams=e.num_beams, length_penalty=e.length_penalty)
        return self.decode(new)

    def _eval_step(self, batch: dict[str, Any], metric: VQAAccuracy, stage: str) -> list[str]:
        self.log(f"{stage}/answer_loss", self.answer_loss(batch["images"], batch["tokens"], batch["answer_mask"]),
                 batch_size=len(batch["images"]), sync_dist=True)
        predictions = self.answer(batch["images"], batch["prompt_tokens"])
        metric.update(predictions, batch["answers"], batch["answer_types"])
        return predictions

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_accuracy, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy(self.val_accuracy, "val")

    def on_test_epoch_start(self) -> None:
        self.results = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        predictions = self._eval_step(batch, self.test_accuracy, "test")
        self._keep(batch, predictions)

    def on_test_epoch_end(self) -> None:
        self._log_accuracy(self.test_accuracy, "test")
        results = gather_results(self.results)
        ctx = self.context
        if self.trainer.is_global_zero and results and ctx is not None:
            path = write_results(results, Path(self.trainer.default_root_dir) / f"vqa_{ctx.test_split}_results.json")
            log.info("VQA results (%d answers) written to %s", len(results), path)
            logger = self.logger
            if logger is not None and hasattr(logger, "run_id"):
                logger.experiment.log_artifact(logger.run_id, str(path))

    def on_predict_epoch_start(self) -> None:
        self.results = []

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        predictions = self.answer(batch["images"], batch["prompt_tokens"])
        return self._keep(batch, predictions)

    def _keep(self, batch: dict[str, Any], predictions: list[str]) -> list[dict[str, Any]]:
        rows = [{"question_id": int(q), "answer": a} for q, a in zip(batch["question_ids"].tolist(), predictions)]
        self.results += rows
        return rows

    def _log_accuracy(self, metric: VQAAccuracy, stage: str) -> None:
        if not metric.update_called:
            return
        for name, value in metric.compute().items():
            self.log(f"{stage}/{name}", value.float())
        metric.reset()
        baseline = self.majority_baseline(stage)
        if baseline is not None:
            self.log(f"{stage}/majority_baseline", baseline)

    def majority_baseline(self, stage: str) -> float | None:
        """VQA accuracy of always answering the most frequent training answer (the bar to clear)."""
        ctx = self.context
        if ctx is None or ctx.majority_answer is None:
            return None
        if stage not in self._baselines:
            split = ctx.val_split if stage == "val" else ctx.test_split
            self._baselines[stage] = self.constant_answer_score(ctx.majority_answer(), ctx.eval_questions(split))
        return self._baselines[stage]

    def constant_answer_score(self, answer: str, questions: list) -> float:
        """The task's accuracy when every question gets `answer`."""
        return vqa_accuracy([answer] * len(questions), [q.answers for q in questions])


def gather_results(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rank's rows, on every rank (DistributedSampler padding duplicates are dropped)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, rows)
        rows = [r for part in parts for r in part]
    return list({r["question_id"]: r for r in rows}.values())


def write_results(results: list[dict[str, Any]], path: str | Path) -> Path:
    """The official VQA results JSON: [{"question_id": int, "answer": str}], one per question."""
    path = Path(path)
    ids = [r["question_id"] for r in results]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: {len(ids) - len(set(ids))} duplicate question ids in the results")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(sorted(results, key=lambda r: r["question_id"])))
    tmp.replace(path)
    return path


def report_lines(cfg: Config, task: VQATask, datamodule: Any, metrics: dict[str, float]) -> list[str]:
    """VQA accuracy overall / per answer type next to the majority-answer baseline, and examples."""
    if "test/vqa_accuracy" not in metrics:
        return []
    n = cfg.eval.num_examples
    acc = metrics["test/vqa_accuracy"]
    types = "  ".join(f"{t} {metrics[f'test/vqa_accuracy/{t}']:.1f}" for t in ("yes/no", "number", "other")
                      if f"test/vqa_accuracy/{t}" in metrics)
    ctx = datamodule.eval_context()
    lines = [f"VQA accuracy ({ctx.test_split}): {acc:.2f}   [{types}]"]
    if "test/majority_baseline" in metrics:
        lines.append(f"  majority-answer baseline ({ctx.majority_answer()!r} for every question): "
                     f"{metrics['test/majority_baseline']:.2f}")
    batch = next(iter(datamodule.test_dataloader()))
    task.model.eval()
    with torch.no_grad():
        answers = task.answer(batch["images"][:n].to(task.device), batch["prompt_tokens"][:n].to(task.device))
    lines.append("\nquestions, generated answers and the annotators' most common answer:")
    for q, a, refs in zip(batch["questions"], answers, batch["answers"]):
        common = max(set(refs), key=refs.count) if refs else "?"
        lines.append(f"  {q!r:48} -> {a!r:12} (annotators: {common!r})")
    return lines


register_task(TaskSpec("vqa", VQATask, monitor=("val/vqa_accuracy", "max"), experiment="vqa", datasets=("vqav2",),
                       image_model=True,
                       report=report_lines, predict=PredictSpec(write_split=write_results)))
