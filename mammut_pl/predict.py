"""python -m mammut_pl.predict ckpt=PATH (image=PATH [question="..."] | video=PATH [question="..."] | split=SPLIT) [key=value ...]

    # a caption (or an answer) for one image or every image of a folder
    python -m mammut_pl.predict ckpt=outputs/demo/RUN/checkpoints/last.ckpt image=photo.jpg
    python -m mammut_pl.predict ckpt=outputs/vqa/RUN/checkpoints/best.ckpt image=photos/ question="how many stars are there?"
    # the official VQA results JSON for the evaluation server
    python -m mammut_pl.predict experiment=vqa ckpt=outputs/vqa/RUN/checkpoints/best.ckpt split=test-dev2015
    # video checkpoints (msrvtt_caption / msrvtt_qa): a caption, or the answer, for a video or every video of a folder
    python -m mammut_pl.predict ckpt=outputs/msrvtt_caption/RUN/checkpoints/best.ckpt video=clip.mp4
    python -m mammut_pl.predict ckpt=outputs/msrvtt_qa/RUN/checkpoints/best.ckpt video=clips/ question="what appears first?"
    # detection checkpoints (lvis): boxes per image, over the checkpoint's LVIS categories or any names
    python -m mammut_pl.predict ckpt=outputs/lvis/RUN/checkpoints/best.ckpt image=photos/
    python -m mammut_pl.predict ckpt=outputs/lvis/RUN/checkpoints/best.ckpt image=photo.jpg \\
        categories="cat,dog,red star" score_threshold=0.1 out=boxes.json

The config is the one stored in the checkpoint; `key=value` overrides it (e.g.
`data.root=/data/vqav2`, `eval.num_beams=3`). `experiment=NAME` takes the task,
data and eval settings from that experiment instead (the model always comes from
the checkpoint). `out=PATH` sets where results go (image= / video=: a JSON list of
the printed results). `batch_size=` (16) images or clips go through the model at once.

Videos (.mp4 .avi .webm .mkv .mov .m4v) are decoded with PyAV as evaluation decodes
them: video.num_frames frames at video.fps (segment centres), resize + centre crop. A
video_qa checkpoint needs question=. A file that cannot be read or decoded is
reported and skipped; the others go on.

Detection: each image is resized (long side = detection.image_size) and padded as in
evaluation; boxes are printed as x, y, w, h in the original image's pixels with the
category and score. The vocabulary is the checkpoint's LVIS categories (read from
data.root / detection.val_file) or categories="name,name,...": open vocabulary, each
name embedded by the text side through the task's detection.prompts templates.
score_threshold= (0.3) hides the weaker detections (at most detection.max_detections
per image).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from mammut_pl import config as config_lib
from mammut_pl.checkpoint import checkpoint_config, read_checkpoint, task_with_weights
from mammut_pl.config import Config, ConfigError

log = logging.getLogger("mammut_pl")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v")
VIDEO_TASKS = ("video_qa", "video_captioning")
OWN_KEYS = ("ckpt", "image", "video", "question", "split", "out", "batch_size", "categories", "score_threshold")
DETECTION_KEYS = ("categories", "score_threshold")
DEFAULT_SCORE_THRESHOLD = 0.3


def media_files(path: str | Path, suffixes: tuple[str, ...], key: str = "image") -> list[Path]:
    """One file, or the files of a folder with one of `suffixes` (sorted, not recursive)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in suffixes)
        if not files:
            raise FileNotFoundError(f"{key}={p}: no {key} files ({', '.join(suffixes)}) in this folder")
        return files
    raise FileNotFoundError(f"{key}={p}: no such file or folder")


def image_files(path: str | Path) -> list[Path]:
    """One image, or the images of a folder (sorted, not recursive)."""
    return media_files(path, IMAGE_SUFFIXES, "image")


def video_files(path: str | Path) -> list[Path]:
    """One video, or the videos of a folder (sorted, not recursive)."""
    return media_files(path, VIDEO_SUFFIXES, "video")


def loaded_batches(paths: list[Path], load: Callable[[Path], Any], errors: tuple[type[BaseException], ...],
                   batch_size: int, unit: str) -> Iterator[tuple[list[Path], list[Any]]]:
    """(paths, loaded items) in batches; a file that fails to load is reported and skipped."""
    from tqdm import tqdm

    bar = tqdm(total=len(paths), unit=unit, disable=len(paths) < 2, file=sys.stderr)
    for start in range(0, len(paths), batch_size):
        kept, items = [], []
        for p in paths[start: start + batch_size]:
            try:
                items.append(load(p))
                kept.append(p)
            except errors as err:
                print(f"skipped: {err}", file=sys.stderr)
        if items:
            yield kept, items
        bar.update(len(paths[start: start + batch_size]))
    bar.close()


@torch.no_grad()
def describe(task: Any, cfg: Config, paths: list[Path], load: Callable[[Path], torch.Tensor],
             errors: tuple[type[BaseException], ...], key: str, question: str = "",
             batch_size: int = 16) -> list[dict[str, Any]]:
    """A caption for each loaded input (image or clip), or the answer to `question` about it."""
    from mammut_pl.data.vqav2 import VQACollator

    e = cfg.eval
    prompt = None
    if question:
        collate = VQACollator(task.tokenizer, cfg.model.context_length, cfg.data.vqa_prompt, cfg.data.max_answer_tokens)
        prompt = torch.tensor([collate.prompt_ids(question)], device=task.device)
    rows: list[dict[str, Any]] = []
    for kept, items in loaded_batches(paths, load, errors, batch_size, key):
        batch = torch.stack(items).to(task.device)
        prompts = prompt.expand(len(items), -1) if prompt is not None else None
        new = task.model.generate(batch, prompt_tokens=prompts, max_new_tokens=e.max_new_tokens,
                                  num_beams=e.num_beams, length_penalty=e.length_penalty)
        for p, text in zip(kept, task.decode(new)):
            rows.append({key: str(p), **({"question": question, "answer": text} if question else {"caption": text})})
    return rows


def describe_images(task: Any, cfg: Config, paths: list[Path], question: str = "",
                    batch_size: int = 16) -> list[dict[str, Any]]:
    """A caption for each image, or the answer to `question` about it. Unreadable images
    are reported and skipped (the others go on)."""
    from mammut_pl.data.transforms import image_transform, load_image

    transform = image_transform(cfg.model.image_size, train=False)
    # a person's photos: EXIF orientation applied, upright as viewers show them (data/images.py)
    return describe(task, cfg, paths, lambda p: transform(load_image(str(p), exif_transpose=True)), (OSError,),
                    "image", question, batch_size)


def describe_videos(task: Any, cfg: Config, paths: list[Path], question: str = "",
                    batch_size: int = 16) -> list[dict[str, Any]]:
    """A caption for each video, or the answer to `question` about it, from the clip evaluation
    decodes (MSRVTT's uniform sampling). Undecodable videos are reported and skipped."""
    from mammut_pl.data.msrvtt import VideoError, eval_clip_reader

    v = cfg.video
    reader = eval_clip_reader(cfg.model.image_size, v.num_frames, v.fps)
    return describe(task, cfg, paths, lambda p: reader.load(str(p)), (VideoError, OSError), "video", question,
                    batch_size)


# --- detection -----------------------------------------------------------------------------------
def detection_vocabulary(cfg: Config, categories: str = "") -> tuple[list[str], list[int | None]]:
    """(readable class names, LVIS category ids or None): the given names, else the checkpoint's
    LVIS categories (data.root / detection.val_file, sorted by id as the task scores them)."""
    from mammut_pl.data.coco import read_json
    from mammut_pl.model.detection import class_names

    if categories:
        names = [n.strip() for n in categories.split(",") if n.strip()]
        if not names:
            raise ConfigError(f"categories={categories!r}: expected names separated by commas")
        return class_names([{"name": n} for n in names]), [None] * len(names)
    from mammut_pl.fit import prepare_data

    prepare_data(cfg)  # the demo world, if the checkpoint was trained on it and it is not here
    path = Path(cfg.data.root) / cfg.detection.val_file
    try:
        data = read_json(path, "the checkpoint's LVIS categories (data.root / detection.val_file)")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}; give data.root=/path/to/lvis or categories=\"name,name,...\"") from None
    cats = sorted(data.get("categories", []) if isinstance(data, dict) else [], key=lambda c: c["id"])
    if not cats:
        raise ValueError(f"{path}: no categories")
    return class_names(cats), [int(c["id"]) for c in cats]


@torch.no_grad()
def detect_objects(task: Any, cfg: Config, paths: list[Path], names: list[str], ids: list[int | None],
                   score_threshold: float = DEFAULT_SCORE_THRESHOLD, batch_size: int = 16) -> list[dict[str, Any]]:
    """Detections per image, boxes [x, y, w, h] in the original image's pixels, best first.
    Geometry as in evaluation: long side resized to detection.image_size, padded at the
    bottom / right. Unreadable images are reported and skipped."""
    from mammut_pl.data.lvis import jitter_geometry, place_image
    from mammut_pl.data.transforms import load_image
    from mammut_pl.model.detection import class_text_embeddings
    from mammut_pl.tasks.detection import image_detections

    t = cfg.detection
    size = t.image_size
    text = class_text_embeddings(task.model, task.tokenizer, names, t.prompts, cfg.model.context_length)

    def load(p: Path) -> tuple[torch.Tensor, float, tuple[int, int]]:
        img = load_image(str(p), exif_transpose=True)  # a person's photo: upright, as viewers show it
        scale, resized, corner = jitter_geometry(img.width, img.height, size, None)
        return place_image(img, size, resized, corner), scale, (img.height, img.width)

    rows: list[dict[str, Any]] = []
    for kept, items in loaded_batches(paths, load, (OSError,), batch_size, "image"):
        out = task.detector(task.model, torch.stack([x for x, _, _ in items]).to(task.device), text)
        for b, (p, (_, scale, (h, w))) in enumerate(zip(kept, items)):
            found = [{"category": names[k], **({"category_id": ids[k]} if ids[k] is not None else {}),
                      "score": s, "bbox": bbox}
                     for bbox, s, k in image_detections(task.detector, out, b, (size, size), scale, (h, w))
                     if s >= score_threshold]
            rows.append({"image": str(p), "width": w, "height": h, "detections": found})
    return rows


def format_detections(row: dict[str, Any], score_threshold: float) -> list[str]:
    dets = row["detections"]
    head = f"{row['image']} ({row['width']}x{row['height']}): "
    if not dets:
        return [head + f"no detection with score >= {score_threshold:g}"]
    width = max(len(d["category"]) for d in dets)
    return [head + f"{len(dets)} detection{'s' if len(dets) > 1 else ''} with score >= {score_threshold:g} "
                   "(box x, y, w, h in pixels)"] + [
        f"  {d['category']:{width}}  {d['score']:.3f}  " + " ".join(f"{v:7.1f}" for v in d["bbox"]) for d in dets]


def predict_split(task: Any, cfg: Config, split: str, out: Path, trainer_args: dict[str, Any] | None = None) -> Path:
    """The official results JSON for a whole split (VQA: [{"question_id", "answer"}]).
    trainer_args: the trainer.* keys of the command line (accelerator, devices, precision ...)."""
    import lightning as L

    from mammut_pl.fit import build_datamodule
    from mammut_pl.tasks.vqa import write_results

    if cfg.task != "vqa":
        raise ConfigError(f"split={split}: split prediction is for task=vqa (this config has task={cfg.task}); "
                          "captions for images: image=PATH")
    cfg.data.predict_split = split
    datamodule = build_datamodule(cfg, task.tokenizer)
    trainer = L.Trainer(**{"accelerator": "auto", "devices": 1, "logger": False, "enable_checkpointing": False,
                           "default_root_dir": str(out.parent), **(trainer_args or {})})
    trainer.predict(task, datamodule=datamodule, return_predictions=False)
    return write_results(task.results, out)


def parse(argv: list[str]) -> tuple[dict[str, str], str, list[str]]:
    """(this command's own keys, experiment, config overrides)."""
    experiment, overrides = config_lib.parse_overrides(argv)
    own: dict[str, str] = {}
    rest = []
    for arg in overrides:
        key, value = arg.split("=", 1)
        if key in OWN_KEYS:
            own[key] = value
        else:
            rest.append(arg)
    if "ckpt" not in own:
        raise ConfigError("ckpt=PATH is required (a checkpoint written by `python -m mammut_pl.fit`)")
    if sum(k in own for k in ("image", "video", "split")) != 1:
        raise ConfigError("give one of image=PATH (an image or a folder), video=PATH (a video or a folder) "
                          "or split=SPLIT (e.g. test-dev2015)")
    if "question" in own and "split" in own:
        raise ConfigError("question=... goes with image=PATH or video=PATH")
    if "score_threshold" in own:
        try:
            float(own["score_threshold"])
        except ValueError:
            raise ConfigError(f"score_threshold={own['score_threshold']!r}: expected a number") from None
    return own, experiment, rest


def check_inputs(own: dict[str, str], task: str) -> None:
    """The inputs given fit the checkpoint's task (before its weights are loaded)."""
    ckpt = own["ckpt"]
    if "video" in own and task not in VIDEO_TASKS:
        raise ConfigError(f"video=... needs a video checkpoint (task=video_qa|video_captioning, experiment="
                          f"msrvtt_qa|msrvtt_caption); {ckpt} has task={task}: give image=PATH")
    if task in VIDEO_TASKS and "video" not in own:
        raise ConfigError(f"{ckpt} is a video checkpoint (task={task}): give video=PATH (a video or a folder)")
    if task == "video_qa" and not own.get("question"):
        raise ConfigError(f"{ckpt} answers questions about videos (task=video_qa): give question=\"...\"")
    given = [k for k in DETECTION_KEYS if k in own]
    if given and task != "detection":
        raise ConfigError(f"{'= / '.join(given)}= are for a detection checkpoint (task=detection); {ckpt} has "
                          f"task={task}")
    if task == "detection" and "question" in own:
        raise ConfigError(f"question=... needs a VQA or video checkpoint; {ckpt} is a detection one "
                          "(task=detection): give image=PATH [categories=\"name,...\"]")


def build_config(ckpt: dict[str, Any], path: str, experiment: str, overrides: list[str]) -> Config:
    """The checkpoint's config (+ overrides); with an experiment, that experiment's config
    around the checkpoint's model."""
    stored = checkpoint_config(ckpt, path, overrides)
    if not experiment or experiment == stored.experiment:
        return stored
    cfg = config_lib.load(experiment, [o for o in overrides if not o.startswith("model.")])
    cfg.model = stored.model
    cfg.data.tokenizer = stored.data.tokenizer  # the vocabulary the model was trained with
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        own, experiment, overrides = parse(argv)
        ckpt = read_checkpoint(own["ckpt"])
        cfg = build_config(ckpt, own["ckpt"], experiment, overrides)
        check_inputs(own, cfg.task)
        if "video" in own:  # before the weights: a missing path fails in a second
            paths = video_files(own["video"])
        elif "image" in own:
            paths = image_files(own["image"])
        task, _ = task_with_weights(cfg, ckpt, own["ckpt"])
        if "split" in own:
            out = Path(own.get("out") or Path(own["ckpt"]).resolve().parent.parent / f"vqa_{own['split']}_results.json")
            from mammut_pl.evaluate import trainer_overrides

            path = predict_split(task, cfg, own["split"], out, trainer_overrides(overrides))
            print(f"wrote {len(task.results)} answers to {path} (official VQA results format)")
            return 0
        batch_size = int(own.get("batch_size", 16))
        if cfg.task == "detection":
            threshold = float(own.get("score_threshold", DEFAULT_SCORE_THRESHOLD))
            names, ids = detection_vocabulary(cfg, own.get("categories", ""))
            rows = detect_objects(task, cfg, paths, names, ids, threshold, batch_size)
            for row in rows:
                print("\n".join(format_detections(row, threshold)))
        else:
            describe_inputs = describe_videos if "video" in own else describe_images
            rows = describe_inputs(task, cfg, paths, own.get("question", ""), batch_size)
            key = "video" if "video" in own else "image"
            for row in rows:
                text = f"{row['question']} -> {row['answer']}" if "answer" in row else row["caption"]
                print(f"{row[key]}: {text}")
        if own.get("out"):
            Path(own["out"]).write_text(json.dumps(rows, indent=1))
            print(f"wrote {len(rows)} results to {own['out']}")
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
