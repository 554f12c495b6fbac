"""Inference on files for `python -m mammut_pl.predict`: captions / answers for images and
videos, boxes for detection checkpoints. Which function a checkpoint gets is its task's
`PredictSpec.run` (tasks/registry.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from mammut_pl.config import Config, ConfigError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v")
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
        qa = cfg.data.msrvtt if cfg.data.name == "msrvtt" else cfg.data.vqav2  # the prompt it was trained with
        collate = VQACollator(task.tokenizer, cfg.model.context_length, qa.prompt, qa.max_answer_tokens)
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
    from mammut_pl.data.video_decode import VideoError, eval_clip_reader

    v = cfg.video
    reader = eval_clip_reader(cfg.model.image_size, v.num_frames, v.fps)
    return describe(task, cfg, paths, lambda p: reader.load(str(p)), (VideoError, OSError), "video", question,
                    batch_size)


# --- detection -----------------------------------------------------------------------------------
def detection_vocabulary(cfg: Config, categories: str = "") -> tuple[list[str], list[int | None]]:
    """(readable class names, LVIS category ids or None): the given names, else the checkpoint's
    LVIS categories (data.root / data.lvis.val_file, sorted by id as the task scores them)."""
    from mammut_pl.data.coco import read_json
    from mammut_pl.model.detection import class_names

    if categories:
        names = [n.strip() for n in categories.split(",") if n.strip()]
        if not names:
            raise ConfigError(f"categories={categories!r}: expected names separated by commas")
        return class_names([{"name": n} for n in names]), [None] * len(names)
    from mammut_pl.data.builders import prepare_data

    prepare_data(cfg)  # the demo world, if the checkpoint was trained on it and it is not here
    path = Path(cfg.data.root) / cfg.data.lvis.val_file
    try:
        data = read_json(path, "the checkpoint's LVIS categories (data.root / data.lvis.val_file)")
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


def describe_inputs(task: Any, cfg: Config, paths: list[Path], own: dict[str, str],
                    batch_size: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Every non-detection checkpoint: a caption (or the answer to question=) per image / video."""
    key = "video" if "video" in own else "image"
    describe_files = describe_videos if key == "video" else describe_images
    rows = describe_files(task, cfg, paths, own.get("question", ""), batch_size)
    return rows, [f"{row[key]}: " + (f"{row['question']} -> {row['answer']}" if "answer" in row else row["caption"])
                  for row in rows]


def detect_inputs(task: Any, cfg: Config, paths: list[Path], own: dict[str, str],
                  batch_size: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Detection checkpoints: boxes per image over the checkpoint's categories or categories=."""
    threshold = float(own.get("score_threshold", DEFAULT_SCORE_THRESHOLD))
    names, ids = detection_vocabulary(cfg, own.get("categories", ""))
    rows = detect_objects(task, cfg, paths, names, ids, threshold, batch_size)
    return rows, ["\n".join(format_detections(row, threshold)) for row in rows]
