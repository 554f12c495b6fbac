"""`evaluate` and `predict` for the video (MSRVTT-QA, MSR-VTT captioning) and detection (LVIS)
checkpoints, on the tiny demo world, with small checkpoints saved in process (as fit writes them).

References are independent of the code under test: VideoQA accuracy recomputed from the answers
JSON and the question files (generation stubbed by a pick from the clip's pixels, clips decoded
straight with read_video), captioning BLEU / CIDEr by caption_scores on the results JSON and
MSRVTT_data.json, LVIS AP by lvis_eval on the written results JSON, predict's answers against
the model's own generation on the datamodule's test clip, detection boxes against a hand-worked
resize, and open-vocabulary scores against class embeddings and the score formula by hand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mammut_pl import config as config_lib
from mammut_pl import evaluate, predict
from mammut_pl.checkpoint import load_task
from mammut_pl.data.msrvtt import answer_vocabulary, read_msrvtt_qa
from mammut_pl.data.tokenizer import build_tokenizer
from mammut_pl.data.video_decode import ClipTransform, read_video
from mammut_pl.data.transforms import MEAN, STD
from mammut_pl.runtime import build_datamodule
from mammut_pl.metrics.captioning import caption_scores
from mammut_pl.metrics.lvis import KEYS as LVIS_KEYS
from mammut_pl.metrics.lvis import lvis_eval
from mammut_pl.metrics.video_qa import exact_match
from mammut_pl.model.detection import OpenVocabDetector
from mammut_pl.model.video import VideoMaMMUT
from tests.helpers import SMALL_MODEL
from tests.helpers.checkpoints import write_fresh_checkpoint

VIDEO = ["video.num_frames=8", "video.frame_stride=4", "video.tube_specs=[4x4x4 4x16x16 0x0x0,8x2x2 4x16x16 0x4x4]",
         "eval.max_new_tokens=3"]
EXPERIMENTS = {"videoqa": ("msrvtt_qa", "msrvtt", VIDEO), "video_caption": ("msrvtt_caption", "msrvtt", VIDEO),
               "detection": ("lvis", "lvis", ["detection.image_size=32"]),
               "captioning": ("coco_captioning", "coco", [])}
QUIET = ["trainer.enable_progress_bar=false", "data.num_workers=0"]


@pytest.fixture(scope="module")
def ckpts(world, tmp_path_factory) -> dict[str, Path]:
    """A suite checkpoint (state_dict + the resolved config) of a freshly initialised small model per
    kind, in RUN/checkpoints/ as fit writes it."""
    out = {}
    for kind, (experiment, data, extra) in EXPERIMENTS.items():
        cfg = config_lib.load(experiment, [f"data.root={world}/{data}", f"data.tokenizer={world}/tokenizer.json",
                                           "data.num_workers=0", "data.eval_batch_size=4", *SMALL_MODEL, *extra])
        out[kind] = write_fresh_checkpoint(cfg, tmp_path_factory.mktemp(kind))
    return out





def clip_of(path: Path, cfg) -> torch.Tensor:
    """Evaluation's clip, decoded here straight with read_video (segment centres) + resize / crop."""
    frames = read_video(str(path), cfg.video.num_frames, cfg.video.fps, random=False)
    return ClipTransform(cfg.model.image_size, train=False)(frames)


# --- evaluate task=videoqa -----------------------------------------------------------------------------
CANDIDATES = ["right", "star"]  # video10's answers (q0, q1): whatever the pick, exactly one of them is right


def pick(clip: torch.Tensor) -> str:
    return CANDIDATES[int(abs(clip.double().sum().item()) * 1000) % len(CANDIDATES)]


def test_evaluate_videoqa_equals_accuracy_recomputed(world, ckpts, tmp_path, monkeypatch, capsys):
    broken = tmp_path / "world"  # a copy whose test video11 is garbage: its two questions count as wrong
    shutil.copytree(world / "msrvtt", broken)
    (broken / "videos" / "video11.mp4").write_bytes(b"\x00garbage" * 100)
    tok = build_tokenizer(str(world / "tokenizer.json"))

    def generate(self, images, prompt_tokens=None, **kwargs):  # an answer chosen by the clip's pixels
        return tok([pick(c) for c in images], 24)[:, 1:]

    monkeypatch.setattr(VideoMaMMUT, "generate", generate)
    assert evaluate.main(["task=videoqa", f"ckpt={ckpts['videoqa']}", f"data.root={broken}", *QUIET]) == 0
    run_eval = ckpts["videoqa"].parent.parent / "eval"  # next to the run
    report = json.loads((run_eval / "videoqa_msrvtt_test.json").read_text())
    results = json.loads((run_eval / "msrvtt_qa_test_results.json").read_text())
    answers = {r["question_id"]: r["answer"] for r in results}

    cfg = config_lib.from_dict(torch.load(ckpts["videoqa"], weights_only=True)["hyper_parameters"]["cfg"])
    questions = read_msrvtt_qa(broken, "test")
    vocab = set(answer_vocabulary(read_msrvtt_qa(broken, "train"), cfg.video.answer_vocab_size))
    want_answers = {q.question_id: pick(clip_of(Path(q.path), cfg)) for q in questions if q.video_id != "video11"}
    assert answers == want_answers  # the broken video's questions are not answered
    hits = {q.question_id: exact_match(answers.get(q.question_id, ""), q.answer, vocab) for q in questions}
    by_type = {t: [hits[q.question_id] for q in questions if q.question.startswith(t)] for t in ("what", "which")}
    majority = answer_vocabulary(read_msrvtt_qa(broken, "train"), 1)[0]
    m = report["metrics"]
    assert m["accuracy"] == pytest.approx(100 * sum(hits.values()) / len(questions)) == pytest.approx(25.0)
    for t, h in by_type.items():
        assert m[f"accuracy/{t}"] == pytest.approx(100 * sum(h) / len(h))
    assert m["majority_baseline"] == pytest.approx(100 * sum(q.answer == majority for q in questions) / len(questions))
    assert m["skipped_videos"] == 2 and report["questions"] == 4  # counted per question and report["videos"] == 2
    out = capsys.readouterr().out
    assert "accuracy (top-1 exact match): 25.00" in out and f"({majority!r} for every question)" in out
    assert "2 questions whose video could not be decoded" in out and "msrvtt_qa_test_results.json" in out


def test_evaluate_videoqa_val_split(world, ckpts, tmp_path):
    assert evaluate.main(["task=videoqa", f"ckpt={ckpts['videoqa']}", "split=val", f"out={tmp_path}", *QUIET]) == 0
    report = json.loads((tmp_path / "videoqa_msrvtt_val.json").read_text())
    results = json.loads((tmp_path / "msrvtt_qa_val_results.json").read_text())
    val = json.loads((world / "msrvtt" / "val_qa.json").read_text())
    assert report["split"] == "val" and sorted(r["question_id"] for r in results) == sorted(q["id"] for q in val)


# --- evaluate task=video_caption / detection -----------------------------------------------------------
def own_test_loop(ckpt: Path, root: Path) -> dict[str, float]:
    """What the task's own test loop logs for the checkpoint (trainer.test as fit runs it)."""
    cfg, module, tok = load_task(ckpt, ["data.num_workers=0"])
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root))
    tested = trainer.test(module, datamodule=build_datamodule(cfg, tok), verbose=False)[0]
    return {k[len("test/"):]: float(v) for k, v in tested.items()}


def test_evaluate_video_caption_equals_its_test_loop(world, ckpts, tmp_path, capsys):
    assert evaluate.main(["task=video_caption", f"ckpt={ckpts['video_caption']}", f"out={tmp_path}", *QUIET]) == 0
    report = json.loads((tmp_path / "video_caption_msrvtt_test.json").read_text())
    want = own_test_loop(ckpts["video_caption"], tmp_path / "own")
    assert report["metrics"] == pytest.approx({k: want[k] for k in report["metrics"]})
    assert {"CIDEr", "BLEU4", "t2v_R@1", "t2v_R@5", "t2v_R@10"} <= set(report["metrics"])
    results = json.loads((tmp_path / "captions_test_results.json").read_text())
    data = json.loads((world / "msrvtt" / "MSRVTT_data.json").read_text())
    refs = {int(s["video_id"][5:]): [] for s in data["sentences"]}
    for s in data["sentences"]:
        refs[int(s["video_id"][5:])].append(s["caption"])
    scores = caption_scores({r["image_id"]: r["caption"] for r in results}, {r["image_id"]: refs[r["image_id"]]
                                                                              for r in results})
    assert report["metrics"]["CIDEr"] == pytest.approx(scores["CIDEr"], abs=1e-6)
    assert report["metrics"]["BLEU4"] == pytest.approx(scores["BLEU-4"], abs=1e-6)
    assert report["videos"] == len(results) == 2 and report["retrieval_sentences"] == 2
    out = capsys.readouterr().out
    assert "text -> video" in out and "CIDEr" in out


def test_evaluate_detection_equals_lvis_eval_of_its_results(world, ckpts, tmp_path, capsys):
    assert evaluate.main(["task=detection", f"ckpt={ckpts['detection']}", f"out={tmp_path}", *QUIET]) == 0
    report = json.loads((tmp_path / "detection_lvis_test.json").read_text())
    results_path = tmp_path / "lvis_v1_val_results.json"
    assert report["results_json"] == str(results_path) and report["annotation_file"] == "lvis_v1_val.json"
    results = json.loads(results_path.read_text())
    want = lvis_eval(world / "lvis" / "lvis_v1_val.json", results)
    assert set(report["metrics"]) >= set(LVIS_KEYS)
    for key in LVIS_KEYS:
        assert report["metrics"][key] == pytest.approx(want[key], abs=1e-6), key
    gt = json.loads((world / "lvis" / "lvis_v1_val.json").read_text())
    assert report["images"] == len(gt["images"]) and {r["image_id"] for r in results} <= {i["id"] for i in gt["images"]}
    out = capsys.readouterr().out
    assert "LVIS box AP" in out and f"results JSON: {results_path}" in out


def test_evaluate_detection_test_file_alone(world, ckpts, tmp_path):
    """data.lvis.test_file= alone scores that file (no lvis_v1_val.json needed), with its own categories:
    a v0.5-style copy of the val file lacking the last category (and its boxes)."""
    root = tmp_path / "lvis05"
    shutil.copytree(world / "lvis", root)
    gt = json.loads((root / "lvis_v1_val.json").read_text())
    dropped = max(c["id"] for c in gt["categories"])
    gt["categories"] = [c for c in gt["categories"] if c["id"] != dropped]
    gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] != dropped]
    (root / "lvis_v0.5_val.json").write_text(json.dumps(gt))
    (root / "lvis_v1_val.json").unlink()
    assert evaluate.main(["task=detection", f"ckpt={ckpts['detection']}", f"data.root={root}",
                          "data.lvis.test_file=lvis_v0.5_val.json", f"out={tmp_path}", *QUIET]) == 0
    report = json.loads((tmp_path / "detection_lvis_test.json").read_text())
    assert report["annotation_file"] == "lvis_v0.5_val.json" and report["categories"] == len(gt["categories"])
    results = json.loads((tmp_path / "lvis_v0.5_val_results.json").read_text())
    assert results and {r["category_id"] for r in results} <= {c["id"] for c in gt["categories"]}
    want = lvis_eval(root / "lvis_v0.5_val.json", results)
    assert report["metrics"]["AP"] == pytest.approx(want["AP"], abs=1e-6)


@pytest.mark.parametrize("task, kind, message", [
    ("detection", "videoqa", ["task=detection scores a detection checkpoint", "task=video_qa", "task=videoqa"]),
    ("videoqa", "detection", ["task=videoqa scores a video_qa checkpoint", "task=detection"]),
    ("video_caption", "captioning", ["task=video_caption", "task=captioning", "task=retrieval|captioning"]),
])
def test_evaluate_refuses_another_tasks_checkpoint(ckpts, tmp_path, capsys, task, kind, message):
    assert evaluate.main([f"task={task}", f"ckpt={ckpts[kind]}", f"out={tmp_path}/eval"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and all(m in err[0] for m in message), err
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("args, message", [
    (["task=detection", "data=coco"], "data=coco is for task=retrieval|captioning"),
    (["task=videoqa", "split=train"], "split=test or split=val"),
])
def test_evaluate_own_data_argument_errors(ckpts, capsys, args, message):
    assert evaluate.main([*args, f"ckpt={ckpts['videoqa']}"]) == 2
    assert message in capsys.readouterr().err


# --- predict video= ------------------------------------------------------------------------------------
def test_predict_video_answers_equal_generate_and_skip_broken(world, ckpts, tmp_path, capsys):
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("video10.mp4", "video11.mp4"):
        shutil.copy(world / "msrvtt" / "videos" / name, folder / name)
    (folder / "broken.mp4").write_bytes(b"\x00garbage" * 100)
    question = "what appears first?"  # the test question of both videos (q1, q3)
    out = tmp_path / "answers.json"
    assert predict.main([f"ckpt={ckpts['videoqa']}", f"video={folder}", f"question={question}", f"out={out}"]) == 0
    captured = capsys.readouterr()
    assert "skipped: cannot decode video" in captured.err and "broken.mp4" in captured.err
    rows = json.loads(out.read_text())
    assert [Path(r["video"]).name for r in rows] == ["video10.mp4", "video11.mp4"]
    # the same clips and prompts through the datamodule's own test loader, answered by the model directly
    cfg, task, tok = load_task(ckpts["videoqa"], ["data.num_workers=0"])
    batch = next(iter(build_datamodule(cfg, tok).test_dataloader()))
    rows_of = [batch["question_ids"].tolist().index(q) for q in (1, 3)]
    with torch.no_grad():
        new = task.model.generate(batch["images"][rows_of], prompt_tokens=batch["prompt_tokens"][rows_of],
                                  max_new_tokens=cfg.eval.max_new_tokens)
    assert [r["answer"] for r in rows] == task.decode(new)
    assert f"{rows[0]['video']}: {question} -> {rows[0]['answer']}" in captured.out


def test_predict_video_caption(world, ckpts, capsys):
    video = world / "msrvtt" / "videos" / "video10.mp4"
    assert predict.main([f"ckpt={ckpts['video_caption']}", f"video={video}"]) == 0
    cfg, task, _ = load_task(ckpts["video_caption"])
    with torch.no_grad():
        want = task.decode(task.model.generate(clip_of(video, cfg)[None], max_new_tokens=cfg.eval.max_new_tokens))[0]
    assert capsys.readouterr().out.strip() == f"{video}: {want}"


@pytest.mark.parametrize("kind, args, message", [
    ("captioning", ["video=VIDEO"], "video=... needs a video checkpoint"),
    ("videoqa", ["image=IMAGE", "question=what?"], "is a video checkpoint (task=video_qa): give video=PATH"),
    ("videoqa", ["video=VIDEO"], "give question="),
    ("videoqa", ["video=/no/such/clip.mp4", "question=what?"], "video=/no/such/clip.mp4: no such file or folder"),
    ("video_caption", ["video=IMAGE_DIR"], "no video files"),
    ("video_caption", ["video=VIDEO", "categories=cat"], "categories= are for a detection checkpoint"),
    ("detection", ["video=VIDEO"], "task=detection: give image=PATH"),
    ("detection", ["image=IMAGE", "question=what?"], "is a detection one"),
    ("detection", ["image=IMAGE", "score_threshold=high"], "score_threshold='high': expected a number"),
])
def test_predict_errors_are_one_line_and_exit_2(world, ckpts, capsys, kind, args, message):
    paths = {"VIDEO": world / "msrvtt" / "videos" / "video10.mp4", "IMAGE_DIR": world / "lvis" / "val2017",
             "IMAGE": next((world / "lvis" / "val2017").iterdir())}
    args = [a.split("=")[0] + "=" + str(paths.get(a.split("=")[1], a.split("=")[1])) for a in args]
    assert predict.main([f"ckpt={ckpts[kind]}", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


# --- predict image= on a detection checkpoint ---------------------------------------------------------
def test_predict_detection_boxes_in_original_pixels(ckpts, tmp_path, monkeypatch, capsys):
    """A 100 x 50 image at detection size 32: scale 0.32, resized to 32 x 16 in the canvas' top-left corner."""
    image = tmp_path / "wide.png"
    Image.new("RGB", (100, 50), (200, 30, 30)).save(image)
    canvas_boxes = torch.tensor([[8.0, 4.0, 16.0, 12.0],  # -> (25, 12.5)-(50, 37.5): x, y, w, h = 25, 12.5, 25, 25
                                 [24.0, 8.0, 32.0, 20.0],  # -> (75, 25)-(100, 62.5), clamped to h = 50: 75, 25, 25, 25
                                 [0.0, 20.0, 8.0, 28.0],  # wholly on the padding (y >= 16): dropped
                                 [0.0, 0.0, 32.0, 16.0]])  # under the threshold
    scores, classes = torch.tensor([0.9, 0.5, 0.45, 0.1]), torch.tensor([0, 1, 0, 1])

    def detections(self, out, b, size, candidates=1000):
        assert tuple(size) == (32, 32)
        return canvas_boxes, scores, classes

    monkeypatch.setattr(OpenVocabDetector, "detections", detections)
    out = tmp_path / "boxes.json"
    assert predict.main([f"ckpt={ckpts['detection']}", f"image={image}", "categories=red star, blue circle",
                         f"out={out}"]) == 0
    rows = json.loads(out.read_text())
    assert rows == [{"image": str(image), "width": 100, "height": 50, "detections": [
        {"category": "red star", "score": 0.9, "bbox": [25.0, 12.5, 25.0, 25.0]},
        {"category": "blue circle", "score": 0.5, "bbox": [75.0, 25.0, 25.0, 25.0]}]}]
    printed = capsys.readouterr().out
    assert "wide.png (100x50): 2 detections with score >= 0.3" in printed and "blue circle  0.500" in printed


def test_predict_detection_open_vocabulary_scores(world, ckpts, tmp_path):
    """Names never in LVIS, embedded through the prompt templates: the top detection's score is the
    best p_class^(1-a) * p_object^a over the tokens, computed here from hand-made inputs."""
    image = next((world / "lvis" / "val2017").iterdir())
    names = ["orange rectangle", "small green dot"]
    out = tmp_path / "boxes.json"
    assert predict.main([f"ckpt={ckpts['detection']}", f"image={image}", f"categories={','.join(names)}",
                         "score_threshold=0", f"out={out}"]) == 0
    (row,) = json.loads(out.read_text())
    cfg, task, tok = load_task(ckpts["detection"])
    t = cfg.detection
    with torch.no_grad():
        text = torch.stack([F.normalize(task.model.encode_text(tok([p.format(n) for p in t.prompts],
                                                                   cfg.model.context_length)).mean(0), dim=-1)
                            for n in names])
        img = Image.open(image).convert("RGB")  # 64 x 64 -> 32 x 32: no padding
        x = torch.from_numpy(np.asarray(img.resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255).permute(2, 0, 1)
        x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
        res = task.detector(task.model, x[None], text)
    a = t.objectness_power
    score = res["logits"][0].sigmoid() ** (1 - a) * res["objectness"][0].sigmoid()[:, None] ** a
    best = row["detections"][0]
    assert best["score"] == pytest.approx(float(score.max()), abs=1e-5)
    assert best["category"] == names[int(score.max(0).values.argmax())]
    assert {d["category"] for d in row["detections"]} <= set(names) and "category_id" not in best
    assert all(0 <= d["bbox"][0] and d["bbox"][0] + d["bbox"][2] <= 64.01 for d in row["detections"])


def test_predict_detection_default_vocabulary_is_the_checkpoints_lvis(world, ckpts, tmp_path):
    out = tmp_path / "boxes.json"
    assert predict.main([f"ckpt={ckpts['detection']}", f"image={world / 'lvis' / 'val2017'}", "score_threshold=0",
                         f"out={out}"]) == 0
    rows = json.loads(out.read_text())
    cats = {c["id"]: c for c in json.loads((world / "lvis" / "lvis_v1_val.json").read_text())["categories"]}
    assert len(rows) == len(cats and list((world / "lvis" / "val2017").iterdir()))
    dets = [d for r in rows for d in r["detections"]]
    assert dets and all(d["category_id"] in cats for d in dets)
    assert all(d["category"] == cats[d["category_id"]]["synonyms"][0].replace("_", " ") for d in dets
               if "(" not in cats[d["category_id"]]["synonyms"][0])


def test_detection_head_comes_from_the_checkpoint(ckpts, tmp_path, capsys):
    """The head lives outside `model.*` (detector.head.*): loaded too, and its absence is an error
    (it would otherwise be freshly initialised: random boxes and scores)."""
    stored = torch.load(ckpts["detection"], weights_only=True)
    _, task, _ = load_task(ckpts["detection"])
    head = {k: v for k, v in stored["state_dict"].items() if k.startswith("detector.")}
    assert head and all(torch.equal(task.state_dict()[k], v) for k, v in head.items())
    stored["state_dict"] = {k: v for k, v in stored["state_dict"].items() if k not in head}
    torch.save(stored, tmp_path / "headless.ckpt")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    assert predict.main([f"ckpt={tmp_path / 'headless.ckpt'}", f"image={tmp_path / 'x.png'}"]) == 2
    assert f"lacks {len(head)} tensors of task=detection outside the model" in capsys.readouterr().err
