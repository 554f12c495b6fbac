r"""VQA accuracy, reproducing the official VQA evaluator exactly.

Reference: GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py (master,
the version that is also vendored by e.g. LAVIS and the VQA challenge):
https://github.com/GT-Vision-Lab/VQA/blob/master/PythonEvaluationTools/vqaEvaluation/vqaEval.py

Rules reproduced (line numbers are approximate, from the master version of that file):

* ``evaluate`` (l. ~86-103): newlines/tabs -> spaces and ``strip()`` are ALWAYS applied
  to the prediction and to the ground-truth answers. The full normalisation
  (``processPunctuation`` then ``processDigitArticle``) is applied to the GT answers AND
  to the prediction ONLY when the GT answers (after that strip) are not all identical,
  ``if len(set(gtAnswers)) > 1``. When the annotators agree, the comparison is an exact,
  case-sensitive string match: "Yes" or "yes." score 0 against ten "yes".
* Accuracy (l. ~105-112): for each GT answer, leave it out and score
  ``min(1, #matches among the other answers / 3)``; average over the GT answers. The
  official loop leaves an answer out by dict inequality, which removes exactly one entry
  because every answer dict carries a distinct ``answer_id``; here it is done by index.
* ``processPunctuation`` (l. ~130-140): for each mark in ``punct``, delete it if it is
  next to a space in the ORIGINAL text, or if the original text contains
  digit-comma-digit anywhere ("1,000" -> "1000"); otherwise replace it by a space
  ("a,b" -> "a b"). Then ``periodStrip`` removes periods not followed by a digit
  ("yes." -> "yes", "2.5" kept). Its ``(?!<=\d)`` is a typo for a look-behind and, as
  written, a no-op look-ahead. The call passes ``re.UNICODE`` positionally, which lands
  in ``count``: at most 32 periods are removed; kept for exactness. The apostrophe and
  the colon are NOT in ``punct``: "don't" survives as is.
* ``processDigitArticle`` (l. ~142-154): lower-case, split on whitespace, number words
  "none"/"zero".."ten" -> digits, drop the articles a/an/the, then expand contractions
  without apostrophe ("dont" -> "don't"; the keys with capitals, e.g. "Im", can never
  match after lower-casing).
* The overall score is the mean of the per-question accuracies x 100, and per answer
  type the mean over that type's questions. The official code also rounds to 2
  decimals, which is NOT done here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torchmetrics
from torch import Tensor

# fmt: off
_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
# fmt: on
_MANUAL_MAP: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: see module docstring
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
          ">", "<", "@", "`", ",", "?", "!"]  # fmt: skip
_PERIOD_STRIP_COUNT = int(re.UNICODE)  # the official code's accidental ``count`` (32)

ANSWER_TYPES: tuple[str, ...] = ("yes/no", "number", "other")


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    out = text
    # Both conditions look at the ORIGINAL text, not at the progressively edited one.
    delete = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if delete or (p + " " in text or " " + p in text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    words = [_MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(ans: str) -> str:
    """The official full answer processing: whitespace cleanup, punctuation, digits/articles.

    Note that the official evaluator applies this only when a question's GT answers are
    not all identical (see :func:`vqa_accuracy_per_question`).
    """
    return _process_digit_article(_process_punctuation(_clean_whitespace(ans)))


def vqa_accuracy_per_question(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of one prediction against its human answers, in [0, 1]."""
    if len(answers) == 0:
        raise ValueError("a question needs at least one ground-truth answer")
    gts = [_clean_whitespace(a) for a in answers]
    pred = _clean_whitespace(prediction)
    if len(set(gts)) > 1:
        gts = [_process_digit_article(_process_punctuation(a)) for a in gts]
        pred = _process_digit_article(_process_punctuation(pred))
    n_match = sum(a == pred for a in gts)
    # Leaving out a matching answer leaves n_match - 1 matches, any other leaves n_match.
    total = sum(min(1.0, (n_match - (a == pred)) / 3.0) for a in gts)
    return total / len(gts)


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """Mean official VQA accuracy over questions, in percent (not rounded)."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    if not predictions:
        raise ValueError("no questions")
    scores = [vqa_accuracy_per_question(p, a) for p, a in zip(predictions, answers)]
    return 100.0 * sum(scores) / len(scores)


class VQAAccuracy(torchmetrics.Metric):
    """Official VQA accuracy, overall and per answer type ("yes/no", "number", "other").

    States are sums of per-question scores and question counts (float64 tensors, one slot
    per answer type), reduced with ``sum`` across processes: DDP-safe without gathering
    strings. Note that ``DistributedSampler`` padding duplicates a few questions; this
    metric counts them (no ids here), like any sum-reduced metric.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    score_sum: Tensor
    count: Tensor
    type_score_sum: Tensor
    type_count: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        n_types = len(ANSWER_TYPES)
        self.add_state("score_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state(
            "type_score_sum", torch.zeros(n_types, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("type_count", torch.zeros(n_types, dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        predictions: Sequence[str],
        answers: Sequence[Sequence[str]],
        answer_types: Sequence[str] | None = None,
    ) -> None:
        if len(predictions) != len(answers):
            raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
        if answer_types is not None and len(answer_types) != len(predictions):
            raise ValueError(f"{len(answer_types)} answer types for {len(predictions)} questions")
        scores = [vqa_accuracy_per_question(p, a) for p, a in zip(predictions, answers)]
        self.score_sum += sum(scores)
        self.count += len(scores)
        if answer_types is None:
            return
        type_scores = [0.0] * len(ANSWER_TYPES)
        type_counts = [0.0] * len(ANSWER_TYPES)
        for score, answer_type in zip(scores, answer_types):
            try:
                i = ANSWER_TYPES.index(answer_type)
            except ValueError:
                raise ValueError(
                    f"unknown answer type {answer_type!r}; expected one of {ANSWER_TYPES}"
                ) from None
            type_scores[i] += score
            type_counts[i] += 1
        self.type_score_sum += torch.tensor(type_scores, dtype=torch.float64, device=self.device)
        self.type_count += torch.tensor(type_counts, dtype=torch.float64, device=self.device)

    def compute(self) -> dict[str, Tensor]:
        result = {"vqa_accuracy": 100.0 * self.score_sum / self.count}
        for i, answer_type in enumerate(ANSWER_TYPES):
            if self.type_count[i] > 0:
                result[f"vqa_accuracy/{answer_type}"] = (
                    100.0 * self.type_score_sum[i] / self.type_count[i]
                )
        return result
