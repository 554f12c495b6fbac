"""MLflow: one run per training run, resumed (same run id) when training resumes.

A tracking server that cannot be reached stops the run at start, within seconds, with
one clear error; one that goes away mid-run does not stop training or checkpointing:
`ResilientMLFlowLogger` drops the failing calls, counts them and reports the outage."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from mammut_pl.config import PROJECT_ROOT, Config, ConfigError, flatten, to_dict, to_yaml, tracking_uri

log = logging.getLogger(__name__)
RUN_ID_FILE = "mlflow_run_id"


def git_commit() -> str:
    try:  # fixed argument list, nothing from the config reaches a shell
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - not a git checkout
        return "unknown"


def check_tracking_server(uri: str, timeout_s: float = 5.0) -> None:
    """An http(s) tracking URI must answer /health within `timeout_s` (MLflow's own client would
    retry for minutes); other stores (sqlite, files) are checked when the run is created."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()  # noqa: S310
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            return  # behind authentication: the MLflow client sends the credentials
        raise ConfigError(f"`mlflow.tracking_uri`: {uri} answers, but not as an MLflow tracking server "
                          f"(HTTP {err.code} on /health). Fix the URI, or train without tracking: "
                          "mlflow.enabled=false") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise ConfigError(f"`mlflow.tracking_uri`: no MLflow tracking server answers at {uri} within "
                          f"{timeout_s:.0f} s ({reason}). Start it (`mlflow server --host 127.0.0.1 --port 5000`), "
                          "fix the URI, or train without tracking: mlflow.enabled=false") from None
    # fail fast later too: a dead server must not block each logging call for minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


class ResilientMLFlowLogger(MLFlowLogger):
    """An MLFlowLogger whose failures never stop training: a call that raises is dropped and
    counted; the first failure is reported at once, the total when the run ends; after a
    failure, calls are dropped without trying for `cooldown_s` seconds (a dead server would
    otherwise slow every step down by its timeouts)."""

    def __init__(self, *args: Any, cooldown_s: float = 30.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cooldown_s = cooldown_s
        self.failures = 0  # calls that raised
        self.dropped = 0  # calls not logged (raised, or skipped during a cool-down)
        self.first_error = ""
        self._retry_at = 0.0

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if time.monotonic() < self._retry_at:
            self.dropped += 1
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking must never stop training
            self.failures += 1
            self.dropped += 1
            self._retry_at = time.monotonic() + self.cooldown_s
            if self.failures == 1:
                self.first_error = f"{what}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                log.error("MLflow tracking failed (%s); training and checkpointing go on, logging calls are "
                          "dropped while it fails (retried every %.0f s)", self.first_error, self.cooldown_s)
            return None

    @rank_zero_only
    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        self._guard("log_metrics", super().log_metrics, metrics, step)

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        self._guard("log_hyperparams", super().log_hyperparams, params)

    @rank_zero_only
    def log_artifact(self, path: str) -> None:
        self._guard("log_artifact", lambda: self.experiment.log_artifact(self.run_id, path))

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self._guard("after_save_checkpoint", super().after_save_checkpoint, checkpoint_callback)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        self._retry_at = 0.0  # one more try to mark the run finished
        self._guard("finalize", super().finalize, status)
        if self.failures:
            log.error("MLflow tracking failed %d time(s) during this run; %d logging call(s) were dropped "
                      "(first: %s). Training and checkpoints are complete; the MLflow run %s is missing those "
                      "values.", self.failures, self.dropped, self.first_error, self._run_id)


@contextlib.contextmanager
def sqlite_creation_lock(uri: str) -> Iterator[None]:
    """Held while a local SQLite store (MLflow's runs, Optuna's study) is opened for the first
    time. Both build a new store's schema with migrations that are not safe to run twice at
    once: two runs, sweep workers or a sweep and a reader starting together on a new file would
    otherwise crash one of them. No-op for other URIs."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock"):
        yield


def prepare_store(uri: str) -> None:
    """Create (or migrate) a local SQLite MLflow store under `sqlite_creation_lock`."""
    if not uri.startswith("sqlite:///"):
        return
    from mlflow.tracking import MlflowClient

    with sqlite_creation_lock(uri):
        MlflowClient(uri).search_experiments(max_results=1)


def make_logger(cfg: Config, run_dir: Path, run_name: str) -> MLFlowLogger | None:
    """An MLFlowLogger for this run dir: a new MLflow run, or the one this dir already logged to."""
    if not cfg.mlflow.enabled:
        return None
    id_file = run_dir / RUN_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    prepare_store(tracking_uri(cfg))
    logger = ResilientMLFlowLogger(
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
    try:  # creates (or reopens) the run: an unusable store stops the run here, before training
        run_id = logger.run_id
    except Exception as err:  # noqa: BLE001 - MLflow / SQLAlchemy / HTTP errors -> one line
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"`mlflow.tracking_uri`={tracking_uri(cfg)}: cannot start the MLflow run: {msg}") from None
    (run_dir / RUN_ID_FILE).write_text(run_id)
    config_path = run_dir / "config.yaml"
    config_path.write_text(to_yaml(cfg))
    if not resumed:
        params: dict[str, Any] = {k: ("" if v is None else v) for k, v in flatten(to_dict(cfg)).items()}
        logger.log_hyperparams(params)
    if isinstance(logger, ResilientMLFlowLogger):
        logger.log_artifact(str(config_path))
    else:
        logger.experiment.log_artifact(logger.run_id, str(config_path))


def run_url(logger: MLFlowLogger) -> str:
    return f"http://127.0.0.1:5000/#/experiments/{logger.experiment_id}/runs/{logger.run_id}"
