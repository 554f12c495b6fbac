"""What a person reads at the end of a run: metrics, example outputs, where the run is.
The task's own lines come from its TaskSpec.report (mammut_pl/tasks/registry.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mammut_pl.config import Config, tracking_uri
from mammut_pl.tasks import task_spec


def print_report(cfg: Config, task: Any, datamodule: Any, metrics: dict[str, float], logger: Any, run_dir: Path) -> None:
    line = "=" * 72
    print(f"\n{line}\nmammut_pl | experiment={cfg.experiment or 'default'} task={cfg.task} "
          f"| trained {metrics.get('train_seconds', 0):.0f} s")
    task_lines = task_spec(cfg.task).report
    for text in task_lines(cfg, task, datamodule, metrics) if task_lines else []:
        print(text)
    print(f"\ncheckpoints: {run_dir / 'checkpoints'}")
    if logger is not None:
        print(f"MLflow run {logger.run_id} in {tracking_uri(cfg)}")
        print(f"  open the UI: `make mlflow-ui`, then {logger.run_id and run_url_of(logger)}")
    print(line)


def run_url_of(logger: Any) -> str:
    from mammut_pl.tracking import run_url

    return run_url(logger)
