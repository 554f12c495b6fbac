"""VQA v2 in its official layout: questions + annotations JSON and the COCO image folders.

    ROOT/v2_OpenEnded_mscoco_{train2014,val2014,test2015,test-dev2015}_questions.json
    ROOT/v2_mscoco_{train2014,val2014}_annotations.json      (test splits have none)
    ROOT/{train2014,val2014,test2015}/COCO_{subtype}_{image_id:012d}.jpg

The task is open-ended generation (as in the paper): the decoder gets the question
as a prompt and generates the answer. Training sequences are

    [bos] prompt(question) answer [eos]

with the loss on the answer tokens and eos only (`answer_mask`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mammut_pl.data.coco import field, read_json
from mammut_pl.data.context import EvalContext
from mammut_pl.data.epochs import ResumableTrainData, SampleRef, batch_position, item_index, seeded_item
from mammut_pl.data.tokenizer import Tokenizer
from mammut_pl.data.transforms import image_transform, load_image

log = logging.getLogger(__name__)

# question-file split -> the COCO image folder and file prefix it uses
IMAGE_FOLDERS = {
    "train2014": "train2014", "val2014": "val2014", "test2015": "test2015", "test-dev2015": "test2015",
}
ANNOTATED = ("train2014", "val2014")
DEFAULT_PROMPT = "question: {question} answer:"


@dataclass
class VQAQuestion:
    question_id: int
    image_id: int
    image_path: str
    question: str
    answers: list[str]  # the 10 human answers ([] on test splits)
    answer_type: str  # "yes/no" | "number" | "other" ("" on test splits)
    question_type: str
    target: str  # the training answer: multiple_choice_answer ("" on test splits)


def question_file(root: Path, split: str) -> Path:
    return root / f"v2_OpenEnded_mscoco_{split}_questions.json"


def annotation_file(root: Path, split: str) -> Path:
    return root / f"v2_mscoco_{split}_annotations.json"


def image_path(root: Path, split: str, image_id: int) -> Path:
    folder = IMAGE_FOLDERS[split]
    return root / folder / f"COCO_{folder}_{image_id:012d}.jpg"


def read_vqav2(root: str | Path, split: str) -> list[VQAQuestion]:
    """All questions of one split, joined with their annotations where the split has them.

    Errors name the file, the record and the field; a question without an
    annotation (or the reverse) is an error, not a silent drop."""
    root = Path(root)
    if split not in IMAGE_FOLDERS:
        raise ValueError(f"VQAv2 split {split!r}: expected one of {', '.join(IMAGE_FOLDERS)}")
    qpath = question_file(root, split)
    qdata = read_json(qpath, f"VQAv2 {split} questions file")
    questions = field(qdata, "questions", list, str(qpath))
    anns: dict[int, dict[str, Any]] = {}
    if split in ANNOTATED:
        apath = annotation_file(root, split)
        adata = read_json(apath, f"VQAv2 {split} annotations file")
        for i, ann in enumerate(field(adata, "annotations", list, str(apath))):
            qid = field(ann, "question_id", int, f"{apath}: annotations[{i}]")
            if qid in anns:
                raise ValueError(f"{apath}: annotations[{i}]: field 'question_id': {qid} repeats {anns[qid]['index']}")
            anns[qid] = {"record": ann, "where": f"{apath}: annotations[{i}] (question_id {qid})",
                         "index": f"annotations[{i}]"}
    out: list[VQAQuestion] = []
    seen: dict[int, int] = {}
    for i, rec in enumerate(questions):
        where = f"{qpath}: questions[{i}]"
        qid = field(rec, "question_id", int, where)
        if qid in seen:
            raise ValueError(f"{where}: field 'question_id': {qid} repeats questions[{seen[qid]}]")
        seen[qid] = i
        image_id = field(rec, "image_id", int, where)
        text = field(rec, "question", str, where).strip()
        if not text:
            raise ValueError(f"{where}: field 'question' is empty")
        answers, answer_type, question_type, target = [], "", "", ""
        if split in ANNOTATED:
            if qid not in anns:
                raise ValueError(f"{where}: question_id {qid} has no annotation in {annotation_file(root, split)}")
            found = anns.pop(qid)
            ann, awhere = found["record"], found["where"]
            if field(ann, "image_id", int, awhere) != image_id:
                raise ValueError(f"{awhere}: field 'image_id' is {ann['image_id']} but {where} has image_id {image_id}")
            answers = [field(a, "answer", str, f"{awhere}.answers[{j}]")
                       for j, a in enumerate(field(ann, "answers", list, awhere))]
            if not answers:
                raise ValueError(f"{awhere}: field 'answers' is empty")
            answer_type = field(ann, "answer_type", str, awhere)
            question_type = field(ann, "question_type", str, awhere)
            target = field(ann, "multiple_choice_answer", str, awhere).strip()
            if not target:
                raise ValueError(f"{awhere}: field 'multiple_choice_answer' is empty")
        out.append(VQAQuestion(qid, image_id, str(image_path(root, split, image_id)), text, answers,
                               answer_type, question_type, target))
    if anns:
        qid = next(iter(anns))
        raise ValueError(f"{anns[qid]['where']}: no question with this question_id in {qpath}")
    if not out:
        raise ValueError(f"{qpath}: no questions")
    return out


def majority_answer(questions: list[VQAQuestion]) -> str:
    """The most frequent training answer: the baseline a VQA model must beat."""
    return Counter(q.target for q in questions).most_common(1)[0][0]


class VQADataset(Dataset):
    def __init__(self, questions: list[VQAQuestion], transform) -> None:
        self.questions, self.transform = questions, transform

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, i: int | SampleRef) -> dict[str, Any]:
        q = self.questions[item_index(i)]
        pixels, extra = seeded_item(i, self.transform, load_image(q.image_path))  # training: seeded, positioned
        return {"image": pixels, "question": q.question, "target": q.target, "answers": q.answers,
                "answer_type": q.answer_type, "question_id": q.question_id, **extra}


class VQACollator:
    """Images + prompt/answer token layouts for teacher forcing and for generation.

    tokens      (B, T)  [bos] prompt answer [eos] [pad]...   (teacher forcing)
    answer_mask (B, T)  True at the answer tokens and eos     (the loss targets)
    prompts     (B, P)  [bos] prompt [pad]...                 (generation)
    """

    def __init__(self, tokenizer: Tokenizer, context_length: int, prompt: str = DEFAULT_PROMPT,
                 max_answer_tokens: int = 8) -> None:
        self.tokenizer, self.context_length = tokenizer, context_length
        self.prompt, self.max_answer_tokens = prompt, max_answer_tokens

    def prompt_ids(self, question: str) -> list[int]:
        ids = self.tokenizer.encode(self.prompt.format(question=question))
        room = self.context_length - 2 - self.max_answer_tokens  # bos, eos, the answer
        if len(ids) > room:  # keep the end, where the prompt's "answer:" cue sits
            ids = ids[len(ids) - room:]
        return [self.tokenizer.bos_id, *ids]

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        tok = self.tokenizer
        prompts = [self.prompt_ids(it["question"]) for it in items]
        answers = [tok.encode(it["target"])[: self.max_answer_tokens] + [tok.eos_id] for it in items]
        T = max(len(p) + len(a) for p, a in zip(prompts, answers))
        P = max(len(p) for p in prompts)
        tokens = torch.full((len(items), T), tok.pad_id, dtype=torch.long)
        answer_mask = torch.zeros(len(items), T, dtype=torch.bool)
        prompt_tokens = torch.full((len(items), P), tok.pad_id, dtype=torch.long)
        for b, (p, a) in enumerate(zip(prompts, answers)):
            tokens[b, : len(p) + len(a)] = torch.tensor(p + a)
            answer_mask[b, len(p): len(p) + len(a)] = True
            prompt_tokens[b, : len(p)] = torch.tensor(p)
        return {
            "images": torch.stack([it["image"] for it in items]),
            "tokens": tokens, "answer_mask": answer_mask, "prompt_tokens": prompt_tokens,
            "question_ids": torch.tensor([it["question_id"] for it in items]),
            "questions": [it["question"] for it in items],
            "answers": [it["answers"] for it in items],
            "answer_types": [it["answer_type"] for it in items],
            **batch_position(items),  # where the last item stood in its epoch: for resuming
        }


def answer_targets(tokens: Tensor, answer_mask: Tensor) -> Tensor:
    """Next-token targets (B, T-1) for logits[:, :-1]: the answer tokens, -100 elsewhere."""
    return tokens[:, 1:].masked_fill(~answer_mask[:, 1:], -100)


class VQAv2DataModule(ResumableTrainData, L.LightningDataModule):
    """train = `train_split` ("train2014", or several joined by "+", e.g. "train2014+val2014");
    val / test = annotated splits scored with the official VQA accuracy;
    `predict_split` (e.g. "test-dev2015") = questions only, for the results JSON."""

    def __init__(self, root: str, tokenizer: Tokenizer, image_size: int, context_length: int,
                 batch_size: int = 32, eval_batch_size: int = 64, num_workers: int = 2,
                 train_split: str = "train2014", val_split: str = "val2014", test_split: str = "val2014",
                 predict_split: str = "test-dev2015", prompt: str = DEFAULT_PROMPT, max_answer_tokens: int = 8,
                 max_eval_questions: int = 0, augment: bool = True, crop_scale_min: float = 0.8,
                 seed: int = 0) -> None:
        super().__init__()
        self.root, self.tokenizer = Path(root), tokenizer
        self.image_size, self.context_length = image_size, context_length
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.predict_split, self.max_eval_questions = predict_split, max_eval_questions
        self.augment, self.crop_scale_min, self.seed = augment, crop_scale_min, seed
        self.init_resume()
        self.collate = VQACollator(tokenizer, context_length, prompt, max_answer_tokens)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root: VQAv2 folder not found: {self.root} (expected the official "
                                    "question/annotation JSON files and the COCO image folders)")
        for split in self._splits(train_split) + [val_split, test_split]:
            if split not in ANNOTATED:
                raise ValueError(f"VQAv2 split {split!r} has no annotations: training and validation need "
                                 f"one of {ANNOTATED} (use predict for {split})")
        self._cache: dict[str, list[VQAQuestion]] = {}

    @staticmethod
    def _splits(spec: str) -> list[str]:
        return [s.strip() for s in spec.split("+") if s.strip()]

    def questions(self, split: str) -> list[VQAQuestion]:
        if split not in self._cache:
            self._cache[split] = [q for s in self._splits(split) for q in read_vqav2(self.root, s)]
        return self._cache[split]

    def eval_context(self) -> EvalContext:
        return EvalContext(val_split=self.val_split, test_split=self.test_split, eval_questions=self.eval_questions,
                           majority_answer=self.majority_answer)

    def majority_answer(self) -> str:
        return majority_answer(self.questions(self.train_split))

    def eval_questions(self, split: str) -> list[VQAQuestion]:
        qs = self.questions(split)
        return qs[: self.max_eval_questions] if self.max_eval_questions else qs

    def _eval_loader(self, questions: list[VQAQuestion]) -> DataLoader:
        return DataLoader(VQADataset(questions, image_transform(self.image_size, train=False)),
                          batch_size=self.eval_batch_size, shuffle=False, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, collate_fn=self.collate)

    def train_dataloader(self) -> DataLoader:
        transform = image_transform(self.image_size, True, self.augment, self.crop_scale_min)
        return self.resumable_loader(VQADataset(self.questions(self.train_split), transform), self.collate)

    def train_size(self) -> int:
        return len(self.questions(self.train_split))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.eval_questions(self.val_split))

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.eval_questions(self.test_split))

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(read_vqav2(self.root, self.predict_split))
