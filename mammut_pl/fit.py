"""python -m mammut_pl.fit experiment=NAME key=value ...

Train a MaMMUT task: config -> datamodule -> LightningModule -> MLflow (mammut_pl.runtime.run)."""

from __future__ import annotations

import dataclasses
import logging
import sys
import warnings

from mammut_pl import config as config_lib
from mammut_pl.config import Config
from mammut_pl.runtime import cli_main, run
from mammut_pl.tasks import load_config

USAGE = """usage: python -m mammut_pl.fit [experiment=NAME] [key=value ...]

Train MaMMUT. The config is the typed defaults, then experiments/NAME.yaml,
then the key=value overrides (OmegaConf dotlist: model.num_cross_attn=2,
trainer.max_steps=100, 'trainer.devices=[0,1]').

experiments: {experiments}
top-level keys: {keys}
model.preset=NAME ({presets}) sets the whole architecture;
model.* keys after it override it.
special: print_config=true prints the resolved config and exits;
         ckpt_path=last resumes the experiment's latest run (same MLflow run).
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # MLflow forbids "@" in metric names; Lightning maps val/i2t_R@1 -> val/i2t_R1 (see README)
    warnings.filterwarnings("ignore", message="MLFlow only allows")
    if any(a in ("-h", "--help", "help") for a in argv):
        keys = ", ".join(f.name for f in dataclasses.fields(Config))
        print(USAGE.format(experiments=", ".join(config_lib.list_experiments()), keys=keys,
                           presets=", ".join(config_lib.PRESETS)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def body() -> int:
        cfg = load_config(*config_lib.parse_overrides(argv))
        if cfg.print_config:
            print(config_lib.to_yaml(cfg))
        else:
            run(cfg)
        return 0

    return cli_main(body)


if __name__ == "__main__":
    sys.exit(main())
