"""VQAv2: the reader on the official layout, the prompt/answer layout, the answer-only
loss (against a per-token brute force), and the task's metric (against the official
accuracy computed separately on the same generated answers)."""

import json
import shutil
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from mammut_pl import config as config_lib
from mammut_pl.data.tokenizer import build_tokenizer
from mammut_pl.data.vqav2 import VQACollator, VQAv2DataModule, answer_targets, majority_answer, read_vqav2
from mammut_pl.metrics.vqa import vqa_accuracy
from mammut_pl.tasks import load_config


@pytest.fixture(scope="module")
def tokenizer(world):
    return build_tokenizer(world / "tokenizer.json")


def test_reader_joins_questions_and_annotations(world):
    root = world / "vqav2"
    manifest = json.loads((world / "manifest.json").read_text())["counts"]["vqav2"]
    for split in ("train2014", "val2014"):
        qs = read_vqav2(root, split)
        assert len(qs) == manifest[split]["questions"]
        anns = {a["question_id"]: a for a in json.loads((root / f"v2_mscoco_{split}_annotations.json").read_text())["annotations"]}
        for q in qs:
            a = anns[q.question_id]
            assert q.answers == [x["answer"] for x in a["answers"]] and len(q.answers) == 10
            assert q.target == a["multiple_choice_answer"] and q.answer_type == a["answer_type"]
            assert q.image_path.endswith(f"{split}/COCO_{split}_{q.image_id:012d}.jpg")
            assert (root / split / f"COCO_{split}_{q.image_id:012d}.jpg").is_file()
    dev = read_vqav2(root, "test-dev2015")  # questions only; images in test2015/
    assert len(dev) == manifest["test-dev2015"]["questions"] and all(q.answers == [] for q in dev)
    assert all("/test2015/COCO_test2015_" in q.image_path for q in dev)


def _copy(world, tmp_path):
    root = tmp_path / "vqav2"
    shutil.copytree(world / "vqav2", root)
    return root


def test_reader_errors_name_the_file_and_field(world, tmp_path):
    root = _copy(world, tmp_path)
    with pytest.raises(FileNotFoundError, match="v2_OpenEnded_mscoco_val2014_questions.json"):
        (root / "v2_OpenEnded_mscoco_val2014_questions.json").unlink()
        read_vqav2(root, "val2014")
    path = root / "v2_mscoco_train2014_annotations.json"
    data = json.loads(path.read_text())
    del data["annotations"][1]["multiple_choice_answer"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"v2_mscoco_train2014_annotations.json.*multiple_choice_answer"):
        read_vqav2(root, "train2014")
    data["annotations"] = data["annotations"][2:]  # two questions lose their annotation
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"questions\[0\].*has no annotation"):
        read_vqav2(root, "train2014")
    path.write_text("{\"annotations\": [")  # truncated JSON
    with pytest.raises(ValueError, match="not valid JSON"):
        read_vqav2(root, "train2014")
    with pytest.raises(ValueError, match="split 'test2016'"):
        read_vqav2(root, "test2016")


def test_collator_layout(tokenizer):
    collate = VQACollator(tokenizer, context_length=32, prompt="question: {question} answer:", max_answer_tokens=4)
    items = [{"image": torch.zeros(3, 4, 4), "question": q, "target": a, "answers": [a] * 10,
              "answer_type": "other", "question_id": i}
             for i, (q, a) in enumerate([("what color is the star?", "red"), ("how many shapes are there?", "3")])]
    batch = collate(items)
    for b, it in enumerate(items):
        tokens, mask = batch["tokens"][b], batch["answer_mask"][b]
        prompt = [tokenizer.bos_id, *tokenizer.encode(f"question: {it['question']} answer:")]
        answer = tokenizer.encode(it["target"]) + [tokenizer.eos_id]
        assert tokens[: len(prompt)].tolist() == prompt
        assert tokens[mask].tolist() == answer  # the loss sees exactly the answer and eos
        assert batch["prompt_tokens"][b][: len(prompt)].tolist() == prompt
        assert (batch["prompt_tokens"][b][len(prompt):] == tokenizer.pad_id).all()
        assert tokenizer.decode(tokens[mask]) == it["target"]
    targets = answer_targets(batch["tokens"], batch["answer_mask"])
    assert ((targets != -100) == batch["answer_mask"][:, 1:]).all()


def test_long_question_is_cut_from_the_front_and_keeps_room_for_the_answer(tokenizer):
    collate = VQACollator(tokenizer, context_length=12, max_answer_tokens=3)
    ids = collate.prompt_ids("is there " * 20 + "a red star?")
    assert len(ids) == 12 - 2 - 3 + 1 and ids[0] == tokenizer.bos_id
    assert ids[-len(tokenizer.encode("answer:")):] == tokenizer.encode("answer:")


def _task(world, *overrides):
    from mammut_pl.runtime import build_datamodule, build_task, build_tokenizer_for

    cfg = config_lib.load("vqa", [f"data.root={world}/vqav2", f"data.tokenizer={world}/tokenizer.json",
                                  "data.num_workers=0", "model.encoder=test_vit", "model.encoder_kwargs={}",
                                  "model.image_size=32", "model.width=32", "model.heads=2", "model.depth=2",
                                  "model.num_cross_attn=1", "model.embed_dim=16", *overrides])
    tok = build_tokenizer_for(cfg)
    return cfg, build_task(cfg, tok), build_datamodule(cfg, tok)


def test_answer_loss_counts_only_answer_tokens(world):
    torch.manual_seed(0)
    cfg, task, dm = _task(world)
    batch = next(iter(dm.val_dataloader()))
    images, tokens, mask = batch["images"][:4], batch["tokens"][:4], batch["answer_mask"][:4]
    loss = task.answer_loss(images, tokens, mask)
    # brute force: one row at a time, unpadded, the answer tokens' negative log-likelihood
    logits = task.model.caption_logits(task.model.image_tokens(images), tokens)
    nll = [-F.log_softmax(logits[b, t - 1], -1)[tokens[b, t]] for b in range(4) for t in range(tokens.shape[1])
           if mask[b, t]]
    assert torch.allclose(loss, torch.stack(nll).mean(), atol=1e-5)


def test_generated_answers_come_from_the_prompt(world):
    torch.manual_seed(0)
    cfg, task, dm = _task(world, "eval.max_new_tokens=3")
    batch = next(iter(dm.val_dataloader()))
    answers = task.answer(batch["images"], batch["prompt_tokens"])
    assert len(answers) == len(batch["questions"]) and all(isinstance(a, str) for a in answers)
    # generation from the batched prompts == from each prompt alone (left-alignment is exact)
    one = [task.answer(batch["images"][i:i + 1], batch["prompt_tokens"][i:i + 1])[0] for i in range(4)]
    assert answers[:4] == one


def test_validation_metric_equals_the_official_accuracy_of_the_answers(world):
    import lightning as L

    torch.manual_seed(0)
    cfg, task, dm = _task(world, "eval.max_new_tokens=3")

    def rule_based(images, prompt_tokens):  # right on many yes/no and some counts: a non-trivial score
        return ["yes" if "is " in task.tokenizer.decode(p) else "2" for p in prompt_tokens]

    task.answer = rule_based
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    logged = trainer.validate(task, datamodule=dm, verbose=False)[0]
    answers, refs, types = [], [], []
    for batch in dm.val_dataloader():
        answers += task.answer(batch["images"], batch["prompt_tokens"])
        refs += batch["answers"]
        types += batch["answer_types"]
    assert 5 < logged["val/vqa_accuracy"] < 95
    assert logged["val/vqa_accuracy"] == pytest.approx(vqa_accuracy(answers, refs), abs=1e-4)
    for t in set(types):
        idx = [i for i, x in enumerate(types) if x == t]
        assert logged[f"val/vqa_accuracy/{t}"] == pytest.approx(
            vqa_accuracy([answers[i] for i in idx], [refs[i] for i in idx]), abs=1e-4)
    # the majority baseline: always the most common training answer
    train = read_vqav2(world / "vqav2", "train2014")
    common = Counter(q.target for q in train).most_common(1)[0][0]
    assert majority_answer(train) == common
    val = read_vqav2(world / "vqav2", "val2014")
    assert logged["val/majority_baseline"] == pytest.approx(vqa_accuracy([common] * len(val), [q.answers for q in val]))


def test_config_rejects_vqa_on_another_datamodule_and_bad_prompt():
    with pytest.raises(config_lib.ConfigError, match="data.name"):
        load_config("vqa", ["data.name=coco"])  # the vqa TaskSpec's datasets
    with pytest.raises(config_lib.ConfigError, match="data.vqav2.prompt"):
        config_lib.load("vqa", ["data.vqav2.prompt=no placeholder"])


def test_datamodule_refuses_unannotated_training_split(world):
    tok = build_tokenizer(world / "tokenizer.json")
    with pytest.raises(ValueError, match="test-dev2015.*no annotations"):
        VQAv2DataModule(str(world / "vqav2"), tok, 32, 32, train_split="train2014+test-dev2015")
    with pytest.raises(FileNotFoundError, match="data.root"):
        VQAv2DataModule(str(world / "nope"), tok, 32, 32)
