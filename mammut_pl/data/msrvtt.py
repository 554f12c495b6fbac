"""MSR-VTT in its published layouts: videos, MSRVTT-QA, captions and the 1k-A retrieval split.

    ROOT/VIDEO_DIR/video{id}.mp4 (or .avi / .webm)          VIDEO_DIR: data.msrvtt.video_dir, "videos"
    ROOT/{train,val,test}_qa.json                           MSRVTT-QA (Xu et al. 2017):
        [{"question", "answer", "video_id": 0, "id": 0, "category_id": ...}, ...]
    ROOT/MSRVTT_data.json (or train_val_videodatainfo.json) captions:
        {"videos": [{"video_id": "video0", "split": "train|validate|test", ...}],
         "sentences": [{"video_id": "video0", "caption": "...", "sen_id": 0}]}
    ROOT/MSRVTT_JSFUSION_test.csv                           1k-A test: key,vid_key,video_id,sentence

Clips: T frames (video.num_frames) sampled at video.fps, decoded with PyAV in the DataLoader
workers (data/video_decode.py: sampling, decoding, the clip transform and reader; data/msrvtt_clips.py:
the datasets and collators).

A video that cannot be decoded (broken, truncated, garbage, no video stream, no frame) is
skipped and counted: in training another item (drawn from the item's seed) takes its place,
so batches stay full on every rank, and batches carry `skipped` (logged as
train/skipped_samples); evaluation counts its questions as wrong. Never a crash, never a silent zero tensor.
Questions (VideoQA) are generated answers: the prompt is `data.msrvtt.prompt`; the answer
vocabulary is the top-K training answers (video.answer_vocab_size), training keeps the
questions whose answer is in it, evaluation counts the others as wrong.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from mammut_pl.data.coco import field, read_json
from mammut_pl.data.context import EvalContext
from mammut_pl.data.epochs import ResumableTrainData
from mammut_pl.data.msrvtt_clips import CaptionClips, CaptionCollator, EvalVideos, QAClips, VideoQACollator
from mammut_pl.data.tokenizer import Tokenizer
from mammut_pl.data.video_decode import (ClipReader, ClipTransform, VideoError, decode_all, eval_clip_reader,
                                         pick_frames, read_video, sample_times)
from mammut_pl.data.vqav2 import DEFAULT_PROMPT
from mammut_pl.metrics.vqa import normalize_answer

__all__ = ["MSRVTTDataModule", "VideoQuestion", "CaptionedVideo", "read_msrvtt_qa", "read_msrvtt_captions",
           "read_retrieval_csv", "answer_vocabulary", "video_key", "find_video",
           # the decoding names, from data/video_decode.py where they moved (still importable from here)
           "VideoError", "ClipTransform", "ClipReader", "eval_clip_reader", "read_video", "decode_all", "pick_frames",
           "sample_times"]

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm")
QA_FILES = {"train": "train_qa.json", "val": "val_qa.json", "test": "test_qa.json"}
CAPTION_SPLITS = {"train": "train", "val": "validate", "test": "test"}  # our name -> MSRVTT's


# --- records ---------------------------------------------------------------------------------------
@dataclass
class VideoQuestion:
    question_id: int
    video_id: str  # "video123"
    path: str
    question: str
    answer: str


@dataclass
class CaptionedVideo:
    video_id: str
    path: str
    captions: list[str]
    retrieval_text: str = ""  # the 1k-A sentence ("" = not in the retrieval split)

    @property
    def index(self) -> int:
        return video_index(self.video_id)


def video_key(value: Any, where: str) -> str:
    """MSRVTT-QA has integer ids (0), the caption files strings ("video0"): both -> "video0"."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: field 'video_id' should be an int or 'video<N>', got {value!r}")
    if isinstance(value, int) and value >= 0:
        return f"video{value}"
    if isinstance(value, str) and value.startswith("video") and value[5:].isdigit():
        return value
    raise ValueError(f"{where}: field 'video_id' should be an int or 'video<N>', got {value!r:.60}")


def video_index(key: str) -> int:
    return int(key[5:])


def find_video(folder: Path, key: str) -> Path | None:
    for ext in VIDEO_EXTENSIONS:
        p = folder / f"{key}{ext}"
        if p.is_file():
            return p
    return None


def _video_path(folder: Path, key: str, where: str) -> str:
    p = find_video(folder, key)
    if p is None:
        raise FileNotFoundError(f"{where}: video {key} not found: expected {folder}/{key}"
                                f"{{{','.join(VIDEO_EXTENSIONS)}}}")
    return str(p)


def read_msrvtt_qa(root: str | Path, split: str, video_dir: str = "videos") -> list[VideoQuestion]:
    """One MSRVTT-QA split; errors name the file, the record (`[i]`) and the field."""
    root = Path(root)
    if split not in QA_FILES:
        raise ValueError(f"MSRVTT-QA split {split!r}: expected one of {', '.join(QA_FILES)}")
    path = root / QA_FILES[split]
    data = read_json(path, f"MSRVTT-QA {split} file")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of questions, got {type(data).__name__}")
    out, seen = [], set()
    for i, rec in enumerate(data):
        where = f"{path}: [{i}]"
        qid = field(rec, "id", int, where)
        if qid in seen:
            raise ValueError(f"{where}: duplicate id {qid}")
        seen.add(qid)
        key = video_key(field(rec, "video_id", (int, str), where), where)
        question = field(rec, "question", str, where).strip()
        answer = field(rec, "answer", str, where).strip()
        if not question:
            raise ValueError(f"{where}: field 'question' is empty")
        if not answer:
            raise ValueError(f"{where}: field 'answer' is empty")
        out.append(VideoQuestion(qid, key, _video_path(root / video_dir, key, where), question, answer))
    if not out:
        raise ValueError(f"{path}: no questions")
    return out


def read_msrvtt_captions(path: str | Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """MSRVTT_data.json-style file -> ({video_id: split}, {video_id: [captions]})."""
    path = Path(path)
    data = read_json(path, "MSRVTT captions file (MSRVTT_data.json / train_val_videodatainfo.json)")
    splits: dict[str, str] = {}
    for i, rec in enumerate(field(data, "videos", list, str(path))):
        where = f"{path}: videos[{i}]"
        splits[video_key(field(rec, "video_id", (int, str), where), where)] = field(rec, "split", str, where)
    captions: dict[str, list[str]] = {}
    for i, rec in enumerate(field(data, "sentences", list, str(path))):
        where = f"{path}: sentences[{i}]"
        key = video_key(field(rec, "video_id", (int, str), where), where)
        if key not in splits:
            raise ValueError(f"{where}: video_id {key!r} is not listed in 'videos'")
        caption = field(rec, "caption", str, where).strip()
        if caption:
            captions.setdefault(key, []).append(caption)
    return splits, captions


def read_retrieval_csv(path: str | Path) -> list[tuple[str, str]]:
    """The 1k-A split (JSFusion): rows key,vid_key,video_id,sentence -> [(video_id, sentence)]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MSRVTT 1k-A retrieval split not found: expected {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"video_id", "sentence"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: header lacks column(s) {sorted(missing)} (expected key,vid_key,video_id,sentence)")
        rows = []
        for i, row in enumerate(reader):
            where = f"{path}: row {i + 2}"
            rows.append((video_key(row["video_id"], where), (row["sentence"] or "").strip()))
            if not rows[-1][1]:
                raise ValueError(f"{where}: column 'sentence' is empty")
    return rows


def answer_vocabulary(questions: list[VideoQuestion], k: int) -> list[str]:
    """The K most frequent normalised training answers (ties: alphabetical)."""
    counts = Counter(normalize_answer(q.answer) for q in questions)
    return [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


# --- the datamodule ---------------------------------------------------------------------------------
class MSRVTTDataModule(ResumableTrainData, L.LightningDataModule):
    """task="qa": MSRVTT-QA (train/val/test_qa.json); task="caption": captions of MSRVTT_data.json
    by its `split` field (train / validate / test), the test videos also scored for text -> video
    retrieval on the 1k-A sentences when the CSV is there."""

    def __init__(self, root: str, tokenizer: Tokenizer, image_size: int, context_length: int, task: str = "qa",
                 batch_size: int = 32, eval_batch_size: int = 64, num_workers: int = 2, num_frames: int = 16,
                 fps: float = 0.0, sampling: str = "random", video_dir: str = "videos",
                 answer_vocab_size: int = 1000, prompt: str = DEFAULT_PROMPT, max_answer_tokens: int = 8,
                 max_eval_questions: int = 0, captions_file: str = "MSRVTT_data.json",
                 retrieval_csv: str = "MSRVTT_JSFUSION_test.csv", augment: bool = True,
                 crop_scale_min: float = 0.8, cache_clips: bool = False, test_split: str = "test",
                 seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        self.init_resume()
        self.root, self.tokenizer, self.task = Path(root), tokenizer, task
        if task not in ("qa", "caption"):
            raise ValueError(f"MSRVTTDataModule task={task!r}: expected 'qa' or 'caption'")
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root: MSRVTT folder not found: {self.root} (expected {video_dir}/, "
                                    "{train,val,test}_qa.json and/or MSRVTT_data.json)")
        self.image_size, self.context_length = image_size, context_length
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.num_frames, self.fps, self.sampling = num_frames, fps, sampling
        self.video_dir, self.answer_vocab_size = video_dir, answer_vocab_size
        self.max_eval_questions, self.captions_file, self.retrieval_csv = max_eval_questions, captions_file, retrieval_csv
        self.augment, self.crop_scale_min, self.cache_clips = augment, crop_scale_min, cache_clips
        if test_split not in CAPTION_SPLITS:
            raise ValueError(f"MSRVTT test split {test_split!r}: expected one of {', '.join(CAPTION_SPLITS)}")
        self.val_split, self.test_split = "val", test_split
        self.qa_collate = VideoQACollator(tokenizer, context_length, prompt, max_answer_tokens)
        self._qa: dict[str, list[VideoQuestion]] = {}
        self._captions: dict[str, list[CaptionedVideo]] | None = None
        self._vocab: list[str] | None = None

    # --- records ---
    def questions(self, split: str) -> list[VideoQuestion]:
        if split not in self._qa:
            self._qa[split] = read_msrvtt_qa(self.root, split, self.video_dir)
        return self._qa[split]

    def eval_context(self) -> EvalContext:
        return EvalContext(val_split=self.val_split, test_split=self.test_split, eval_questions=self.eval_questions,
                           majority_answer=self.majority_answer, answer_vocabulary=self.answer_vocabulary)

    def answer_vocabulary(self) -> list[str]:
        if self._vocab is None:
            self._vocab = answer_vocabulary(self.questions("train"), self.answer_vocab_size)
        return self._vocab

    def train_questions(self) -> list[VideoQuestion]:
        vocab = set(self.answer_vocabulary())
        kept = [q for q in self.questions("train") if normalize_answer(q.answer) in vocab]
        if len(kept) < len(self.questions("train")):
            log.info("MSRVTT-QA train: %d of %d questions have an answer in the top-%d vocabulary",
                     len(kept), len(self.questions("train")), self.answer_vocab_size)
        return kept

    def majority_answer(self) -> str:
        return self.answer_vocabulary()[0]

    def eval_questions(self, split: str) -> list[VideoQuestion]:
        qs = self.questions(split)
        return qs[: self.max_eval_questions] if self.max_eval_questions else qs

    def videos(self, split: str) -> list[CaptionedVideo]:
        """Captioned videos of one split (train / val / test)."""
        if self._captions is None:
            splits, captions = read_msrvtt_captions(self.root / self.captions_file)
            retrieval: dict[str, str] = {}
            csv_path = self.root / self.retrieval_csv
            if self.retrieval_csv and csv_path.is_file():
                retrieval = dict(read_retrieval_csv(csv_path))
            folder = self.root / self.video_dir
            by_split: dict[str, list[CaptionedVideo]] = {k: [] for k in CAPTION_SPLITS}
            ours = {v: k for k, v in CAPTION_SPLITS.items()}
            for key, split_name in splits.items():
                name = "test" if key in retrieval else ours.get(split_name)
                if name is None or not captions.get(key):
                    continue
                where = f"{self.root / self.captions_file}: {key}"
                by_split[name].append(CaptionedVideo(key, _video_path(folder, key, where), captions[key],
                                                     retrieval.get(key, "")))
            self._captions = {k: sorted(v, key=lambda x: x.index) for k, v in by_split.items()}
        videos = self._captions[split]
        if not videos:
            raise ValueError(f"{self.root / self.captions_file}: no captioned video in split "
                             f"{CAPTION_SPLITS[split]!r}")
        if split != "train" and self.max_eval_questions:
            return videos[: self.max_eval_questions]
        return videos

    # --- loaders ---
    def _eval_loader(self, dataset: Dataset, collate) -> DataLoader:
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, collate_fn=collate)

    def _clip_args(self, train: bool) -> tuple:
        transform = ClipTransform(self.image_size, train, self.augment, self.crop_scale_min)
        return transform, self.num_frames, self.fps, train and self.sampling == "random", self.cache_clips

    def _dataset(self, split: str, train: bool) -> tuple[Dataset, Any]:
        if self.task == "qa":
            qs = self.train_questions() if train else self.eval_questions(split)
            return QAClips(qs, *self._clip_args(train)), self.qa_collate
        if train:
            return (CaptionClips(self.videos(split), *self._clip_args(True)),
                    CaptionCollator(self.tokenizer, self.context_length))
        return (EvalVideos(self.videos(split), *self._clip_args(False)),
                CaptionCollator(self.tokenizer, self.context_length, eval=True))

    def train_dataloader(self) -> DataLoader:
        ds, collate = self._dataset("train", True)
        return self.resumable_loader(ds, collate)  # seeded order and clips: ckpt_path=last resumes at the batch

    def train_size(self) -> int:
        return len(self._dataset("train", True)[0])

    def val_dataloader(self) -> DataLoader:
        ds, collate = self._dataset(self.val_split, False)
        return self._eval_loader(ds, collate)

    def test_dataloader(self) -> DataLoader:
        ds, collate = self._dataset(self.test_split, False)
        return self._eval_loader(ds, collate)
