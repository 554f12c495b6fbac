"""mammut_pl.sweeps.ablations / .plots: Pareto front vs a brute-force dominance check, param
order, ablation tables, plots, and reading a synthetic sweep store in the MLflow layout sweeps write."""

from __future__ import annotations

import math
import warnings
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mammut_pl.sweeps import ablations, plots
from mammut_pl.sweeps.ablations import Objective, ablation_table, param_order, pareto_front, typed
from tests.helpers.notebook_utils import PNG_MAGIC, shown_by_default, synthetic_store

# ---------------------------------------------------------------- Pareto front


def brute_force_front(points: list[tuple[float, ...]], directions: list[str]) -> list[bool]:
    """O(n^2): a point is on the front iff it has every value and no other point is at least as
    good everywhere and strictly better somewhere."""

    def as_good(a: float, b: float, d: str) -> bool:
        return a >= b if d == "maximize" else a <= b

    def better(a: float, b: float, d: str) -> bool:
        return a > b if d == "maximize" else a < b

    complete = [all(not math.isnan(v) for v in p) for p in points]
    front = []
    for i, p in enumerate(points):
        dominated = any(
            complete[j] and j != i
            and all(as_good(q[k], p[k], d) for k, d in enumerate(directions))
            and any(better(q[k], p[k], d) for k, d in enumerate(directions))
            for j, q in enumerate(points))
        front.append(complete[i] and not dominated)
    return front


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_pareto_front_matches_brute_force(data):
    k = data.draw(st.integers(1, 3))
    directions = data.draw(st.lists(st.sampled_from(["maximize", "minimize"]), min_size=k, max_size=k))
    value = st.one_of(st.integers(0, 4).map(float), st.just(float("nan")), st.floats(-1e3, 1e3))
    points = data.draw(st.lists(st.tuples(*[value] * k), max_size=25))
    names = [f"m{i}" for i in range(k)]
    df = pd.DataFrame(points, columns=names, dtype=float, index=np.arange(len(points)) * 3)
    mask = pareto_front(df, [Objective(n, d) for n, d in zip(names, directions)])
    assert mask.dtype == bool and mask.shape == (len(points),)
    assert mask.tolist() == brute_force_front(points, directions)


def test_pareto_front_by_hand():
    df = pd.DataFrame({"r": [10, 8, 10, 12, 12, 9, np.nan], "v": [45, 47, 43, 41, 41, 44, 99]})
    both_max = [{"metric": "r", "direction": "maximize"}, {"metric": "v", "direction": "maximize"}]
    # ties (rows 3 and 4) are both on the front; NaN (row 6) never is
    assert pareto_front(df, both_max).tolist() == [True, True, False, True, True, False, False]
    # maximizing r, minimizing v: (12, 41) is at least as good as every row, so only its two copies
    assert pareto_front(df, ["r", Objective("v", "minimize")]).tolist() == [False] * 3 + [True, True] + [False] * 2
    assert pareto_front(df, ["missing", "v"]).tolist() == [False] * 7
    assert pareto_front(df.iloc[:0], both_max).tolist() == []
    with pytest.raises(ValueError, match="direction"):
        pareto_front(df, [{"metric": "r", "direction": "up"}])
    with pytest.raises(ValueError, match="at least one"):
        pareto_front(df, [])


# ---------------------------------------------------------------- params, tables


def test_params_typed_and_ordered():
    numbers = typed(pd.Series(["12", "1", "3", None, "2", "10"]))
    assert numbers.dtype == "Int64"
    assert param_order(numbers) == [1, 2, 3, 10, 12]  # numerically, not "1" < "10" < "12" < "2"
    weights = typed(pd.Series(["0.5", "2", "1e-1"]))
    assert weights.dtype == float and param_order(weights) == [0.1, 0.5, 2.0]
    settings_ = typed(pd.Series(["both", "contrastive_only", "both", "captioning_only"]))
    assert not pd.api.types.is_numeric_dtype(settings_)
    assert param_order(settings_) == ["both", "contrastive_only", "captioning_only"]  # first appearance
    space = ["contrastive_only", "captioning_only", "both", "never_run"]
    assert param_order(settings_, space) == ["contrastive_only", "captioning_only", "both"]
    assert param_order(settings_, ["both"]) == ["both", "contrastive_only", "captioning_only"]
    assert typed(pd.Series(["1", "vit_b"])).tolist() == ["1", "vit_b"]  # mixed: stays text


def test_ablation_table_means_completed_trials_in_order():
    trials = pd.DataFrame({
        "state": ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE", "FAIL"],
        "n": [12, 2, 3, 2, 1],
        "acc": [40.0, 44.0, 99.0, 46.0, np.nan],
        "val": [np.nan, np.nan, 1.0, np.nan, np.nan],  # only a pruned trial has it: dropped
    }, index=pd.Index(range(5), name="trial"))
    table = ablation_table(trials, ["n"], ["acc", "val"])
    assert table.index.tolist() == [2, 12] and table.index.names == ["n"]
    assert table["trials"].tolist() == [2, 1]
    assert table["acc"].tolist() == [45.0, 40.0]
    assert "val" not in table
    assert ablation_table(trials, ["n"], ["acc"], {"n": [12, 2]}).index.tolist() == [12, 2]


def test_metric_columns_order():
    cols = ["run_id", "state", "w", "train/loss", "pretrain/test/i2t_R10", "vqa/test/vqa_accuracy",
            "pretrain/test/i2t_R5", "pretrain/test/i2t_R1"]
    df = pd.DataFrame([[f"r{i}" if c == "run_id" else "COMPLETE" if c == "state" else 1.0 for c in cols]
                       for i in range(2)], columns=cols)
    got = ablations.metric_columns(df, [Objective("vqa/test/vqa_accuracy")], params=["w"])
    assert got == ["vqa/test/vqa_accuracy", "pretrain/test/i2t_R1", "pretrain/test/i2t_R5",
                   "pretrain/test/i2t_R10", "train/loss"]


# ---------------------------------------------------------------- plots


def _trials() -> pd.DataFrame:
    return pd.DataFrame({
        "state": ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE", "COMPLETE"],
        "n": [12, 2, 3, 2, 6],
        "r": [12.5, 10.0, 50.0, 10.0, 11.0],
        "v": [41.0, 45.0, 50.0, 43.0, np.nan],
    }, index=pd.Index(range(5), name="trial"))


def test_plot_ablation_orders_x_and_leaves_out_pruned():
    fig = plots.plot_ablation(_trials(), "n", ["r", Objective("v")], baselines={"v": 30.0})
    ax_r, ax_v = fig.axes
    assert [t.get_text() for t in ax_r.get_xticklabels()] == ["2", "6", "12"]  # the pruned 3 is not there
    assert len(ax_r.collections[0].get_offsets()) == 4  # completed trials with r
    assert len(ax_v.collections[0].get_offsets()) == 3  # trial 4 has no v
    means = ax_r.lines[0]
    assert list(means.get_ydata()) == [10.0, 11.0, 12.5] and means.get_linestyle() == "-"
    assert any(list(line.get_ydata()) == [30.0, 30.0] for line in ax_v.lines)  # the baseline
    assert plots.figure_png(fig).startswith(PNG_MAGIC)


def test_plot_ablation_categories_unjoined_in_given_order():
    trials = _trials().assign(n=["b", "a", "c", "a", "b"])
    fig = plots.plot_ablation(trials, "n", ["r"], order=["a", "b", "c"])
    (ax,) = [a for a in fig.axes if a.get_visible()]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert list(ax.lines[0].get_ydata()) == [10.0, 11.75] and ax.lines[0].get_linestyle() == "None"


def test_nothing_completed_still_draws():
    trials = _trials().assign(state="PRUNED")
    assert ablation_table(trials, ["n"], ["r"]).empty
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plots.plot_ablation(trials, "n", ["r", "v"])
    assert "no completed trial has this metric" in [t.get_text() for t in fig.axes[0].texts]
    assert plots.figure_png(fig).startswith(PNG_MAGIC)


def test_plot_pareto_highlights_the_front():
    trials = _trials()[lambda d: d.state == "COMPLETE"]
    fig = plots.plot_pareto(trials, ["r", "v"], label="n")
    (ax,) = fig.axes
    dominated, front = (len(c.get_offsets()) for c in ax.collections)
    assert (dominated, front) == (1, 2)  # 10/43 is dominated by 10/45; 11/NaN is not drawn
    assert {t.get_text() for t in ax.texts} == {"#0 12", "#1 2", "#3 2"}
    tie = pd.concat([trials, trials.loc[[0]].rename(index={0: 9}).assign(n=7)])
    fig = plots.plot_pareto(tie, ["r", "v"], label="n")
    assert "#0 12, #9 7" in {t.get_text() for t in fig.axes[0].texts}  # one label per point
    assert plots.figure_png(fig).startswith(PNG_MAGIC)


# ---------------------------------------------------------------- reading MLflow


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return synthetic_store(tmp_path_factory.mktemp("sweeps"))


def test_load_studies_newest_finished_study_per_sweep(store):
    studies = ablations.load_studies(store)
    expected = shown_by_default()
    assert [s.name for s in studies] == [s.study for s in expected.values()]  # oldest first
    for study in studies:
        fake = expected[study.sweep]
        assert study.finished and study.params == fake.params
        assert [vars(o) for o in study.objectives] == fake.objectives
        assert study.trials.index.tolist() == [t.number for t in fake.trials]
        for t in fake.trials:
            row = study.trials.loc[t.number]
            assert row["state"] == t.state
            assert {p: str(row[p]) for p in fake.params} == t.params
            got = {m: row[m] for m in study.metrics if not pd.isna(row[m])}
            assert got == t.metrics  # the stale run and the stage runs (i2t 77 / 99) do not leak in
    xattn = next(s for s in studies if s.sweep == "xattn")
    assert xattn.trials["model.num_cross_attn"].dtype == "int64"
    assert xattn.order("model.num_cross_attn") == [1, 2, 3, 6, 12]
    cross = next(s for s in studies if s.sweep == "cross_task")
    assert cross.order("setting") == ["contrastive_only", "captioning_only", "both"]  # the sweep's order


def test_load_studies_by_name(store):
    assert [s.name for s in ablations.load_studies(store, sweep="encoder")] == ["encoder-a"]  # running
    assert [s.name for s in ablations.load_studies(store, sweep="xattn-old, cross_task")] == ["xattn-old", "cross_task-a"]
    assert ablations.load_studies(store, sweep="nope") == []
    other = ablations.load_studies(store, experiment="other")
    assert [(s.name, s.trials.index.tolist()) for s in other] == [("xattn-elsewhere", [0])]
    assert ablations.load_studies(store, experiment="no-such-experiment") == []


def test_load_studies_without_a_store_creates_none(tmp_path):
    assert ablations.load_studies(f"sqlite:///{tmp_path / 'mlflow.db'}") == []
    assert not (tmp_path / "mlflow.db").exists()
    assert ablations.load_sweeps(f"sqlite:///{tmp_path / 'mlflow.db'}").empty


def test_load_sweeps_one_frame(store):
    df = ablations.load_sweeps(store)
    expected = shown_by_default()
    assert list(df.columns[:5]) == ["sweep", "study", "trial", "run_id", "state"]
    assert len(df) == sum(len(s.trials) for s in expected.values())
    assert set(df.attrs["studies"]) == {s.study for s in expected.values()}
    assert df.attrs["studies"]["xattn-new"]["params"] == ["model.num_cross_attn"]
    assert df.run_id.is_unique



def test_pareto_of_means_with_intervals():
    from scipy import stats

    from mammut_pl.sweeps.stats import interval_table

    rows = [{"state": "COMPLETE", "x": x, "seed": s, "r": r, "v": v}
            for x, s, r, v in [(1, 0, 10.0, 40.0), (1, 1, 12.0, 42.0), (2, 0, 11.0, 45.0), (2, 1, 13.0, 47.0),
                               (3, 0, 9.0, 30.0), (3, 1, 9.5, 31.0)]]
    table = interval_table(pd.DataFrame(rows), ["x"], ["r", "v"], reference={"x": 1})
    means = plots.point_means(table, ["x"], ["r", "v"])
    assert list(means["x"]) == [1, 2, 3] and list(means["r"]) == [11.0, 12.0, 9.25]
    ci = stats.ttest_1samp([10.0, 12.0], 0).confidence_interval()
    assert (means["r low"][0], means["r high"][0]) == pytest.approx((ci.low, ci.high))
    fig = plots.plot_pareto_intervals(table, ["x"], ["r", "v"], reference={"x": 1})
    (ax,) = fig.axes
    # point 2 dominates 1 and 3 on the means: the front is point 2 alone
    texts = {t.get_text() for t in ax.texts}
    assert texts == {"1 (reference)", "2", "3"}
    assert plots.figure_png(fig).startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="share a name"):
        interval_table(pd.DataFrame(rows).rename(columns={"x": "n"}), ["n"], ["r"])
