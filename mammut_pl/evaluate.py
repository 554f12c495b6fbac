"""python -m mammut_pl.evaluate task=TASK ckpt=PATH [split=test|val] [out=DIR] [key=value ...]

TASK: retrieval | captioning (any image checkpoint, on a Karpathy-split COCO / Flickr30k),
      videoqa | video_caption | detection (a checkpoint of that task, on its own dataset),
      zeroshot (any image checkpoint or an openMaMMUT folder, on an ImageFolder).

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
    # zero-shot classification: top-1, top-5, mean per-class recall, per-class results in the JSON
    python -m mammut_pl.evaluate task=zeroshot ckpt=CKPT_OR_OPENMAMMUT_FOLDER data.root=/data/imagenet/val
    python -m mammut_pl.evaluate task=zeroshot ckpt=... data.root=/data/pets classnames=names.txt templates=simple

data=coco|flickr30k (retrieval, captioning) reads ROOT/dataset_coco.json or
ROOT/dataset_flickr30k.json (Karpathy split); ROOT is data.root=, else the
checkpoint's COCO root (data.root of a COCO-trained run, data.webdata.val_root of a
pretraining run). Without data= the checkpoint's own evaluation data is used.
split= picks the Karpathy split (test).

videoqa / video_caption / detection score a checkpoint trained with that task
(experiment=msrvtt_qa / msrvtt_caption / lvis) on the dataset it was trained on
(data.root= points elsewhere), with its task's own test loop and metrics: split=test
(default) or val (MSRVTT: {split}_qa.json, or the captions file's split; LVIS: the
data.lvis.test_file annotations, which default to val_file, or val_file). Another
checkpoint is refused, naming both tasks. data.msrvtt.max_eval_questions= (video) and
data.lvis.max_eval_images= score the first ones only (the report says so).

zeroshot reads data.root= (one sub-folder per class; without it, a pretraining run's own
data.zeroshot_root): ImageNet-1k names and the 80 OpenAI templates when the folders are the
ImageNet WordNet ids (sorted = the standard class index), else folder names; classnames=FILE
(one name per line in sorted-folder order, `folder<TAB>name` lines, or JSON list / object) and
templates=openai|simple|FILE (one template per line with {} for the name). ckpt= may be an
openMaMMUT folder (open_clip_config.json + weights): its tokenizer and preprocessing are used.

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

import logging
import sys

from mammut_pl.config import ConfigError
from mammut_pl.data.coco import KARPATHY_FILES
from mammut_pl.evaluation import evaluate, format_report
from mammut_pl.runtime import cli_main
from mammut_pl.tasks import EVAL_SPECS

OWN_KEYS = ("task", "ckpt", "data", "split", "out")
PROTOCOL_KEYS = {k for spec in EVAL_SPECS.values() for k in spec.keys}  # e.g. zeroshot's classnames=


def parse_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(this command's own keys, config overrides)."""
    own: dict[str, str] = {"split": "test"}
    overrides: list[str] = []
    for arg in argv:
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r}: expected key=value (see --help)")
        key, value = arg.split("=", 1)
        if key in OWN_KEYS or key in PROTOCOL_KEYS:
            own[key] = value
        else:
            overrides.append(arg)
    name = own.get("task")
    if name not in EVAL_SPECS:
        raise ConfigError(f"task={own.get('task', '')!r}: expected one of {', '.join(EVAL_SPECS)}")
    if not own.get("ckpt"):
        raise ConfigError("ckpt=PATH is required (a checkpoint written by `python -m mammut_pl.fit`)")
    foreign = sorted(k for k in own if k in PROTOCOL_KEYS and k not in EVAL_SPECS[name].keys)
    if foreign:
        owners = [n for n, s in EVAL_SPECS.items() if foreign[0] in s.keys]
        raise ConfigError(f"{foreign[0]}= is for task={'|'.join(owners)}, not task={name}")
    if EVAL_SPECS[name].own_data:
        if own.get("data"):
            raise ConfigError(f"data={own['data']} is for task=retrieval|captioning: task={name} scores the "
                              "checkpoint on its own dataset (data.root=PATH points elsewhere)")
        if own["split"] not in ("test", "val"):
            raise ConfigError(f"split={own['split']!r}: task={name} scores split=test or split=val")
    elif EVAL_SPECS[name].run and own.get("data"):
        raise ConfigError(f"data={own['data']} is for task=retrieval|captioning: task={name} reads data.root=PATH")
    elif own.get("data", "") not in ("", *KARPATHY_FILES):
        raise ConfigError(f"data={own['data']!r}: expected one of {', '.join(KARPATHY_FILES)}")
    return own, overrides


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # the scores, not the accelerator banner

    def body() -> int:
        report = evaluate(*parse_args(argv))
        if report:  # {} on the other ranks of a multi-process run
            print(format_report(report))
        return 0

    return cli_main(body)


if __name__ == "__main__":
    sys.exit(main())
