"""Run `notebooks/ablations.ipynb` and read what it showed; a synthetic sweep store for its tests.

`run_notebook(tracking_uri, sweep, out_dir)` executes the notebook with nbclient in a kernel
that runs this interpreter (a kernelspec written under `out_dir`, found through JUPYTER_PATH:
no user-level kernel install needed) and returns the executed notebook's path.
`notebook_report(nb)` parses its outputs per sweep: trials-table rows, ablation-table order,
Pareto front, PNGs. `synthetic_store(dir)` writes a small sweep store in the MLflow layout that
`mammut_pl.sweep` writes (see `mammut_pl/sweeps/ablations.py`).
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = PROJECT_ROOT / "notebooks" / "ablations.ipynb"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- executing the notebook


def write_kernelspec(jupyter_dir: Path, name: str = "python3") -> Path:
    """A kernelspec `name` that starts ipykernel with this interpreter (the project's venv)."""
    spec_dir = jupyter_dir / "kernels" / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python 3 ({sys.executable})", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return spec_dir


def run_notebook(tracking_uri: str, sweep: str | None, out_dir: Path, *, experiment: str = "mammut_pl-sweeps",
                 notebook: Path = NOTEBOOK, timeout_s: int = 180) -> Path:
    """Execute `notebook` against `tracking_uri` (`sweep=None`: every finished sweep); the executed
    copy is `out_dir/<name>.ipynb`, its figures also `out_dir/figures/*.png`. A cell that raises
    raises `nbclient.exceptions.CellExecutionError` here."""
    from nbclient import NotebookClient

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jupyter_dir = out_dir / "jupyter"
    write_kernelspec(jupyter_dir)
    env = dict(os.environ, MAMMUT_TRACKING_URI=tracking_uri, MAMMUT_SWEEP_EXPERIMENT=experiment,
               MAMMUT_ABLATIONS_FIGURES=str(out_dir / "figures"), PYDEVD_DISABLE_FILE_VALIDATION="1")
    env.pop("MAMMUT_SWEEP", None)
    if sweep:
        env["MAMMUT_SWEEP"] = sweep
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=timeout_s,
                            resources={"metadata": {"path": str(notebook.parent)}})
    executed = out_dir / notebook.name
    # the kernel manager looks the kernelspec up (JUPYTER_PATH first) and writes the connection
    # file (JUPYTER_RUNTIME_DIR) in this process: nothing goes to the user's ~/.local/share/jupyter
    jupyter_env = {"JUPYTER_PATH": str(jupyter_dir), "JUPYTER_RUNTIME_DIR": str(jupyter_dir / "runtime")}
    env.update(jupyter_env, IPYTHONDIR=str(out_dir / "ipython"))
    saved = {key: os.environ.get(key) for key in jupyter_env}
    os.environ.update(jupyter_env)
    try:
        client.execute(env=env)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        nbformat.write(nb, executed)
    return executed


# ---------------------------------------------------------------- reading its outputs


def output_texts(nb: Any) -> list[str]:
    """Each output's text in order: printed text, markdown, a table's plain-text view, errors."""
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out["output_type"] == "stream":
                texts.append(out["text"])
            elif out["output_type"] == "error":
                texts.append(f"ERROR {out['ename']}: {out['evalue']}")
            elif "data" in out:
                data = out["data"]
                texts.append(data.get("text/markdown") or data.get("text/plain", ""))
    return texts


def pngs(nb: Any) -> list[bytes]:
    return [base64.b64decode(out["data"]["image/png"]) for cell in nb.cells
            for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]


def errors(nb: Any) -> list[str]:
    return [t for t in output_texts(nb) if t.startswith("ERROR ")]


def table_rows(text: str, index_name: str) -> list[list[str]]:
    """Rows (tokens) of a DataFrame's plain-text view whose index is named `index_name`."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.split() == [index_name]:
            return [row.split() for row in lines[i + 1:] if row.strip()]
    return []


@dataclass
class SweepReport:
    """What the notebook showed for one sweep."""

    study: str
    texts: list[str] = field(default_factory=list)
    trials: dict[int, list[str]] = field(default_factory=dict)  # trial -> tokens after the trial number
    pareto: list[int] | None = None

    def ablation_index(self, param: str) -> list[str]:
        """The first column of the ablation table over `param` (its rows' order)."""
        for text in self.texts:
            rows = table_rows(text, param)
            if rows:
                return [r[0] for r in rows]
        return []


HEADING = re.compile(r"^#+ Sweep `([^`]+)`, study `([^`]+)`")
PARETO = re.compile(r"^Pareto front: trials ([\d, ]*)$", re.M)


def notebook_report(nb: Any) -> dict[str, SweepReport]:
    """Outputs grouped by the sweep headings the notebook writes, parsed."""
    report: dict[str, SweepReport] = {}
    current: SweepReport | None = None
    for text in output_texts(nb):
        heading = HEADING.match(text)
        if heading:
            current = report.setdefault(heading.group(1), SweepReport(study=heading.group(2)))
            continue
        if current is None:
            continue
        current.texts.append(text)
        if not current.trials:
            current.trials = {int(r[0]): r[1:] for r in table_rows(text, "trial") if r[0].isdigit()}
        front = PARETO.search(text)
        if front:
            current.pareto = [int(t) for t in re.findall(r"\d+", front.group(1))]
    return report


# ---------------------------------------------------------------- a synthetic sweep store


@dataclass
class FakeTrial:
    number: int
    state: str  # COMPLETE / PRUNED / FAIL
    params: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class FakeStudy:
    sweep: str
    study: str
    params: list[str]
    trials: list[FakeTrial]
    status: str = "FINISHED"
    experiment: str = "mammut_pl-sweeps"
    space: dict[str, list[str]] | None = None
    objectives: list[dict[str, str]] = field(default_factory=lambda: [
        {"metric": "pretrain/test/i2t_R1", "direction": "maximize"},
        {"metric": "vqa/test/vqa_accuracy", "direction": "maximize"}])


def _metrics(i2t: float | None, vqa: float | None, **extra: float) -> dict[str, float]:
    out: dict[str, float] = {}
    if i2t is not None:
        out |= {"pretrain/test/i2t_R1": i2t, "pretrain/test/i2t_R5": i2t + 20.25, "pretrain/test/i2t_R10": i2t + 35.5,
                "pretrain/test/t2i_R1": i2t - 1.5, "pretrain/test/t2i_R5": i2t + 18.75, "pretrain/test/mean_R": i2t + 15.0}
    if vqa is not None:
        out |= {"vqa/test/vqa_accuracy": vqa, "vqa/test/vqa_accuracy/yes/no": vqa + 12.5,
                "vqa/test/majority_baseline": 30.0}
    return out | extra


XA = "model.num_cross_attn"
SYNTHETIC = [
    # an older study of the same sweep: the notebook shows only the newest finished one
    FakeStudy("xattn", "xattn-old", [XA], [FakeTrial(0, "COMPLETE", {XA: "1"}, _metrics(50.0, 90.0))]),
    FakeStudy("xattn", "xattn-new", [XA], [
        FakeTrial(0, "COMPLETE", {XA: "12"}, _metrics(12.5, 41.0)),
        FakeTrial(1, "COMPLETE", {XA: "1"}, _metrics(8.0, 47.5)),
        FakeTrial(2, "PRUNED", {XA: "3"}, {"pretrain/val/i2t_R1": 2.0}),
        FakeTrial(3, "COMPLETE", {XA: "2"}, _metrics(10.0, 45.0)),
        FakeTrial(4, "COMPLETE", {XA: "6"}, _metrics(11.0, None)),  # VQA stage lost: no VQA metric
        FakeTrial(5, "COMPLETE", {XA: "2"}, _metrics(10.0, 43.0)),  # dominated by trial 3
        FakeTrial(6, "FAIL", {XA: "1"}),
        FakeTrial(7, "COMPLETE", {XA: "3"}, _metrics(12.5, 41.0)),  # ties trial 0: both on the front
        FakeTrial(8, "COMPLETE", {XA: "6"}, _metrics(9.0, 44.0)),  # dominated by trial 3
    ]),
    FakeStudy("cross_task", "cross_task-a", ["setting"], [
        FakeTrial(0, "COMPLETE", {"setting": "both"}, _metrics(9.5, 46.0)),
        FakeTrial(1, "COMPLETE", {"setting": "contrastive_only"}, _metrics(10.5, 35.0)),
        FakeTrial(2, "COMPLETE", {"setting": "captioning_only"}, _metrics(None, 44.0)),
        FakeTrial(3, "PRUNED", {"setting": "both"}),
    ], space={"setting": ["contrastive_only", "captioning_only", "both"]}),
    # still running: shown only when asked for by name
    FakeStudy("encoder", "encoder-a", ["model.encoder"], [
        FakeTrial(0, "COMPLETE", {"model.encoder": "vit_tiny"}, _metrics(5.0, 30.0))], status="RUNNING"),
    # another experiment: never shown
    FakeStudy("xattn", "xattn-elsewhere", [XA], [FakeTrial(0, "COMPLETE", {XA: "4"}, _metrics(1.0, 1.0))],
              experiment="other"),
]
STALE_RUN = ("xattn-new", 3)  # this trial also has an older, interrupted run that must be ignored


def shown_by_default(studies: list[FakeStudy] = SYNTHETIC) -> dict[str, FakeStudy]:
    """sweep -> the study the notebook shows with no sweep named: newest finished one per sweep."""
    shown: dict[str, FakeStudy] = {}
    for s in studies:  # in creation (= start time) order
        if s.experiment == "mammut_pl-sweeps" and s.status == "FINISHED":
            shown[s.sweep] = s
    return shown


def write_sweeps(tracking_uri: str, studies: list[FakeStudy], artifact_root: Path) -> None:
    """Write `studies` in the layout `mammut_pl.sweep` logs (parent / trial / stage runs)."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    clock = iter(range(1_700_000_000_000, 1_800_000_000_000, 1000))
    experiments: dict[str, str] = {}
    for s in studies:
        if s.experiment not in experiments:
            experiments[s.experiment] = client.create_experiment(
                s.experiment, artifact_location=(artifact_root / s.experiment).as_uri())
        exp = experiments[s.experiment]
        parent = client.create_run(exp, start_time=next(clock), run_name=s.study, tags={
            "mammut_pl.kind": "sweep", "mammut_pl.sweep": s.sweep, "mammut_pl.study": s.study,
            "mammut_pl.params": json.dumps(s.params), "mammut_pl.objectives": json.dumps(s.objectives),
            **({"mammut_pl.space": json.dumps(s.space)} if s.space else {})}).info.run_id
        for t in s.trials:
            tags = {"mlflow.parentRunId": parent, "mammut_pl.kind": "trial", "mammut_pl.sweep": s.sweep,
                    "optuna.trial": str(t.number)}
            if (s.study, t.number) == STALE_RUN:
                stale = client.create_run(exp, start_time=next(clock), tags={**tags, "optuna.state": "FAIL"})
                client.log_metric(stale.info.run_id, "pretrain/test/i2t_R1", 77.0)
                client.set_terminated(stale.info.run_id, "KILLED")
            run = client.create_run(exp, start_time=next(clock), run_name=f"trial-{t.number}",
                                    tags={**tags, "optuna.state": t.state}).info.run_id
            client.log_batch(run, metrics=[Metric(k, v, next(clock), 0) for k, v in t.metrics.items()],
                             params=[Param(k, v) for k, v in t.params.items()])
            if t.state == "COMPLETE":  # a stage run under the trial: its metrics must not leak in
                stage = client.create_run(exp, start_time=next(clock), tags={
                    "mlflow.parentRunId": run, "mammut_pl.kind": "stage", "optuna.trial": str(t.number)})
                client.log_metric(stage.info.run_id, "pretrain/test/i2t_R1", 99.0)
                client.set_terminated(stage.info.run_id)
            client.set_terminated(run, "FINISHED" if t.state != "FAIL" else "FAILED")
        if s.status != "RUNNING":
            client.set_terminated(parent, s.status)



_TEMPLATE: list[Path] = []


def synthetic_store(directory: Path) -> str:
    """A copy of the SYNTHETIC sweep store in `directory/mlflow.db`; its tracking URI.
    The store is written once per process (MLflow's sqlite set-up takes seconds), then copied."""
    if not _TEMPLATE:
        tmp = Path(tempfile.mkdtemp(prefix="mammut_sweeps_"))
        atexit.register(shutil.rmtree, tmp, True)
        write_sweeps(f"sqlite:///{tmp / 'template.db'}", SYNTHETIC, tmp / "artifacts")
        _TEMPLATE.append(tmp / "template.db")
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(_TEMPLATE[0], directory / "mlflow.db")
    return f"sqlite:///{directory / 'mlflow.db'}"


if __name__ == "__main__":  # python tests/helpers/notebook_utils.py --out DIR [--uri URI] [--sweep NAME]
    import argparse

    parser = argparse.ArgumentParser(description="Execute notebooks/ablations.ipynb; print the executed copy's path.")
    parser.add_argument("--out", type=Path, required=True, help="folder for the executed notebook and its figures")
    parser.add_argument("--uri", default=os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}")
    parser.add_argument("--sweep", default=None, help="sweep or study name(s), comma-separated; default: every finished sweep")
    parser.add_argument("--experiment", default="mammut_pl-sweeps")
    args = parser.parse_args()
    print(run_notebook(args.uri, args.sweep, args.out, experiment=args.experiment))
