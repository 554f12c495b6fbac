"""MLflow: one run per training run, resumed (same run id) when training resumes."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger

from mammut_pl.config import PROJECT_ROOT, Config, flatten, to_dict, to_yaml, tracking_uri

log = logging.getLogger(__name__)
RUN_ID_FILE = "mlflow_run_id"


def git_commit() -> str:
    try:  # fixed argument list, nothing from the config reaches a shell
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - not a git checkout
        return "unknown"


def make_logger(cfg: Config, run_dir: Path, run_name: str) -> MLFlowLogger | None:
    """An MLFlowLogger for this run dir: a new MLflow run, or the one this dir already logged to."""
    if not cfg.mlflow.enabled:
        return None
    id_file = run_dir / RUN_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    logger = MLFlowLogger(
        experiment_name=cfg.mlflow.experiment_name,
        run_name=cfg.mlflow.run_name or run_name,
        tracking_uri=tracking_uri(cfg),
        run_id=run_id,
        tags={"experiment": cfg.experiment or "default", "task": cfg.task, "git_commit": git_commit(),
              "run_dir": str(run_dir.resolve()), **cfg.mlflow.tags,
              **({"mlflow.parentRunId": cfg.mlflow.parent_run_id} if cfg.mlflow.parent_run_id else {})},
    )
    return logger


def log_run_start(logger: MLFlowLogger | None, cfg: Config, run_dir: Path, resumed: bool) -> None:
    """Params + config artifact on the first start; on a resume the run already has them."""
    if logger is None:
        return
    (run_dir / RUN_ID_FILE).write_text(logger.run_id)
    config_path = run_dir / "config.yaml"
    config_path.write_text(to_yaml(cfg))
    if not resumed:
        params: dict[str, Any] = {k: ("" if v is None else v) for k, v in flatten(to_dict(cfg)).items()}
        logger.log_hyperparams(params)
    logger.experiment.log_artifact(logger.run_id, str(config_path))


def run_url(logger: MLFlowLogger) -> str:
    return f"http://127.0.0.1:5000/#/experiments/{logger.experiment_id}/runs/{logger.run_id}"
