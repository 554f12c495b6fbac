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
data.root / data.lvis.val_file) or categories="name,name,...": open vocabulary, each
name embedded by the text side through the task's detection.prompts templates.
score_threshold= (0.3) hides the weaker detections (at most detection.max_detections
per image).
"""

from __future__ import annotations

import logging
import sys

from mammut_pl import config as config_lib
from mammut_pl.config import ConfigError
from mammut_pl.prediction import OWN_KEYS, predict
from mammut_pl.runtime import cli_main


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return cli_main(lambda: predict(*parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
