"""notebooks/ablations.ipynb: committed without outputs; executed (nbclient) against a synthetic
sweep store it shows every trial, the ablation tables in order, the brute-force Pareto front and
its figures; with nothing to show it says so instead of failing."""

from __future__ import annotations

import math

import nbformat
import pytest
from tests.helpers.notebook_utils import (NOTEBOOK, PNG_MAGIC, XA, FakeStudy, errors, notebook_report, output_texts, pngs,
                            run_notebook, shown_by_default, synthetic_store)


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert nb.cells[0].cell_type == "code" and "parameters" in nb.cells[0].metadata.get("tags", [])
    for env in ("MAMMUT_TRACKING_URI", "MLFLOW_TRACKING_URI", "MAMMUT_SWEEP_EXPERIMENT", "MAMMUT_SWEEP"):
        assert env in nb.cells[0].source
    assert nb.metadata.kernelspec.name == "python3"


def expected_front(study: FakeStudy) -> list[int]:
    """Brute force over the completed trials with both objectives (both maximized here)."""
    (x, dx), (y, dy) = ((o["metric"], o["direction"]) for o in study.objectives)
    assert dx == dy == "maximize"
    pts = {t.number: (t.metrics[x], t.metrics[y]) for t in study.trials
           if t.state == "COMPLETE" and x in t.metrics and y in t.metrics}
    return sorted(n for n, (a, b) in pts.items()
                  if not any(c >= a and d >= b and (c > a or d > b) for c, d in pts.values()))


@pytest.mark.e2e
def test_notebook_shows_every_sweep(tmp_path):
    uri = synthetic_store(tmp_path / "store")
    nb = nbformat.read(run_notebook(uri, None, tmp_path / "out"), as_version=4)
    assert errors(nb) == []
    report = notebook_report(nb)
    expected = shown_by_default()
    assert set(report) == set(expected) == {"xattn", "cross_task"}  # not the running sweep, not the old study

    for sweep, fake in expected.items():
        shown = report[sweep]
        assert shown.study == fake.study
        # every trial, pruned and failed ones too: state, param value, each metric (2 decimals)
        assert sorted(shown.trials) == sorted(t.number for t in fake.trials)
        for t in fake.trials:
            state, *values = shown.trials[t.number]
            assert state == t.state
            assert values[:len(fake.params)] == [t.params[p] for p in fake.params]
            numbers = sorted(float(v) for v in values[len(fake.params):] if v != "NaN")
            assert len(numbers) == len(t.metrics)
            assert all(math.isclose(a, b, abs_tol=0.006) for a, b in zip(numbers, sorted(t.metrics.values())))
        assert shown.pareto == expected_front(fake), sweep

    # the ablation tables (and the plots' x axes): numbers sorted numerically, categories in the sweep's order
    assert report["xattn"].ablation_index(XA) == ["1", "2", "3", "6", "12"]
    assert report["cross_task"].ablation_index("setting") == ["contrastive_only", "captioning_only", "both"]

    images = pngs(nb)
    assert len(images) == 2 * len(expected) and all(png.startswith(PNG_MAGIC) for png in images)
    files = sorted(p.name for p in (tmp_path / "out" / "figures").glob("*.png"))
    assert files == sorted([f"xattn_{XA}.png", "xattn_pareto.png", "cross_task_setting.png", "cross_task_pareto.png"])


@pytest.mark.e2e
def test_notebook_without_sweeps_says_so(tmp_path):
    missing = tmp_path / "mlflow.db"
    nb = nbformat.read(run_notebook(f"sqlite:///{missing}", "xattn", tmp_path / "out"), as_version=4)
    assert errors(nb) == []
    text = "\n".join(output_texts(nb))
    assert "No sweep or study named 'xattn' in MLflow experiment 'mammut_pl-sweeps'" in text
    assert notebook_report(nb) == {} and pngs(nb) == []
    assert not missing.exists()  # reading created no store
