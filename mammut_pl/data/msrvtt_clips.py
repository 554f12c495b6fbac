"""MSR-VTT's datasets and collation: clips of questions (MSRVTT-QA) or captions for training,
videos with all their references for evaluation, and the collators that batch the decodable
clips and count the others (see data/msrvtt.py for the layouts and the skipping rules)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from mammut_pl.data.epochs import SampleRef, batch_position, item_index
from mammut_pl.data.tokenizer import Tokenizer
from mammut_pl.data.video_decode import ClipReader, VideoError
from mammut_pl.data.vqav2 import VQACollator

if TYPE_CHECKING:
    from mammut_pl.data.msrvtt import CaptionedVideo, VideoQuestion

MAX_REPLACEMENTS = 32  # undecodable videos in a row before training gives up (a wrong folder, not noise)


class _TrainableClips(ClipReader):
    """Items of a training set. In training (SampleRef) an undecodable video's item is replaced by
    another one drawn from the item's seed (counted in `replaced`), so that every rank's batch
    stays full: under DDP a rank with an empty batch would skip the step while the others wait
    in the loss's collectives. Evaluation (int index) keeps the broken item (image None)."""

    def path_of(self, index: int) -> str:
        raise NotImplementedError

    def make_item(self, index: int, clip: Tensor | None, extra: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, i: int | SampleRef) -> dict[str, Any]:
        index = item_index(i)
        clip, extra = self.positioned_clip(i, self.path_of(index))
        replaced = 0
        if clip is None and isinstance(i, SampleRef):
            draw = np.random.default_rng(i.seed)
            while clip is None:
                if replaced == MAX_REPLACEMENTS:
                    raise VideoError(f"{MAX_REPLACEMENTS} training videos in a row could not be decoded (the last: "
                                     f"{self.path_of(index)}); check data.root and data.msrvtt.video_dir")
                replaced += 1
                index = int(draw.integers(len(self)))
                clip, extra = self.positioned_clip(i, self.path_of(index))
        return {**self.make_item(index, clip, extra), "replaced": replaced}


class QAClips(_TrainableClips):
    def __init__(self, questions: list[VideoQuestion], *args: Any) -> None:
        super().__init__(*args)
        self.questions = questions

    def __len__(self) -> int:
        return len(self.questions)

    def path_of(self, index: int) -> str:
        return self.questions[index].path

    def make_item(self, index: int, clip: Tensor | None, extra: dict[str, Any]) -> dict[str, Any]:
        q = self.questions[index]
        return {"image": clip, "question": q.question, "target": q.answer, "answers": [q.answer],
                "answer_type": "", "question_id": q.question_id, **extra}


class CaptionClips(_TrainableClips):
    """Training: one (clip, caption) pair per caption."""

    def __init__(self, videos: list[CaptionedVideo], *args: Any) -> None:
        super().__init__(*args)
        self.pairs = [(v, c) for v in videos for c in v.captions]

    def __len__(self) -> int:
        return len(self.pairs)

    def path_of(self, index: int) -> str:
        return self.pairs[index][0].path

    def make_item(self, index: int, clip: Tensor | None, extra: dict[str, Any]) -> dict[str, Any]:
        v, caption = self.pairs[index]
        return {"image": clip, "caption": caption, "image_id": v.index, **extra}


class EvalVideos(ClipReader):
    """Evaluation: one clip with all its reference captions (and its 1k-A sentence, if any)."""

    def __init__(self, videos: list[CaptionedVideo], *args: Any) -> None:
        super().__init__(*args)
        self.videos = videos

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> dict[str, Any]:
        v = self.videos[i]
        return {"image": self.clip(v.path), "image_id": v.index, "captions": v.captions,
                "retrieval_text": v.retrieval_text}


def _split_broken(items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return [it for it in items if it["image"] is not None], [it for it in items if it["image"] is None]


def _undecoded(items: list[dict[str, Any]], broken: list[dict[str, Any]]) -> int:
    """Videos of this batch that could not be decoded: the broken items (evaluation) and the
    ones replaced by another item (training)."""
    return len(broken) + sum(it.get("replaced", 0) for it in items)


class VideoQACollator(VQACollator):
    """VQACollator's prompt/answer layout over the decodable clips; `skipped` counts the others,
    whose questions and answers are kept (`skipped_questions`, `skipped_answers`) for scoring."""

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        good, broken = _split_broken(items)
        batch = super().__call__(good) if good else {"images": torch.empty(0)}
        batch.update(batch_position(items))  # the last item's place, decodable or not
        batch["skipped"] = _undecoded(items, broken)
        batch["skipped_questions"] = [it["question"] for it in broken]
        batch["skipped_answers"] = [it["target"] for it in broken]
        return batch


class CaptionCollator:
    def __init__(self, tokenizer: Tokenizer, context_length: int, eval: bool = False) -> None:
        self.tokenizer, self.context_length, self.eval = tokenizer, context_length, eval

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        good, broken = _split_broken(items)
        tok = lambda texts: self.tokenizer(texts, self.context_length, pad_to_longest=True)  # noqa: E731
        batch: dict[str, Any] = {"skipped": _undecoded(items, broken), "skipped_ids": [it["image_id"] for it in broken],
                                 **batch_position(items)}
        if not good:
            return {**batch, "images": torch.empty(0)}
        batch["images"] = torch.stack([it["image"] for it in good])
        batch["image_ids"] = torch.tensor([it["image_id"] for it in good])
        if not self.eval:
            batch["tokens"] = tok([it["caption"] for it in good])
            return batch
        batch["captions"] = [it["captions"] for it in good]
        batch["tokens"] = tok([c for it in good for c in it["captions"]])
        ret = [it for it in good if it["retrieval_text"]]
        batch["retrieval_tokens"] = tok([it["retrieval_text"] for it in ret]) if ret else None
        batch["retrieval_ids"] = torch.tensor([it["image_id"] for it in ret], dtype=torch.long)
        return batch
