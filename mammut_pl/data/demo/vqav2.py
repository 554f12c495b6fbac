"""The VQA v2 writer (questions + ten human answers per question, in the published files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mammut_pl.data.demo.world import (background, DemoSizes, dump_json, human_answers, IMAGE_SIZE, info_block,
                                       jpeg_bytes, render, rng_stream, sample_questions, sample_scene, unique_ids)

VQA_FILES = {"train2014": ("train2014", "COCO_train2014_"), "val2014": ("val2014", "COCO_val2014_"),
             "test2015": ("test2015", "COCO_test2015_")}


def write_vqav2(root: Path, seed: int, sz: DemoSizes) -> tuple[dict[str, Any], list[str]]:
    """VQA v2 questions/annotations; question_id = image_id * 10 + k; test-dev is the first half of test."""
    rng = rng_stream(seed, 3)
    ids = [int(i) for i in rng.permutation(unique_ids(rng, sz.vqa_train + sz.vqa_val + sz.vqa_test))]
    split_ids = {"train2014": sorted(ids[: sz.vqa_train]),
                 "val2014": sorted(ids[sz.vqa_train: sz.vqa_train + sz.vqa_val]),
                 "test2015": sorted(ids[sz.vqa_train + sz.vqa_val:])}
    license_ = {"url": "http://creativecommons.org/licenses/by/4.0/", "name": "Creative Commons Attribution 4.0 International License"}
    texts, counts = ["question", "answer", ":"], {}
    for subtype, img_ids in split_ids.items():
        folder, prefix = VQA_FILES[subtype]
        (root / folder).mkdir(parents=True, exist_ok=True)
        questions, anns = [], []
        for image_id in img_ids:
            objs = sample_scene(rng)
            (root / folder / f"{prefix}{image_id:012d}.jpg").write_bytes(jpeg_bytes(render(objs, background(rng, IMAGE_SIZE))))
            for k, (q, a, atype, qtype) in enumerate(sample_questions(rng, objs, sz.vqa_questions)):
                qid = image_id * 10 + k
                questions.append({"image_id": image_id, "question": q, "question_id": qid})
                answers = human_answers(rng, a, atype)
                anns.append({"question_type": qtype, "multiple_choice_answer": a, "answers": answers,
                             "image_id": image_id, "answer_type": atype, "question_id": qid})
                if subtype == "train2014":
                    texts += [q, a] + [x["answer"] for x in answers]

        def qfile(sub: str, qs: list) -> None:
            dump_json({"info": info_block("VQA v2"), "task_type": "Open-Ended", "data_type": "mscoco", "license": license_,
                   "data_subtype": sub, "questions": qs}, root / f"v2_OpenEnded_mscoco_{sub}_questions.json")

        qfile(subtype, questions)
        if subtype == "test2015":
            dev_ids = set(img_ids[: max(1, len(img_ids) // 2)])
            dev = [q for q in questions if q["image_id"] in dev_ids]
            qfile("test-dev2015", dev)
            counts["test-dev2015"] = {"images": len(dev_ids), "questions": len(dev)}
        else:
            dump_json({"info": info_block("VQA v2"), "license": license_, "data_subtype": subtype, "annotations": anns},
                  root / f"v2_mscoco_{subtype}_annotations.json")
        counts[subtype] = {"images": len(img_ids), "questions": len(questions)}
    return counts, texts
