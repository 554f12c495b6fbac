"""Tests for mammut_pl.metrics.vqa.

References: hand-worked leave-one-out values, hand-worked normalisation cases, and a
line-by-line transliteration of the official evaluator (GT-Vision-Lab/VQA master,
PythonEvaluationTools/vqaEvaluation/vqaEval.py: class VQAEval operating on the vqa /
vqaRes objects) run on seeded random predictions and answer sets.
"""

from __future__ import annotations

import random
import re
import sys

import pytest
import torch

from mammut_pl.metrics.vqa import (
    VQAAccuracy,
    normalize_answer,
    vqa_accuracy,
    vqa_accuracy_per_question,
)

# ---------------------------------------------------------------------------------
# Transliteration of the official evaluator (kept deliberately close to the original,
# tabs/naming aside; tables retyped from the official file).
# ---------------------------------------------------------------------------------


class OfficialVQAEval:
    def __init__(self, vqa, vqaRes, n=2):
        self.n = n
        self.accuracy = {}
        self.evalQA = {}
        self.evalQuesType = {}
        self.evalAnsType = {}
        self.vqa = vqa
        self.vqaRes = vqaRes
        self.params = {"question_id": vqa.getQuesIds()}
        self.rawAccQA = {}  # addition for the tests: unrounded per-question accuracy
        self.contractions = {
            "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
            "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
            "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've",
            "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've",
            "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
            "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
            "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
            "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
            "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
            "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
            "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
            "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
            "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've",
            "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
            "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
            "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
            "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
            "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
            "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
            "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
            "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
            "youll": "you'll", "youre": "you're", "youve": "you've",
        }  # fmt: skip
        self.manualMap = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                          "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
        self.articles = ["a", "an", "the"]
        self.periodStrip = re.compile(r"(?!<=\d)(\.)(?!\d)")
        self.commaStrip = re.compile(r"(\d)(\,)(\d)")
        self.punct = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
                      ">", "<", "@", "`", ",", "?", "!"]  # fmt: skip

    def evaluate(self, quesIds=None):
        if quesIds is None:
            quesIds = [quesId for quesId in self.params["question_id"]]
        gts = {}
        res = {}
        for quesId in quesIds:
            gts[quesId] = self.vqa.qa[quesId]
            res[quesId] = self.vqaRes.qa[quesId]
        accQA = []
        accQuesType = {}
        accAnsType = {}
        for quesId in quesIds:
            for ansDic in gts[quesId]["answers"]:
                ansDic["answer"] = ansDic["answer"].replace("\n", " ")
                ansDic["answer"] = ansDic["answer"].replace("\t", " ")
                ansDic["answer"] = ansDic["answer"].strip()
            resAns = res[quesId]["answer"]
            resAns = resAns.replace("\n", " ")
            resAns = resAns.replace("\t", " ")
            resAns = resAns.strip()
            gtAcc = []
            gtAnswers = [ans["answer"] for ans in gts[quesId]["answers"]]
            if len(set(gtAnswers)) > 1:
                for ansDic in gts[quesId]["answers"]:
                    ansDic["answer"] = self.processPunctuation(ansDic["answer"])
                    ansDic["answer"] = self.processDigitArticle(ansDic["answer"])
                resAns = self.processPunctuation(resAns)
                resAns = self.processDigitArticle(resAns)
            for gtAnsDatum in gts[quesId]["answers"]:
                otherGTAns = [item for item in gts[quesId]["answers"] if item != gtAnsDatum]
                matchingAns = [item for item in otherGTAns if item["answer"] == resAns]
                acc = min(1, float(len(matchingAns)) / 3)
                gtAcc.append(acc)
            quesType = gts[quesId]["question_type"]
            ansType = gts[quesId]["answer_type"]
            avgGTAcc = float(sum(gtAcc)) / len(gtAcc)
            self.rawAccQA[quesId] = avgGTAcc
            accQA.append(avgGTAcc)
            if quesType not in accQuesType:
                accQuesType[quesType] = []
            accQuesType[quesType].append(avgGTAcc)
            if ansType not in accAnsType:
                accAnsType[ansType] = []
            accAnsType[ansType].append(avgGTAcc)
            self.evalQA[quesId] = round(100 * avgGTAcc, self.n)
        self.accuracy["overall"] = round(100 * float(sum(accQA)) / len(accQA), self.n)
        self.accuracy["perAnswerType"] = {
            t: round(100 * float(sum(accAnsType[t])) / len(accAnsType[t]), self.n) for t in accAnsType
        }

    def processPunctuation(self, inText):
        outText = inText
        for p in self.punct:
            if (p + " " in inText or " " + p in inText) or (re.search(self.commaStrip, inText) != None):  # noqa: E711
                outText = outText.replace(p, "")
            else:
                outText = outText.replace(p, " ")
        # The official call passes re.UNICODE positionally, i.e. as ``count``.
        if sys.version_info >= (3, 13):
            outText = self.periodStrip.sub("", outText, count=re.UNICODE)
        else:
            outText = self.periodStrip.sub("", outText, re.UNICODE)
        return outText

    def processDigitArticle(self, inText):
        outText = []
        tempText = inText.lower().split()
        for word in tempText:
            word = self.manualMap.setdefault(word, word)
            if word not in self.articles:
                outText.append(word)
            else:
                pass
        for wordId, word in enumerate(outText):
            if word in self.contractions:
                outText[wordId] = self.contractions[word]
        outText = " ".join(outText)
        return outText


class _FakeVQA:
    """The attributes of the official VQA helper class that VQAEval uses."""

    def __init__(self, qa: dict):
        self.qa = qa

    def getQuesIds(self):
        return list(self.qa)


def run_official(predictions, answers, answer_types):
    gt_qa, res_qa = {}, {}
    for qid, (pred, answer_list, atype) in enumerate(zip(predictions, answers, answer_types)):
        gt_qa[qid] = {
            "question_id": qid,
            "question_type": "what",
            "answer_type": atype,
            # Distinct answer_id per answer, as in the official annotation files.
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answer_list)],
        }
        res_qa[qid] = {"question_id": qid, "answer": pred}
    official = OfficialVQAEval(_FakeVQA(gt_qa), _FakeVQA(res_qa))
    official.evaluate()
    return official


# ---------------------------------------------------------------------------------
# Hand-worked examples
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_match", "expected"),
    [
        (0, 0.0),
        (1, 0.3),  # leave out the match: 0; the 9 others: 1/3 -> 9/30
        (2, 0.6),  # (2 * 1/3 + 8 * 2/3) / 10
        (3, 0.9),  # (3 * 2/3 + 7 * 1) / 10
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_leave_one_out_accuracy(n_match: int, expected: float) -> None:
    answers = ["cat"] * n_match + ["dog", "bird", "cow", "fish", "horse", "sheep", "frog", "ant", "bee", "owl"][: 10 - n_match]
    assert vqa_accuracy_per_question("cat", answers) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("dont", "don't"),  # contraction table
        ("don't", "don't"),  # the apostrophe is not in the punct list
        ("two", "2"),
        ("none", "0"),
        ("a dog", "dog"),
        ("the  Two dogs", "2 dogs"),
        ("yes.", "yes"),
        ("Yes!", "yes"),
        ("1,000", "1000"),  # digit,digit anywhere: punctuation deleted, not spaced
        ("red,blue", "red blue"),  # otherwise replaced by a space
        ("red, blue", "red blue"),  # next to a space: deleted
        ("2.5", "2.5"),  # period followed by a digit is kept
        ("5.", "5"),
        ("(hello)", "hello"),
        ("left/right", "left right"),
        ("a -b c-d", "b cd"),  # one mark next to a space anywhere: that mark deleted everywhere
        ("c;-d e-f", "c d e f"),  # adjacency is checked in the ORIGINAL text, not the edited one
        ("  yes\n", "yes"),
        ("x." * 40, "x" * 32 + "x." * 8),  # official count=re.UNICODE: only 32 periods removed
    ],
)
def test_normalize_answer(raw: str, normalised: str) -> None:
    assert normalize_answer(raw) == normalised


def test_normalisation_only_when_gt_answers_disagree() -> None:
    # Unanimous GT: exact, case-sensitive match after whitespace strip only.
    assert vqa_accuracy_per_question("yes", ["yes"] * 10) == 1.0
    assert vqa_accuracy_per_question("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy_per_question("yes.", ["yes"] * 10) == 0.0
    assert vqa_accuracy_per_question(" yes\t", ["yes\n"] * 10) == 1.0  # strip applies always
    assert vqa_accuracy_per_question("2", ["two"] * 10) == 0.0
    # Any disagreement: everything is normalised, so "YES." now matches all ten.
    assert vqa_accuracy_per_question("YES.", ["yes"] * 9 + ["Yes"]) == 1.0
    assert vqa_accuracy_per_question("2", ["two"] * 9 + ["2"]) == 1.0


def test_vqa_accuracy_is_mean_percent() -> None:
    preds = ["cat", "yes", "no"]
    answers = [["cat"] * 3 + ["dog"] * 7, ["yes"] * 10, ["yes"] * 10]
    assert vqa_accuracy(preds, answers) == pytest.approx(100 * (0.9 + 1.0 + 0.0) / 3)


# ---------------------------------------------------------------------------------
# Against the official evaluator
# ---------------------------------------------------------------------------------

_VARIANTS = {
    "2": ["2", "two", "Two", "2.", " 2 ", "two!", "the two", "2\n"],
    "yes": ["yes", "Yes", "yes.", "YES", "yes!", " yes", "yes\t", "yes,"],
    "dog": ["dog", "a dog", "the dog", "Dog.", "dog!", "an dog", "(dog)", "dog?"],
    "don't know": ["dont know", "don't know", "Dont Know", "don't know.", "dont-know"],
    "1000": ["1,000", "1000", "1,000.", "1 000", "1.000"],
    "red and white": ["red and white", "red, white", "red/white", "red & white", "red-white", "Red and White."],
    "2.5": ["2.5", "2.5.", "two.5", "2,5", "2 . 5"],
    "none": ["none", "None", "0", "zero", "nothing"],
    "what's that": ["what's that", "whats that", "what is that", "what`s that", "whats; that"],
}
_TYPES = ["yes/no", "number", "other"]


def _random_case(rng: random.Random):
    key = rng.choice(list(_VARIANTS))
    pool = _VARIANTS[key] + _VARIANTS[rng.choice(list(_VARIANTS))]
    if rng.random() < 0.25:  # unanimous answers exercise the no-normalisation branch
        answers = [rng.choice(pool)] * 10
    else:
        answers = [rng.choice(pool) for _ in range(10)]
    prediction = rng.choice(pool + ["", "  ", "a", "the"])
    return prediction, answers, rng.choice(_TYPES)


def test_matches_official_evaluator_on_random_cases() -> None:
    rng = random.Random(1234)
    cases = [_random_case(rng) for _ in range(600)]
    preds, answers, types = (list(x) for x in zip(*cases))
    official = run_official(preds, [list(a) for a in answers], types)

    ours = [vqa_accuracy_per_question(p, a) for p, a in zip(preds, answers)]
    for qid, acc in enumerate(ours):
        assert acc == pytest.approx(official.rawAccQA[qid], abs=1e-12), cases[qid]
    # The comparison must be informative: a spread of scores, incl. partial credit.
    assert {0.0, 1.0} <= set(ours) and any(0 < a < 1 for a in ours)

    assert round(vqa_accuracy(preds, answers), 2) == official.accuracy["overall"]
    metric = VQAAccuracy()
    for start in range(0, len(preds), 64):
        sl = slice(start, start + 64)
        metric.update(preds[sl], answers[sl], types[sl])
    result = metric.compute()
    assert round(result["vqa_accuracy"].item(), 2) == official.accuracy["overall"]
    for t in _TYPES:
        assert round(result[f"vqa_accuracy/{t}"].item(), 2) == official.accuracy["perAnswerType"][t]


# ---------------------------------------------------------------------------------
# torchmetrics wrapper
# ---------------------------------------------------------------------------------


def test_metric_types_seen_and_values() -> None:
    metric = VQAAccuracy()
    metric.update(["yes", "2"], [["yes"] * 10, ["2"] * 2 + ["3"] * 8], ["yes/no", "number"])
    metric.update(["no"], [["yes"] * 10], ["yes/no"])
    result = metric.compute()
    assert set(result) == {"vqa_accuracy", "vqa_accuracy/yes/no", "vqa_accuracy/number"}
    assert result["vqa_accuracy"].item() == pytest.approx(100 * (1 + 0.6 + 0) / 3)
    assert result["vqa_accuracy/yes/no"].item() == pytest.approx(50.0)
    assert result["vqa_accuracy/number"].item() == pytest.approx(60.0)


def test_metric_without_types_and_unknown_type() -> None:
    metric = VQAAccuracy()
    metric.update(["yes"], [["yes"] * 10])
    assert set(metric.compute()) == {"vqa_accuracy"}
    with pytest.raises(ValueError, match="unknown answer type"):
        metric.update(["yes"], [["yes"] * 10], ["color"])


def test_metric_state_merge_like_ddp() -> None:
    # merge_state applies the states' dist_reduce_fx, as a DDP sync does.
    rng = random.Random(7)
    cases = [_random_case(rng) for _ in range(50)]
    preds, answers, types = (list(x) for x in zip(*cases))
    full = VQAAccuracy()
    full.update(preds, answers, types)
    rank0, rank1 = VQAAccuracy(), VQAAccuracy()
    rank0.update(preds[:20], answers[:20], types[:20])
    rank1.update(preds[20:], answers[20:], types[20:])
    rank0.merge_state(rank1)
    got, want = rank0.compute(), full.compute()
    assert got.keys() == want.keys()
    for key in want:
        assert torch.allclose(got[key], want[key]), key
