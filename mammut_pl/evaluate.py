"""python -m mammut_pl.evaluate task=TASK ckpt=PATH [split=test|val] [out=DIR] [key=value ...]

TASK: retrieval | captioning (any image checkpoint, on a Karpathy-split COCO / Flickr30k),
      videoqa | video_caption | detection (a checkpoint of that task, on its own dataset).

    # zero-shot retrieval, the standard Karpathy test protocols (COCO 5k images, Flickr30k 1k)
    python -m mammut_pl.evaluate task=retrieval ckpt=outputs/demo/RUN/checkpoints/last.ckpt data=coco
    python -m mammut_pl.evaluate task=retrieval ckpt=... data=flickr30k data.root=/data/flickr30k
    # captioning: BLEU-1..4, CIDEr(-D), distinct captions, and the official results JSON
    python -m mammut_pl.evaluate task=captioning ckpt=outputs/coco_captioning/RUN/checkpoints/best.ckpt eval.num_beams=3
    # MSRVTT-QA: top-1 exact match, per question type, majority-answer baseline, the answers JSON
    python -m mammut_pl.evaluate task=videoqa ckpt=outputs/msrvtt_qa/RUN/checkpoints/best.ckpt data.root=/data/msrvtt
    # MSR-VTT captioning: BLEU-1..4, CIDEr(-D) + text -> video R@1/5/10 on the 1k-A sentences
    python -m mammut_pl.evaluate task=video_caption ckpt=outputs/msrvtt_caption/RUN/checkpoints/best.ckpt
    # LVIS: official box AP, AP50, AP75, APs/m/l, APr/c/f, and the results JSON
    python -m mammut_pl.evaluate task=detection ckpt=outputs/lvis/RUN/checkpoints/best.ckpt data.root=/data/lvis

data=coco|flickr30k (retrieval, captioning) reads ROOT/dataset_coco.json or
ROOT/dataset_flickr30k.json (Karpathy split); ROOT is data.root=, else the
checkpoint's COCO root (data.root of a COCO-trained run, data.val_root of a
pretraining run). Without data= the checkpoint's own evaluation data is used.
split= picks the Karpathy split (test).

videoqa / video_caption / detection score a checkpoint trained with that task
(experiment=msrvtt_qa / msrvtt_caption / lvis) on the dataset it was trained on
(data.root= points elsewhere), with its task's own test loop and metrics: split=test
(default) or val (MSRVTT: {split}_qa.json, or the captions file's split; LVIS: the
detection.test_file annotations, which default to val_file, or val_file). Another
checkpoint is refused, naming both tasks. data.max_eval_questions= (video) and
detection.max_eval_images= score the first ones only (the report says so).

The config is the checkpoint's, `key=value` overrides it (eval.*, data.*,
trainer.precision, ...). Scores are printed and written as JSON to out=DIR
(default: RUN/eval/ next to the checkpoint's run), next to the task's results file
(captions / answers / detections JSON).

Retrieval: image -> text is a hit at K if ANY caption of the image is among the
top K texts; text -> image if its image is among the top K images; R@1/5/10 both
ways and their mean. The similarity matrix is scored in chunks of queries
(mammut_pl.metrics.retrieval): COCO 5k x 25k with 512-d embeddings peaks at about
+370 MB over the embeddings on CPU (~10 s on 2 cores), where the full matrix
alone would take 477 MB and an argsort of it another 950 MB.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import OmegaConf

from mammut_pl import config as config_lib
from mammut_pl.checkpoint import checkpoint_config, load_task, read_checkpoint, task_with_weights
from mammut_pl.config import Config, ConfigError

KARPATHY_FILES = {"coco": "dataset_coco.json", "flickr30k": "dataset_flickr30k.json"}
DATASETS = {file: name for name, file in KARPATHY_FILES.items()}
# what is evaluated -> the task (LightningModule) whose test loop scores it
EVAL_TASKS = {"retrieval": "pretrain", "captioning": "captioning", "videoqa": "video_qa",
              "video_caption": "video_captioning", "detection": "detection", "zeroshot": "pretrain"}
# evaluations of a checkpoint on its own dataset -> the experiment that trains such a checkpoint
OWN_DATA = {"videoqa": "msrvtt_qa", "video_caption": "msrvtt_caption", "detection": "lvis"}
OWN_KEYS = ("task", "ckpt", "data", "split", "out", "classnames", "templates")
RECALL_KEYS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "mean_R")
CAPTION_KEYS = ("BLEU1", "BLEU2", "BLEU3", "BLEU4", "CIDEr", "distinct_captions")
VIDEO_RECALL_KEYS = tuple(k.replace("i2t", "v2t").replace("t2i", "t2v") for k in RECALL_KEYS)
LVIS_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def metric_keys(task: str) -> tuple[str, ...]:
    """The test/* metrics a report holds (those the test loop logged: some are optional)."""
    from mammut_pl.metrics.video_qa import QUESTION_TYPES

    return {"retrieval": RECALL_KEYS, "captioning": CAPTION_KEYS,
            "videoqa": ("accuracy", *(f"accuracy/{t}" for t in QUESTION_TYPES), "majority_baseline",
                        "skipped_videos"),
            "video_caption": (*CAPTION_KEYS, *VIDEO_RECALL_KEYS, "skipped_videos"),
            "detection": (*LVIS_KEYS, "detections_per_image")}[task]


def parse_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(this command's own keys, config overrides)."""
    own: dict[str, str] = {"split": "test"}
    overrides: list[str] = []
    for arg in argv:
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r}: expected key=value (see --help)")
        key, value = arg.split("=", 1)
        if key in OWN_KEYS:
            own[key] = value
        else:
            overrides.append(arg)
    task = own.get("task")
    if task not in EVAL_TASKS:
        raise ConfigError(f"task={own.get('task', '')!r}: expected one of {', '.join(EVAL_TASKS)}")
    if not own.get("ckpt"):
        raise ConfigError("ckpt=PATH is required (a checkpoint written by `python -m mammut_pl.fit`)")
    if task == "zeroshot":
        if own.get("data"):
            raise ConfigError(f"data={own['data']} is for task=retrieval|captioning: task=zeroshot reads an "
                              "ImageFolder given as data.root=PATH")
    elif any(k in own for k in ("classnames", "templates")):
        raise ConfigError(f"classnames= / templates= are for task=zeroshot, not task={task}")
    if task in OWN_DATA:
        if own.get("data"):
            raise ConfigError(f"data={own['data']} is for task=retrieval|captioning: task={task} scores the "
                              "checkpoint on its own dataset (data.root=PATH points elsewhere)")
        if own["split"] not in ("test", "val"):
            raise ConfigError(f"split={own['split']!r}: task={task} scores split=test or split=val")
    elif own.get("data", "") not in ("", *KARPATHY_FILES):
        raise ConfigError(f"data={own['data']!r}: expected one of {', '.join(KARPATHY_FILES)}")
    return own, overrides


def eval_config(stored: Config, own: dict[str, str], overrides: list[str]) -> Config:
    """The checkpoint's config, pointed at the data and split to evaluate."""
    if own["task"] in OWN_DATA:
        return own_data_config(stored, own, overrides)
    cfg = stored
    given = {o.split("=", 1)[0] for o in overrides}
    cfg.task = EVAL_TASKS[own["task"]]
    d = cfg.data
    if d.name == "webdata" and "data.root" not in given:  # a pretraining run: its zero-shot COCO
        if not d.val_root:
            raise ConfigError("this checkpoint was trained on web shards without data.val_root: "
                              "give data.root=/path/to/coco (the folder with dataset_coco.json)")
        d.root = d.val_root
    elif d.name not in ("coco", "webdata") and "data.root" not in given:
        raise ConfigError(f"this checkpoint was trained on data.name={d.name}: give data=coco|flickr30k "
                          "and data.root=/path/to/it (the folder with the Karpathy split JSON)")
    keep_user_folder(cfg, given)
    d.name = "coco"
    if own.get("data"):
        d.karpathy_file = KARPATHY_FILES[own["data"]]
    d.test_split = own["split"]
    return cfg


def keep_user_folder(cfg: Config, given: set[str]) -> None:
    if "data.root" in given and "data.demo" not in given:
        cfg.data.demo = False  # never write the demo world into a folder the user named


def own_data_config(stored: Config, own: dict[str, str], overrides: list[str]) -> Config:
    """A video / detection checkpoint's own config, its test split set to split=."""
    want = EVAL_TASKS[own["task"]]
    if stored.task != want:
        image_model = stored.task in ("pretrain", "captioning", "vqa")  # retrieval / captioning take any of these
        fits = [name for name, t in EVAL_TASKS.items()
                if t == stored.task or (image_model and name not in OWN_DATA)]
        hint = f" (evaluate it with task={'|'.join(fits)})" if fits else ""
        raise ConfigError(f"task={own['task']} scores a {want} checkpoint (experiment={OWN_DATA[own['task']]}), "
                          f"but {own['ckpt']} was trained with task={stored.task}{hint}")
    cfg = stored
    keep_user_folder(cfg, {o.split("=", 1)[0] for o in overrides})
    if want == "detection":
        if own["split"] == "val":
            cfg.detection.test_file = cfg.detection.val_file
    else:  # MSRVTT: {split}_qa.json, or the captions file's split
        cfg.data.test_split = own["split"]
    return cfg


def trainer_overrides(overrides: list[str]) -> dict[str, Any]:
    """Only the trainer.* keys given on the command line: the stored ones are the training run's
    (devices, strategy, max_time ...), not how to evaluate."""
    given = [o for o in overrides if o.startswith("trainer.")]
    return OmegaConf.to_container(OmegaConf.from_dotlist(given)).get("trainer", {}) if given else {}


def default_out(ckpt: Path) -> Path:
    run_dir = ckpt.resolve().parent.parent if ckpt.parent.name == "checkpoints" else ckpt.resolve().parent
    return run_dir / "eval"


def describe_data(task: str, split: str, cfg: Config, datamodule: Any) -> dict[str, Any]:
    """What is scored: dataset, split, counts, subset limit. Reads the split's records, so a
    missing file fails here, named, before any model work."""
    if task == "videoqa":
        questions = datamodule.eval_questions(datamodule.test_split)
        return {"data": "msrvtt", "root": cfg.data.root, "split": datamodule.test_split,
                "questions": len(questions), "videos": len({q.video_id for q in questions}),
                "subset": limit("data.max_eval_questions", cfg.data.max_eval_questions)}
    if task == "video_caption":
        videos = datamodule.videos(datamodule.test_split)
        return {"data": "msrvtt", "root": cfg.data.root, "split": datamodule.test_split, "videos": len(videos),
                "captions": sum(len(v.captions) for v in videos),
                "retrieval_sentences": sum(bool(v.retrieval_text) for v in videos),
                "subset": limit("data.max_eval_questions", cfg.data.max_eval_questions)}
    if task == "detection":
        gt = datamodule.eval_gt(datamodule.test_file)
        return {"data": "lvis", "root": cfg.data.root, "split": split,
                "annotation_file": datamodule.test_file, "images": len(gt["images"]),
                "annotations": len(gt["annotations"]),
                "categories": len(datamodule.categories),
                "subset": limit("detection.max_eval_images", cfg.detection.max_eval_images)}
    images = datamodule.split(cfg.data.test_split)
    return {"data": DATASETS.get(cfg.data.karpathy_file, cfg.data.karpathy_file), "root": cfg.data.root,
            "split": cfg.data.test_split, "images": len(images), "captions": sum(len(im.captions) for im in images),
            "max_eval_images": cfg.data.max_eval_images,
            "subset": limit("data.max_eval_images", cfg.data.max_eval_images)}


def limit(key: str, value: int) -> str:
    return f"{key}={value}" if value else ""


def evaluate(own: dict[str, str], overrides: list[str]) -> dict[str, Any]:
    """Score one checkpoint; returns (and writes) the report: settings, counts, metrics. With
    trainer.devices=N each process scores its share and the task gathers them; rank 0 writes the
    report and the other ranks return {}."""
    from mammut_pl.fit import build_datamodule, prepare_data

    task = own["task"]
    if task == "zeroshot":
        return evaluate_zeroshot(own, overrides)
    ckpt_path = Path(own["ckpt"])
    ckpt = read_checkpoint(ckpt_path)
    cfg = eval_config(checkpoint_config(ckpt, ckpt_path, overrides), own, overrides)
    out_dir = Path(own.get("out") or default_out(ckpt_path))
    prepare_data(cfg)
    module, tokenizer = task_with_weights(cfg, ckpt, ckpt_path)
    datamodule = build_datamodule(cfg, tokenizer)
    data = describe_data(task, own["split"], cfg, datamodule)
    trainer = L.Trainer(**{"accelerator": "auto", "devices": 1, "precision": "32-true", "logger": False,
                           "enable_checkpointing": False, "enable_model_summary": False,
                           "default_root_dir": str(out_dir), **trainer_overrides(overrides)})
    tested = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    if not trainer.is_global_zero:  # several processes (trainer.devices=N): rank 0 writes and prints
        return {}
    report: dict[str, Any] = {"task": task, "ckpt": str(ckpt_path), **data,
                              "metrics": {k: float(tested[f"test/{k}"]) for k in metric_keys(task)
                                          if f"test/{k}" in tested}}
    if task in ("captioning", "video_caption", "videoqa"):
        e = cfg.eval
        report["decoding"] = {"num_beams": e.num_beams, "length_penalty": e.length_penalty,
                              "max_new_tokens": e.max_new_tokens}
    if task == "videoqa":
        report["majority_answer"] = datamodule.majority_answer()
    if getattr(module, "results_path", None):
        report["results_json"] = str(module.results_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{task}_{report['data']}_{report['split']}.json"
    path.write_text(json.dumps(report, indent=1))
    report["path"] = str(path)
    return report


def evaluate_zeroshot(own: dict[str, str], overrides: list[str]) -> dict[str, Any]:
    """Zero-shot classification of a suite checkpoint or an openMaMMUT folder on an ImageFolder."""
    from mammut_pl.data.transforms import image_transform
    from mammut_pl.tasks.zeroshot import (ZeroShotModel, is_openmammut_folder, load_openmammut_folder,
                                          run_zeroshot, suite_tokenize)

    ckpt = Path(own["ckpt"])
    given = {o.split("=", 1)[0] for o in overrides}
    if is_openmammut_folder(ckpt):
        foreign = sorted(k for k in given if not k.startswith(("data.root", "data.eval_batch_size",
                                                                "data.num_workers", "trainer.")))
        if foreign:
            raise ConfigError(f"ckpt={ckpt} is an openMaMMUT folder (its architecture comes from its "
                              f"open_clip_config.json): {', '.join(foreign)} do not apply; only data.root, "
                              "data.eval_batch_size, data.num_workers and trainer.* do")
        cfg = config_lib.load("", [o for o in overrides if not o.startswith("trainer.")])
        if "data.root" not in given:
            raise ConfigError("task=zeroshot: give data.root=/path/to/imagefolder (one sub-folder per class)")
        zs = load_openmammut_folder(ckpt)
        root, names, templates = cfg.data.root, own.get("classnames", ""), own.get("templates", "openai")
        out_dir = Path(own.get("out") or Path("outputs") / "eval" / ckpt.resolve().name)
    else:
        cfg, module, tokenizer = load_task(ckpt, overrides, task="pretrain")
        d = cfg.data
        if "data.root" in given:  # another dataset than the run's own zero-shot folder
            root, names, templates = d.root, own.get("classnames", ""), own.get("templates", "openai")
        elif d.zeroshot_root:  # the ImageFolder the run validated on, with its names and templates
            root, names, templates = (d.zeroshot_root, own.get("classnames", d.zeroshot_classnames),
                                      own.get("templates", d.zeroshot_templates))
        else:
            raise ConfigError("task=zeroshot: give data.root=/path/to/imagefolder (one sub-folder per class); "
                              "this run had no data.zeroshot_root")
        zs = ZeroShotModel(module.model, suite_tokenize(tokenizer, cfg.model.context_length),
                           image_transform(cfg.model.image_size, train=False), "mammut_pl checkpoint")
        out_dir = Path(own.get("out") or default_out(ckpt))
    result = run_zeroshot(zs, root, names, templates, cfg.data.eval_batch_size, cfg.data.num_workers,
                          trainer_overrides(overrides))
    if not result:  # another rank
        return {}
    folder = Path(root).resolve()
    report = {"task": "zeroshot", "ckpt": str(ckpt),
              "data": "imagenet-1k" if result["classnames"] == "imagenet-1k" else folder.parent.name,
              "split": folder.name, **result}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"zeroshot_{report['data']}_{report['split']}.json"
    path.write_text(json.dumps(report, indent=1))
    report["path"] = str(path)
    return report


# --- the printed table ------------------------------------------------------------------------------
def recall_lines(m: dict[str, float], directions: tuple[tuple[str, str], ...]) -> list[str]:
    lines = [f"{'':16}{'R@1':>7}{'R@5':>7}{'R@10':>7}"]
    for direction, name in directions:
        if f"{direction}_R@1" in m:
            lines.append(f"{name:16}" + "".join(f"{m[f'{direction}_R@{k}']:7.1f}" for k in (1, 5, 10)))
    return lines


def decoding_line(d: dict[str, Any]) -> str:
    decoding = ("greedy" if d["num_beams"] == 1
                else f"beam search ({d['num_beams']} beams, length penalty {d['length_penalty']})")
    return f"decoding: {decoding}, up to {d['max_new_tokens']} tokens"


def caption_lines(m: dict[str, float]) -> list[str]:
    return ["  ".join(f"BLEU-{n} {100 * m[f'BLEU{n}']:.1f}" for n in (1, 2, 3, 4))
            + f"  CIDEr {100 * m['CIDEr']:.1f}  (x100)",
            f"distinct captions: {100 * m['distinct_captions']:.0f}%"]


def task_lines(report: dict[str, Any]) -> list[str]:
    m, task = report["metrics"], report["task"]
    if task == "retrieval":
        return [*recall_lines(m, (("i2t", "image -> text"), ("t2i", "text -> image"))),
                f"{'mean of the six':16}{m['mean_R']:7.1f}"]
    if task == "zeroshot":
        from mammut_pl.tasks.zeroshot import zeroshot_lines

        return zeroshot_lines(report)
    if task == "captioning":
        return [decoding_line(report["decoding"]), *caption_lines(m)]
    if task == "video_caption":
        lines = [decoding_line(report["decoding"]), *caption_lines(m)]
        if "t2v_R@1" in m:
            lines += [f"retrieval on the {report['retrieval_sentences']} 1k-A sentences:",
                      *recall_lines(m, (("t2v", "text -> video"), ("v2t", "video -> text")))]
        return lines
    if task == "videoqa":
        from mammut_pl.metrics.video_qa import QUESTION_TYPES

        types = "  ".join(f"{t} {m[f'accuracy/{t}']:.1f}" for t in QUESTION_TYPES if f"accuracy/{t}" in m)
        lines = [decoding_line(report["decoding"]),
                 f"accuracy (top-1 exact match): {m['accuracy']:.2f}   [{types}]"]
        if "majority_baseline" in m:
            lines.append(f"majority-answer baseline ({report['majority_answer']!r} for every question): "
                         f"{m['majority_baseline']:.2f}")
        return lines
    # detection: x100 as papers report it; -1 = no category has boxes of that kind (LVIS prints -1 too)
    return ["LVIS box AP (x100; - = no category with boxes of that kind):",
            "".join(f"{k:>7}" for k in LVIS_KEYS),
            "".join(f"{100 * m[k]:7.1f}" if m.get(k, -1) >= 0 else f"{'-':>7}" for k in LVIS_KEYS),
            "APr: rare categories, held out of detection training (open vocabulary)",
            f"detections per image: {m.get('detections_per_image', 0):.1f}"]


def format_report(report: dict[str, Any]) -> str:
    counts = ", ".join(f"{report[k]} {k.replace('_', ' ')}" for k in
                       ("images", "classes", "videos", "questions", "captions", "annotations", "categories") if k in report)
    head = f"{report['task']} | {report['data']} {report['split']}: {counts} | {report['ckpt']}"
    if report.get("subset"):
        head += f"\n  (not the full protocol: {report['subset']} keeps the first ones only)"
    lines = [head, *task_lines(report)]
    skipped = report["metrics"].get("skipped_videos")
    if skipped:  # counted per item: a question (VideoQA) or a video (captioning)
        what = "questions whose video" if report["task"] == "videoqa" else "videos that"
        lines.append(f"{skipped:.0f} {what} could not be decoded (counted wrong)")
    if report.get("results_json"):
        lines.append(f"results JSON: {report['results_json']}")
    return "\n".join(lines + [f"written to {report['path']}"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # the scores, not the accelerator banner
    try:
        own, overrides = parse_args(argv)
        report = evaluate(own, overrides)
        if report:  # {} on the other ranks of a multi-process run
            print(format_report(report))
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
