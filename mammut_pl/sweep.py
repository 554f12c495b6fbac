"""python -m mammut_pl.sweep sweep=NAME [sweep.KEY=VALUE ...] [KEY=VALUE ...]

Reproduce one of the paper's ablations as an Optuna study (sweeps/NAME.yaml).

Each trial = pretraining (the sweep's `pretrain` experiment, with the trial's
parameters) then the downstream evaluations the ablation needs: zero-shot
retrieval of the pretrained model, and VQA and/or LVIS detection fine-tuned from
its checkpoint — as in the paper's tables. Every trial calls the same `runtime.run`
the CLI calls.

Overrides: `sweep.KEY=V` sets the sweep itself (sweep.workers=2, sweep.n_trials=8,
sweep.storage=postgresql://..., sweep.out=DIR); `pretrain.KEY=V` / `vqa.KEY=V` / `lvis.KEY=V` go to
one stage's config; any other `KEY=V` goes to every stage (e.g. trainer.devices=4).

Storage: the study persists (SQLite in the sweep's folder; a JournalStorage file
when several local workers share it; any RDB URL for several machines). Running the
same command again continues the study: finished trials are kept; a trial left
RUNNING by a killed sweep is marked failed and retried with the same parameters.

MLflow: one parent run per study (the sweep file, the study summary, the results
table and plot as artifacts), one nested child run per trial (its parameters, all
stage metrics, its checkpoints); each stage's own training run nests under its trial.

The code: mammut_pl/sweeps/ (this file is the command line only).
"""

from __future__ import annotations

import logging
import signal
import sys
import warnings

import optuna

from mammut_pl.sweeps.spec import list_sweeps
from mammut_pl.sweeps.study import SweepTerminated, note_sigterm

USAGE = __doc__ + "\nsweeps: {sweeps}\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE.format(sweeps=", ".join(list_sweeps())))
        return 0
    import lightning.pytorch  # noqa: F401  # before basicConfig: Lightning keeps its own handler (no doubled lines)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", message="MLFlow only allows")  # R@1 -> R1 in MLflow (see README)
    signal.signal(signal.SIGTERM, note_sigterm)  # Lightning chains to it while a stage trains
    from mammut_pl.runtime import cli_main
    from mammut_pl.sweeps.run import run_sweep

    try:
        return cli_main(lambda: run_sweep(argv))
    except SweepTerminated as stop:
        print("sweep stopped by SIGTERM: run the same command again to continue the study "
              "(the interrupted trial is retried)", file=sys.stderr)
        return int(stop.code)


if __name__ == "__main__":
    sys.exit(main())
