"""Sweep statistics: the mean's 95% Student t interval and the paired difference against the
reference point, checked against scipy.stats computed another way (ttest_1samp / ttest_rel's
confidence intervals) and against a hand-worked example; the interval table groups trials by
point and pairs them by seed."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mammut_pl.sweeps.stats import interval_markdown, interval_table, mean_ci, paired_difference


def test_mean_ci_by_hand():
    # [1, 2, 3]: mean 2, sd 1, sem 1/sqrt(3); t(0.975, df=2) = 4.302653 -> half width 2.484138
    mean, low, high, n = mean_ci([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3)
    assert low == pytest.approx(2 - 2.484138, abs=1e-6) and high == pytest.approx(2 + 2.484138, abs=1e-6)


@pytest.mark.parametrize("values", [[31.2, 33.0, 29.8], [10.0, 12.5, 11.0, 9.5, 14.0], [0.4, 0.41]])
def test_mean_ci_matches_scipy_ttest_1samp(values):
    ci = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    mean, low, high, n = mean_ci(values)
    assert mean == pytest.approx(np.mean(values)) and n == len(values)
    assert (low, high) == pytest.approx((ci.low, ci.high))


def test_mean_ci_edge_cases():
    assert mean_ci([5.0])[:3] == (5.0, *[pytest.approx(math.nan, nan_ok=True)] * 2)
    assert math.isnan(mean_ci([5.0])[1]) and mean_ci([5.0])[3] == 1
    assert mean_ci([])[3] == 0 and math.isnan(mean_ci([])[0])
    assert mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0, 3)  # no spread: the interval is the point
    assert mean_ci([1.0, float("nan"), 3.0])[3] == 2  # NaN (a metric a seed lacks) left out


def test_paired_difference_matches_scipy_ttest_rel():
    a = {0: 31.0, 1: 28.5, 2: 35.0, 3: 30.0}
    b = {0: 29.0, 1: 27.0, 2: 33.5, 3: 29.5, 9: 80.0}  # seed 9 has no partner: left out
    seeds = [0, 1, 2, 3]
    res = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
    ci = res.confidence_interval(0.95)
    mean, low, high, n = paired_difference(a, b)
    assert n == 4 and mean == pytest.approx(np.mean([a[s] - b[s] for s in seeds]))
    assert (low, high) == pytest.approx((ci.low, ci.high))
    assert low > 0  # this difference is consistent across seeds: the interval excludes 0


def _trials():
    # point x in {1, 2}, seeds 0..2; x=2 (the reference) beats x=1 by 2 +- small on metric m, noise on r
    rows = []
    for seed, (m1, m2, r1, r2) in enumerate([(10.0, 12.1, 5.0, 7.0), (11.0, 12.9, 6.0, 4.0), (9.5, 11.6, 5.5, 6.0)]):
        rows += [{"state": "COMPLETE", "x": 1, "seed": seed, "m": m1, "r": r1},
                 {"state": "COMPLETE", "x": 2, "seed": seed, "m": m2, "r": r2}]
    rows.append({"state": "FAIL", "x": 1, "seed": 3, "m": 99.0, "r": 99.0})  # failed: left out
    return pd.DataFrame(rows)


def test_interval_table_groups_by_point_and_pairs_by_seed():
    table = interval_table(_trials(), ["x"], ["m", "r"], reference={"x": 2})
    assert list(zip(table["x"], table["metric"])) == [(1, "m"), (1, "r"), (2, "m"), (2, "r")]
    row = table[(table.x == 1) & (table.metric == "m")].iloc[0]
    ci = stats.ttest_1samp([10.0, 11.0, 9.5], 0).confidence_interval()
    assert (row["mean"], row["ci_low"], row["ci_high"], row["n"]) == pytest.approx((np.mean([10.0, 11.0, 9.5]), ci.low, ci.high, 3))
    diff = stats.ttest_rel([10.0, 11.0, 9.5], [12.1, 12.9, 11.6]).confidence_interval()
    assert (row["diff_low"], row["diff_high"]) == pytest.approx((diff.low, diff.high))
    assert row["diff"] == pytest.approx(np.mean([10.0 - 12.1, 11.0 - 12.9, 9.5 - 11.6])) and bool(row["excludes_0"]) and row["n_pairs"] == 3
    noisy = table[(table.x == 1) & (table.metric == "r")].iloc[0]
    assert not noisy["excludes_0"]  # +-1.5 between seeds: not distinguishable
    ref = table[(table.x == 2) & (table.metric == "m")].iloc[0]
    assert ref["diff"] == 0.0 and not ref["excludes_0"]
    md = interval_markdown(table, ["x"], {"x": 2})
    assert "| 1 | m | 10.17 [" in md and "reference |" in md and " *" in md.splitlines()[2]
    with pytest.raises(ValueError, match="no value for"):
        interval_table(_trials(), ["x"], ["m"], reference={"y": 1})
