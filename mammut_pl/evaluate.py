"""python -m mammut_pl.evaluate task=retrieval|captioning ckpt=PATH [data=coco|flickr30k] [split=test] [out=DIR] [key=value ...]

    # zero-shot retrieval, the standard Karpathy test protocols (COCO 5k images, Flickr30k 1k)
    python -m mammut_pl.evaluate task=retrieval ckpt=outputs/demo/RUN/checkpoints/last.ckpt data=coco
    python -m mammut_pl.evaluate task=retrieval ckpt=... data=flickr30k data.root=/data/flickr30k
    # captioning: BLEU-1..4, CIDEr(-D), distinct captions, and the official results JSON
    python -m mammut_pl.evaluate task=captioning ckpt=outputs/coco_captioning/RUN/checkpoints/best.ckpt eval.num_beams=3

data=coco|flickr30k reads ROOT/dataset_coco.json or ROOT/dataset_flickr30k.json
(Karpathy split); ROOT is data.root=, else the checkpoint's COCO root (data.root of
a COCO-trained run, data.val_root of a pretraining run). Without data= the
checkpoint's own evaluation data is used. split= picks the Karpathy split (test).
The config is the checkpoint's, `key=value` overrides it (eval.*, data.*,
trainer.precision, ...). Scores are printed and written as JSON to out=DIR
(default: RUN/eval/ next to the checkpoint's run).

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

from mammut_pl.checkpoint import checkpoint_config, read_checkpoint, task_with_weights
from mammut_pl.config import Config, ConfigError

KARPATHY_FILES = {"coco": "dataset_coco.json", "flickr30k": "dataset_flickr30k.json"}
DATASETS = {file: name for name, file in KARPATHY_FILES.items()}
# what is evaluated -> the task (LightningModule) whose test loop scores it
EVAL_TASKS = {"retrieval": "pretrain", "captioning": "captioning"}
OWN_KEYS = ("task", "ckpt", "data", "split", "out")
RECALL_KEYS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "mean_R")
CAPTION_KEYS = ("BLEU1", "BLEU2", "BLEU3", "BLEU4", "CIDEr", "distinct_captions")


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
    if own.get("task") not in EVAL_TASKS:
        raise ConfigError(f"task={own.get('task', '')!r}: expected one of {', '.join(EVAL_TASKS)}")
    if not own.get("ckpt"):
        raise ConfigError("ckpt=PATH is required (a checkpoint written by `python -m mammut_pl.fit`)")
    if own.get("data", "") not in ("", *KARPATHY_FILES):
        raise ConfigError(f"data={own['data']!r}: expected one of {', '.join(KARPATHY_FILES)}")
    return own, overrides


def eval_config(stored: Config, own: dict[str, str], overrides: list[str]) -> Config:
    """The checkpoint's config, pointed at the Karpathy-split data and split to evaluate."""
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
    if "data.root" in given and "data.demo" not in given:
        d.demo = False  # never write the demo world into a folder the user named
    d.name = "coco"
    if own.get("data"):
        d.karpathy_file = KARPATHY_FILES[own["data"]]
    d.test_split = own["split"]
    return cfg


def trainer_overrides(overrides: list[str]) -> dict[str, Any]:
    """Only the trainer.* keys given on the command line: the stored ones are the training run's
    (devices, strategy, max_time ...), not how to evaluate."""
    given = [o for o in overrides if o.startswith("trainer.")]
    return OmegaConf.to_container(OmegaConf.from_dotlist(given)).get("trainer", {}) if given else {}


def default_out(ckpt: Path) -> Path:
    run_dir = ckpt.resolve().parent.parent if ckpt.parent.name == "checkpoints" else ckpt.resolve().parent
    return run_dir / "eval"


def evaluate(own: dict[str, str], overrides: list[str]) -> dict[str, Any]:
    """Score one checkpoint; returns (and writes) the report: settings, counts, metrics."""
    from mammut_pl.fit import build_datamodule, prepare_data

    ckpt_path = Path(own["ckpt"])
    ckpt = read_checkpoint(ckpt_path)
    cfg = eval_config(checkpoint_config(ckpt, ckpt_path, overrides), own, overrides)
    out_dir = Path(own.get("out") or default_out(ckpt_path))
    prepare_data(cfg)
    module, tokenizer = task_with_weights(cfg, ckpt, ckpt_path)
    datamodule = build_datamodule(cfg, tokenizer)
    images = datamodule.split(cfg.data.test_split)  # fails early, naming the file, if the data is not there
    trainer = L.Trainer(**{"accelerator": "auto", "devices": 1, "precision": "32-true", "logger": False,
                           "enable_checkpointing": False, "enable_model_summary": False,
                           "default_root_dir": str(out_dir), **trainer_overrides(overrides)})
    tested = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    keys = RECALL_KEYS if own["task"] == "retrieval" else CAPTION_KEYS
    report: dict[str, Any] = {
        "task": own["task"], "ckpt": str(ckpt_path),
        "data": DATASETS.get(cfg.data.karpathy_file, cfg.data.karpathy_file), "root": cfg.data.root,
        "split": cfg.data.test_split, "images": len(images), "captions": sum(len(im.captions) for im in images),
        "max_eval_images": cfg.data.max_eval_images,
        "metrics": {k: float(tested[f"test/{k}"]) for k in keys},
    }
    if own["task"] == "captioning":
        e = cfg.eval
        report["decoding"] = {"num_beams": e.num_beams, "length_penalty": e.length_penalty,
                              "max_new_tokens": e.max_new_tokens}
        report["results_json"] = str(module.results_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{own['task']}_{report['data']}_{cfg.data.test_split}.json"
    path.write_text(json.dumps(report, indent=1))
    report["path"] = str(path)
    return report


def format_report(report: dict[str, Any]) -> str:
    m = report["metrics"]
    head = (f"{report['task']} | {report['data']} {report['split']}: {report['images']} images, "
            f"{report['captions']} captions | {report['ckpt']}")
    if report["max_eval_images"]:
        head += (f"\n  (not the full protocol: data.max_eval_images={report['max_eval_images']} "
                 "keeps the first images only)")
    if report["task"] == "retrieval":
        lines = [head, f"{'':16}{'R@1':>7}{'R@5':>7}{'R@10':>7}"]
        for direction, name in (("i2t", "image -> text"), ("t2i", "text -> image")):
            lines.append(f"{name:16}" + "".join(f"{m[f'{direction}_R@{k}']:7.1f}" for k in (1, 5, 10)))
        lines.append(f"{'mean of the six':16}{m['mean_R']:7.1f}")
    else:
        d = report["decoding"]
        decoding = ("greedy" if d["num_beams"] == 1
                    else f"beam search ({d['num_beams']} beams, length penalty {d['length_penalty']})")
        lines = [head, f"decoding: {decoding}, up to {d['max_new_tokens']} tokens",
                 "  ".join(f"BLEU-{n} {100 * m[f'BLEU{n}']:.1f}" for n in (1, 2, 3, 4))
                 + f"  CIDEr {100 * m['CIDEr']:.1f}  (x100)",
                 f"distinct captions: {100 * m['distinct_captions']:.0f}%",
                 f"results JSON: {report['results_json']}"]
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
        print(format_report(evaluate(own, overrides)))
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
