"""MSR-VTT readers on real-format files (the demo writer's), their errors, frame sampling,
the VideoQA metric, and broken / truncated / garbage videos skipped and counted."""

import json
import math
import shutil

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings

from mammut_pl.data.msrvtt import (
    MSRVTTDataModule,
    answer_vocabulary,
    read_msrvtt_captions,
    read_msrvtt_qa,
    read_retrieval_csv,
)
from mammut_pl.data.video_decode import VideoError, decode_all, pick_frames, read_video, sample_times
from mammut_pl.data.tokenizer import build_tokenizer
from mammut_pl.metrics.video_qa import VideoQAAccuracy, question_type
from tests.helpers.fuzz import assert_clear_error, json_mutations


@pytest.fixture(scope="module")
def msrvtt(world):
    return world / "msrvtt"


@pytest.fixture(scope="module")
def tok(world):
    return build_tokenizer(str(world / "tokenizer.json"))


def copy_world(msrvtt, tmp_path):
    shutil.copytree(msrvtt, tmp_path / "msrvtt")
    return tmp_path / "msrvtt"


# --- readers -----------------------------------------------------------------------------------------
def test_qa_reader_round_trip(msrvtt):
    raw = json.loads((msrvtt / "train_qa.json").read_text())
    qs = read_msrvtt_qa(msrvtt, "train")
    assert [(q.question_id, q.question, q.answer, q.video_id) for q in qs] == [
        (r["id"], r["question"], r["answer"], f"video{r['video_id']}") for r in raw]
    assert all(q.path.endswith(f"{q.video_id}.mp4") for q in qs)


def test_caption_and_retrieval_readers(msrvtt):
    raw = json.loads((msrvtt / "MSRVTT_data.json").read_text())
    splits, captions = read_msrvtt_captions(msrvtt / "MSRVTT_data.json")
    assert splits == {v["video_id"]: v["split"] for v in raw["videos"]}
    assert sum(map(len, captions.values())) == len(raw["sentences"])
    rows = read_retrieval_csv(msrvtt / "MSRVTT_JSFUSION_test.csv")
    assert [v for v, _ in rows] == [v["video_id"] for v in raw["videos"] if v["split"] == "test"]
    assert all(s in captions[v] for v, s in rows)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[1].pop("answer"), r"train_qa\.json: \[1\]: missing field 'answer'"),
    (lambda d: d[0].update(video_id=1.5), r"train_qa\.json: \[0\]: field 'video_id'"),
    (lambda d: d[2].update(video_id="clip7"), r"\[2\]: field 'video_id' should be an int or 'video<N>'"),
    (lambda d: d[0].update(question="  "), r"\[0\]: field 'question' is empty"),
    (lambda d: d[1].update(id=d[0]["id"]), r"\[1\]: duplicate id"),
    (lambda d: d[0].update(video_id=999999), r"\[0\]: video video999999 not found"),
])
def test_qa_errors_name_file_record_and_field(msrvtt, tmp_path, mutate, message):
    root = copy_world(msrvtt, tmp_path)
    doc = json.loads((root / "train_qa.json").read_text())
    mutate(doc)
    (root / "train_qa.json").write_text(json.dumps(doc))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        read_msrvtt_qa(root, "train")


def test_caption_file_and_csv_errors(msrvtt, tmp_path):
    root = copy_world(msrvtt, tmp_path)
    doc = json.loads((root / "MSRVTT_data.json").read_text())
    doc["sentences"][3]["video_id"] = "video999999"
    (root / "MSRVTT_data.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"MSRVTT_data\.json: sentences\[3\]: video_id 'video999999' is not listed"):
        read_msrvtt_captions(root / "MSRVTT_data.json")
    del doc["videos"]
    (root / "MSRVTT_data.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"MSRVTT_data\.json: missing field 'videos'"):
        read_msrvtt_captions(root / "MSRVTT_data.json")
    (root / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,sentence\nret0,msr1,a cat\n")
    with pytest.raises(ValueError, match=r"MSRVTT_JSFUSION_test\.csv: header lacks column\(s\) \['video_id'\]"):
        read_retrieval_csv(root / "MSRVTT_JSFUSION_test.csv")
    with pytest.raises(FileNotFoundError, match="val_qa.json"):
        (root / "val_qa.json").unlink()
        read_msrvtt_qa(root, "val")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_qa_json_reads_correctly_or_names_file_record_field(msrvtt, tmp_path_factory, data):
    doc = json.loads((msrvtt / "train_qa.json").read_text())[:4]
    root = tmp_path_factory.mktemp("fuzz")
    (root / "videos").symlink_to(msrvtt / "videos")
    mutation = data.draw(json_mutations(doc))
    (root / "train_qa.json").write_text(mutation.text)
    try:
        qs = read_msrvtt_qa(root, "train")
    except Exception as err:  # noqa: BLE001 - the kind of error is what is checked
        # records are a top-level list: `[i]` names the record
        assert_clear_error(err, root / "train_qa.json")
        if mutation.op in ("delete", "retype", "empty") and len(mutation.path) >= 2 and mutation.path[1] != "category_id":
            assert f"[{mutation.path[0]}]" in str(err) and str(mutation.path[1]) in str(err), str(err)
        return
    assert all(q.question and q.answer and q.path for q in qs)


# --- sampling and decoding -----------------------------------------------------------------------------
def test_sample_times_brute_force():
    # 16 frames at 8 fps from a 2 s video: the whole video, one frame per 1/8 s segment, centres
    assert sample_times(2.0, 16, 8.0, False) == pytest.approx([(i + 0.5) / 8 for i in range(16)])
    # 4 frames at 2 fps from a 10 s video: a centred 2 s window
    assert sample_times(10.0, 4, 2.0, False) == pytest.approx([4 + (i + 0.5) * 0.5 for i in range(4)])
    # fps = 0: spread over the whole video
    assert sample_times(10.0, 5, 0.0, False) == pytest.approx([1, 3, 5, 7, 9])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        ts = sample_times(10.0, 4, 2.0, True, g)
        start = ts[0] - (ts[0] - 0) % 0.5  # each time inside its own 0.5 s segment of a 2 s window
        assert all(0 <= t <= 10 for t in ts) and ts == sorted(ts)
        assert ts[-1] - ts[0] < 2.0 and start >= 0


def test_decoded_frames_are_the_demo_frames_in_order(msrvtt):
    path = str(msrvtt / "videos" / "video0.mp4")
    frames, times, duration = decode_all(path)
    assert len(frames) == 16 and duration == pytest.approx(2.0)
    assert times == pytest.approx(np.arange(16) / 8)
    clip = read_video(path, 16, fps=8.0)
    assert (clip == frames).all()  # every frame once, in order
    assert (read_video(path, 4, fps=0.0) == frames[[2, 6, 10, 14]]).all()  # segment centres 0.25, 0.75, ...
    for s in range(3):  # the in-memory cache picks exactly what streaming picks
        g1, g2 = torch.Generator().manual_seed(s), torch.Generator().manual_seed(s)
        assert (read_video(path, 8, 8.0, True, g1) == pick_frames(frames, times, sample_times(duration, 8, 8.0, True, g2))).all()


def write_corrupt_videos(videos):
    """video0: truncated to 60 %, video1: garbage, video2: empty, video3: moov-first mp4 cut in the middle."""
    import av

    data = (videos / "video0.mp4").read_bytes()
    (videos / "video0.mp4").write_bytes(data[: int(len(data) * 0.6)])
    (videos / "video1.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (videos / "video2.mp4").write_bytes(b"")
    frames, _, _ = decode_all(str(videos / "video3.mp4"))
    path = videos / "video3.mp4"
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for t, f in enumerate(np.concatenate([frames] * 8)):  # 128 frames, 16 s
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts = t
            for p in stream.encode(vf):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def test_broken_videos_raise_video_error_naming_the_file(msrvtt, tmp_path):
    root = copy_world(msrvtt, tmp_path)
    write_corrupt_videos(root / "videos")
    for i in range(4):
        path = root / "videos" / f"video{i}.mp4"
        with pytest.raises(VideoError, match=f"video{i}.mp4"):
            read_video(str(path), 16, fps=0.0)
        with pytest.raises(VideoError, match=f"video{i}.mp4"):
            decode_all(str(path))
    read_video(str(root / "videos" / "video4.mp4"), 16, fps=8.0)  # the others still decode


def test_broken_videos_are_skipped_and_counted(msrvtt, tok, tmp_path):
    root = copy_world(msrvtt, tmp_path)
    write_corrupt_videos(root / "videos")
    broken = {f"video{i}" for i in range(4)}
    for cache in (False, True):
        dm = MSRVTTDataModule(str(root), tok, image_size=32, context_length=32, batch_size=4, eval_batch_size=50,
                              num_workers=0, num_frames=4, fps=4.0, cache_clips=cache)
        train = dm.train_questions()
        n_broken = sum(q.video_id in broken for q in train)
        assert n_broken > 0
        loader = torch.utils.data.DataLoader(dm._dataset("train", True)[0], batch_size=len(train),
                                             collate_fn=dm.qa_collate)
        batch = next(iter(loader))
        assert batch["skipped"] == n_broken  # counted, not crashed, not zero-filled
        assert batch["images"].shape == (len(train) - n_broken, 4, 3, 32, 32)
        assert torch.isfinite(batch["images"]).all() and batch["images"].abs().sum(dim=(1, 2, 3, 4)).min() > 0
        assert len(batch["skipped_questions"]) == n_broken
    # through a worker process too
    dm = MSRVTTDataModule(str(root), tok, image_size=32, context_length=32, batch_size=4, eval_batch_size=50,
                          num_workers=1, num_frames=4, fps=4.0)
    skipped = sum(b["skipped"] for b in dm.test_dataloader()) + sum(b["skipped"] for b in dm.val_dataloader())
    qs = dm.questions("test") + dm.questions("val")
    assert skipped == sum(q.video_id in broken for q in qs)


def test_clip_batches(msrvtt, tok):
    dm = MSRVTTDataModule(str(msrvtt), tok, image_size=32, context_length=32, batch_size=4, eval_batch_size=3,
                          num_workers=0, num_frames=8, fps=8.0)
    b = next(iter(dm.train_dataloader()))
    assert b["images"].shape == (4, 8, 3, 32, 32) and b["skipped"] == 0
    assert b["tokens"].shape[0] == 4 and b["answer_mask"].any(1).all()
    cap = MSRVTTDataModule(str(msrvtt), tok, image_size=32, context_length=32, batch_size=4, eval_batch_size=3,
                           num_workers=0, num_frames=4, fps=0.0, task="caption")
    test = cap.videos("test")
    assert all(v.retrieval_text for v in test)  # the 1k-A videos form the test split
    batches = list(cap.test_dataloader())
    assert sum(len(b["image_ids"]) for b in batches) == len(test)
    b = batches[0]
    assert b["tokens"].shape[0] == sum(len(c) for c in b["captions"])
    assert b["retrieval_tokens"].shape[0] == len(b["retrieval_ids"]) == len(b["image_ids"])


# --- the metric ----------------------------------------------------------------------------------------
def test_answer_vocabulary_and_exact_match_accuracy():
    from mammut_pl.data.msrvtt import VideoQuestion

    qs = [VideoQuestion(i, "video0", "", "what is it?", a)
          for i, a in enumerate(["Dog", "dog", "cat", "cat.", "two", "man"])]
    # counted after normalisation ("two" -> "2", punctuation), ties alphabetical
    assert answer_vocabulary(qs, 2) == ["cat", "dog"]
    assert answer_vocabulary(qs, 3) == ["cat", "dog", "2"]
    m = VideoQAAccuracy(vocabulary=set(answer_vocabulary(qs, 3)))  # "man" is outside
    m.update(["a dog.", "Cat", "2", "man", "", "dog"],
             ["dog", "dog", "two", "man", "cat", "dog"],
             ["what is it?", "who is it?", "how many?", "who is it?", "what is it?", "where is it?"])
    out = m.compute()
    # hits: "a dog." = dog (article, punctuation), "2" = "two", "dog"; "man" is right but out of vocabulary
    assert out["accuracy"].item() == pytest.approx(100 * 3 / 6)
    assert out["accuracy/what"].item() == pytest.approx(50.0)
    assert out["accuracy/who"].item() == 0.0
    assert out["accuracy/how"].item() == 100.0 and out["accuracy/where"].item() == 100.0
    assert question_type("Which way does it move?") == "which" and question_type("is it red?") == "other"
    assert not math.isnan(VideoQAAccuracy().compute()["accuracy"].item())


def test_broken_training_videos_are_replaced_so_batches_stay_full(msrvtt, tok, tmp_path):
    """Under DDP a rank whose batch were empty would skip the step while the others wait in the
    loss's all-reduce: in training an undecodable clip's item is replaced by a decodable one."""
    root = copy_world(msrvtt, tmp_path)
    write_corrupt_videos(root / "videos")
    broken = {f"video{i}" for i in range(4)}
    dm = MSRVTTDataModule(str(root), tok, image_size=32, context_length=32, batch_size=4, eval_batch_size=50,
                          num_workers=0, num_frames=4, fps=4.0, seed=3)
    dm.setup("fit")
    train = dm.train_questions()
    by_id = {q.question_id: q for q in train}
    loader = dm.train_dataloader()
    order = [train[ref.index] for ref in loader.sampler]
    batches = list(loader)
    assert len(batches) == len(train) // 4
    assert all(b["images"].shape[0] == 4 for b in batches)  # never short, never empty
    drawn_broken = sum(q.video_id in broken for q in order[: len(batches) * 4])
    assert drawn_broken > 0
    # each broken question drawn is counted (a replacement may itself be broken: counted too)
    assert sum(int(b["skipped"]) for b in batches) >= drawn_broken
    got = [by_id[int(qid)] for b in batches for qid in b["question_ids"]]
    assert not any(q.video_id in broken for q in got)  # what trains is decodable


def test_training_gives_up_with_a_clear_error_when_no_video_decodes(msrvtt, tok, tmp_path):
    root = copy_world(msrvtt, tmp_path)
    for video in (root / "videos").iterdir():
        video.write_bytes(b"not a video")
    dm = MSRVTTDataModule(str(root), tok, image_size=32, context_length=32, batch_size=4, num_workers=0,
                          num_frames=4, fps=4.0)
    dm.setup("fit")
    with pytest.raises(VideoError, match="training videos in a row could not be decoded.*data.msrvtt.video_dir"):
        next(iter(dm.train_dataloader()))
