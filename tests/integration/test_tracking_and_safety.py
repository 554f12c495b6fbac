"""Tracking faults without training (the failure-tolerant logger, the reachability check) and
the security rules of the code base (no config value reaches a shell or eval; every
torch.load is weights-only; YAML only through OmegaConf; the MLflow UI binds to loopback)."""

import logging
import re
import time

import pytest
from lightning.pytorch.loggers import MLFlowLogger

from mammut_pl.config import ConfigError
from mammut_pl.tracking import ResilientMLFlowLogger, check_tracking_server
from tests.helpers import ROOT



def test_tracking_server_check_fails_fast():
    # refused; unroutable (times out, or a sandbox's proxy answers 404)
    for uri in ("http://127.0.0.1:9", "http://10.255.255.1:5000"):
        t0 = time.time()
        with pytest.raises(ConfigError, match=f"`mlflow.tracking_uri`: .*{re.escape(uri)}.*mlflow.enabled=false"):
            check_tracking_server(uri, timeout_s=1)
        assert time.time() - t0 < 5
    check_tracking_server("sqlite:///nowhere/mlflow.db")  # not http: checked when the run starts


@pytest.mark.parametrize("status, ok", [(200, True), (401, True), (404, False), (503, False)])
def test_tracking_server_check_wants_an_mlflow_health_answer(status, ok):
    import http.server
    import threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(status if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_port}"
    try:
        if ok:
            check_tracking_server(uri)
        else:
            with pytest.raises(ConfigError, match=f"answers, but not as an MLflow tracking server .HTTP {status}"):
                check_tracking_server(uri)
    finally:
        server.shutdown()


def test_resilient_logger_drops_counts_and_reports_once(tmp_path, monkeypatch, caplog):
    calls = []

    def dead(self, metrics, step=None):
        calls.append(step)
        raise ConnectionError("server went away")

    monkeypatch.setattr(MLFlowLogger, "log_metrics", dead)
    logger = ResilientMLFlowLogger(tracking_uri=f"sqlite:///{tmp_path}/m.db", cooldown_s=3600)
    with caplog.at_level(logging.ERROR):
        for step in range(5):
            logger.log_metrics({"loss": 1.0}, step)  # never raises
    assert calls == [0]  # after the failure: not retried during the cool-down
    assert logger.failures == 1 and logger.dropped == 5
    errors = [r for r in caplog.records if "MLflow tracking failed" in r.getMessage()]
    assert len(errors) == 1 and "server went away" in errors[0].getMessage()
    logger.cooldown_s = 0
    logger._retry_at = 0
    logger.log_metrics({"loss": 1.0}, 5)  # retried after the cool-down
    assert calls == [0, 5] and logger.failures == 2
    assert len([r for r in caplog.records if "MLflow tracking failed" in r.getMessage()]) == 1


# --- security rules, checked on the source ----------------------------------------------------------------
def sources():
    return [p for p in (ROOT / "mammut_pl").rglob("*.py")] + list((ROOT / "scripts").rglob("*.py"))


def test_no_shell_no_eval_no_unsafe_loads():
    rules = {
        r"shell\s*=\s*True": "a shell",
        r"os\.system\(|os\.popen\(|commands\.": "a shell",
        r"(?<![\w.])(eval|exec)\(": "eval/exec",
        r"yaml\.(load|unsafe_load|full_load)\(": "YAML other than OmegaConf / safe_load",
        r"pickle\.loads?\(|dill\.|cloudpickle\.": "unpickling",
        r"ImageFile\.LOAD_TRUNCATED_IMAGES\s*=\s*True": "decoding truncated images silently",
    }
    found = []
    for path in sources():
        text = path.read_text()
        for pattern, what in rules.items():
            for m in re.finditer(pattern, text):
                line = text[: m.start()].count("\n") + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {what}")
        for m in re.finditer(r"torch\.load\(", text):  # each call must say weights_only=True
            call = text[m.start(): text.find(")", m.start()) + 200]
            if "weights_only=True" not in call.split("\n\n")[0][:300]:
                found.append(f"{path.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}: torch.load without "
                             "weights_only=True")
    assert not found, "\n".join(found)


def test_every_trainer_loads_checkpoints_weights_only():
    """trainer.fit/validate/test/predict(ckpt_path=...) must pass weights_only=True (torch's default
    can be flipped by TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD); the trainer builder also uses AtomicCheckpointIO."""
    found = []
    for path in sources():
        text = path.read_text()
        for m in re.finditer(r"\.(fit|validate|test|predict)\(([^()]|\([^()]*\))*ckpt_path=([^()]|\([^()]*\))*\)", text):
            if "weights_only=True" not in m.group(0):
                found.append(f"{path.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}: {m.group(0)[:80]}")
    assert not found, "\n".join(found)
    assert "plugins=[AtomicCheckpointIO()]" in (ROOT / "mammut_pl" / "runtime.py").read_text()  # the trainer builder


def test_mlflow_ui_binds_to_loopback_by_default():
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^MLFLOW_HOST \?= 127\.0\.0\.1$", make, re.M)
    assert "--host $(MLFLOW_HOST)" in make


def _open_store(kind: str, uri: str, barrier, locked: bool, errors) -> None:
    import optuna
    from mlflow.tracking import MlflowClient

    from mammut_pl.tracking import prepare_store, sqlite_creation_lock

    def open_it() -> None:
        if kind == "mlflow":
            MlflowClient(uri).search_experiments(max_results=1)
        else:
            optuna.create_study(study_name="s", storage=uri, load_if_exists=True)

    barrier.wait()
    try:
        if not locked:
            open_it()
        elif kind == "mlflow":
            prepare_store(uri)
        else:
            with sqlite_creation_lock(uri):  # as sweep.open_study does
                open_it()
    except Exception as err:  # noqa: BLE001 - what the unlocked race raises varies
        errors.put(type(err).__name__)


def _race(kind: str, uri: str, locked: bool, n: int = 3) -> list[str]:
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    barrier, errors = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open_store, args=(kind, uri, barrier, locked, errors)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    return [errors.get() for _ in range(errors.qsize())]


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["mlflow", "optuna"])
def test_processes_starting_together_on_a_new_sqlite_store_all_start(tmp_path, kind):
    """MLflow's and Optuna's schema migrations of a new SQLite store are not safe to run twice at
    once (two `fit` runs, sweep workers, a sweep and a reader starting together):
    `sqlite_creation_lock` serialises them."""
    import mlflow  # noqa: F401 - imported before forking, as fit / sweep have them
    import optuna
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    assert _race(kind, f"sqlite:///{tmp_path / 'locked' / 'store.db'}", locked=True) == []
    # the race is real: without the lock, processes starting together fail
    assert any(_race(kind, f"sqlite:///{tmp_path / f'raw{attempt}.db'}", locked=False) for attempt in range(3))
