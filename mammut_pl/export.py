"""python -m mammut_pl.export ckpt=RUN.ckpt out=DIR

Write a suite checkpoint whose architecture is openMaMMUT-compatible (the
`openmammut-*` presets, or a run started with model.init_from=<openMaMMUT folder>)
in the open_clip hub layout: DIR/open_clip_config.json + DIR/open_clip_model.safetensors,
loadable by LAION's open_clip_mammut and by `load_openmammut`."""

from __future__ import annotations

import sys

from mammut_pl.checkpoint import export_openmammut


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    unknown = sorted(set(args) - {"ckpt", "out"}) + [a for a in argv if "=" not in a]
    if unknown or "ckpt" not in args or "out" not in args:
        print(f"usage: python -m mammut_pl.export ckpt=RUN.ckpt out=DIR (unknown: {unknown})" if unknown else
              "usage: python -m mammut_pl.export ckpt=RUN.ckpt out=DIR", file=sys.stderr)
        return 2
    try:
        out = export_openmammut(args["ckpt"], args["out"])
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
