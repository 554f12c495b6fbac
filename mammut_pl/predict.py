"""python -m mammut_pl.predict ckpt=PATH (image=PATH [question="..."] | split=SPLIT) [key=value ...]

    # a caption (or an answer) for one image or every image of a folder
    python -m mammut_pl.predict ckpt=outputs/demo/RUN/checkpoints/last.ckpt image=photo.jpg
    python -m mammut_pl.predict ckpt=outputs/vqa/RUN/checkpoints/best.ckpt image=photos/ question="how many stars are there?"
    # the official VQA results JSON for the evaluation server
    python -m mammut_pl.predict experiment=vqa ckpt=outputs/vqa/RUN/checkpoints/best.ckpt split=test-dev2015

The config is the one stored in the checkpoint; `key=value` overrides it (e.g.
`data.root=/data/vqav2`, `eval.num_beams=3`). `experiment=NAME` takes the task,
data and eval settings from that experiment instead (the model always comes from
the checkpoint). `out=PATH` sets where results go.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from mammut_pl import config as config_lib
from mammut_pl.checkpoint import checkpoint_config, read_checkpoint, task_with_weights
from mammut_pl.config import Config, ConfigError

log = logging.getLogger("mammut_pl")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
OWN_KEYS = ("ckpt", "image", "question", "split", "out", "batch_size")


def image_files(path: str | Path) -> list[Path]:
    """One image, or the images of a folder (sorted, not recursive)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"image={p}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return files
    raise FileNotFoundError(f"image={p}: no such file or folder")


@torch.no_grad()
def describe_images(task: Any, cfg: Config, paths: list[Path], question: str = "",
                    batch_size: int = 16) -> list[dict[str, Any]]:
    """A caption for each image, or the answer to `question` about it. Unreadable images
    are reported and skipped (the others go on)."""
    from tqdm import tqdm

    from mammut_pl.data.transforms import image_transform, load_image
    from mammut_pl.data.vqav2 import VQACollator

    transform = image_transform(cfg.model.image_size, train=False)
    e = cfg.eval
    prompt = None
    if question:
        collate = VQACollator(task.tokenizer, cfg.model.context_length, cfg.data.vqa_prompt, cfg.data.max_answer_tokens)
        prompt = torch.tensor([collate.prompt_ids(question)], device=task.device)
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(paths), unit="image", disable=len(paths) < 2, file=sys.stderr)
    for start in range(0, len(paths), batch_size):
        images, kept = [], []
        for p in paths[start: start + batch_size]:
            try:
                images.append(transform(load_image(str(p))))
                kept.append(p)
            except OSError as err:
                print(f"skipped: {err}", file=sys.stderr)
        if images:
            batch = torch.stack(images).to(task.device)
            prompts = prompt.expand(len(images), -1) if prompt is not None else None
            new = task.model.generate(batch, prompt_tokens=prompts, max_new_tokens=e.max_new_tokens,
                                      num_beams=e.num_beams, length_penalty=e.length_penalty)
            for p, text in zip(kept, task.decode(new)):
                rows.append({"image": str(p), **({"question": question, "answer": text} if question else {"caption": text})})
        bar.update(len(paths[start: start + batch_size]))
    bar.close()
    return rows


def predict_split(task: Any, cfg: Config, split: str, out: Path) -> Path:
    """The official results JSON for a whole split (VQA: [{"question_id", "answer"}])."""
    import lightning as L

    from mammut_pl.fit import build_datamodule
    from mammut_pl.tasks.vqa import write_results

    if cfg.task != "vqa":
        raise ConfigError(f"split={split}: split prediction is for task=vqa (this config has task={cfg.task}); "
                          "captions for images: image=PATH")
    cfg.data.predict_split = split
    datamodule = build_datamodule(cfg, task.tokenizer)
    trainer = L.Trainer(accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                        default_root_dir=str(out.parent))
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
    if ("image" in own) == ("split" in own):
        raise ConfigError("give either image=PATH (an image or a folder) or split=SPLIT (e.g. test-dev2015)")
    if "question" in own and "image" not in own:
        raise ConfigError("question=... goes with image=PATH")
    return own, experiment, rest


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
        task, _ = task_with_weights(cfg, ckpt, own["ckpt"])
        if "split" in own:
            out = Path(own.get("out") or Path(own["ckpt"]).resolve().parent.parent / f"vqa_{own['split']}_results.json")
            path = predict_split(task, cfg, own["split"], out)
            print(f"wrote {len(task.results)} answers to {path} (official VQA results format)")
            return 0
        batch_size = int(own.get("batch_size", 16))
        rows = describe_images(task, cfg, image_files(own["image"]), own.get("question", ""), batch_size)
        for row in rows:
            text = f"{row['question']} -> {row['answer']}" if "answer" in row else row["caption"]
            print(f"{row['image']}: {text}")
        if own.get("out"):
            Path(own["out"]).write_text(json.dumps(rows, indent=1))
            print(f"wrote {len(rows)} results to {own['out']}")
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
