"""Seeds and confidence intervals for sweep results (issue 21).

A sweep runs every grid point once per seed. Per point and metric we report the mean over
seeds, its 95% confidence interval (Student t with n-1 degrees of freedom: few seeds, unknown
variance) and n; and, against the sweep's reference point (the paper's default), the paired
difference: seed s of a point is compared with seed s of the reference (same data order and
initialisation), whose mean and t interval are those of `scipy.stats.ttest_rel`. An interval
that excludes 0 is a difference the seeds can tell apart; one that contains 0 is not.

Used by the sweep (results table, MLflow parent run) and the ablation notebook alike.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
SEED = "seed"  # the column / trial param that holds a trial's seed
STAT_COLUMNS = ("metric", "mean", "ci_low", "ci_high", "n", "diff", "diff_low", "diff_high", "n_pairs", "excludes_0")


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the finite `values`: the Student t interval of the mean.
    n < 2 has no interval (NaN bounds); n = 0 no mean either."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    sem = float(stats.sem(x))
    if sem == 0.0:  # identical values: t.interval gives NaN for scale 0; the interval is the point
        return mean, mean, mean, n
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=sem)
    return mean, float(low), float(high), n


def paired_difference(a: Mapping[Any, float], b: Mapping[Any, float],
                      confidence: float = CONFIDENCE) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of a[s] - b[s] over the keys (seeds) both have finite values for."""
    common = [s for s in a if s in b and _finite(a[s]) and _finite(b[s])]
    return mean_ci([a[s] - b[s] for s in common], confidence)


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float, np.floating)) and math.isfinite(v)


def point_label(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def interval_table(trials: pd.DataFrame, params: Sequence[str], metrics: Sequence[str],
                   reference: Mapping[str, Any] | None = None, seed: str = SEED,
                   confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per (point, metric) over the completed `trials` (columns: `params`, `seed`, the
    metrics; a `state` column, if any, selects COMPLETE): mean, ci_low, ci_high, n; with a
    `reference` point also diff (mean of the paired differences point - reference), diff_low,
    diff_high, n_pairs and excludes_0. Rows in the order points first appear in `trials`.
    Without a `seed` column every trial counts as its own seed (no pairing: n_pairs 0)."""
    done = trials[trials["state"] == "COMPLETE"] if "state" in trials else trials
    params = list(params)
    clash = set(params) & set(STAT_COLUMNS)
    if clash:
        raise ValueError(f"swept parameter(s) {sorted(clash)} share a name with the table's columns {STAT_COLUMNS}")
    ref_rows = None
    if reference:
        missing = set(params) - set(reference)
        if missing:
            raise ValueError(f"reference {dict(reference)} names no value for {sorted(missing)}")
        ref_rows = done[np.logical_and.reduce([done[p].astype(str) == str(reference[p]) for p in params])]
    rows = []
    groups = done.groupby(params, sort=False, dropna=False) if params else [((), done)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        point = dict(zip(params, key))
        for metric in metrics:
            if metric not in group:
                continue
            mean, low, high, n = mean_ci(pd.to_numeric(group[metric], errors="coerce").tolist(), confidence)
            if n == 0:
                continue
            row = {**point, "metric": metric, "mean": mean, "ci_low": low, "ci_high": high, "n": n}
            if ref_rows is not None:
                row.update(_paired(group, ref_rows, metric, seed, confidence))
            rows.append(row)
    columns = [*params, "metric", "mean", "ci_low", "ci_high", "n"]
    if ref_rows is not None:
        columns += ["diff", "diff_low", "diff_high", "n_pairs", "excludes_0"]
    return pd.DataFrame(rows, columns=columns)


def _paired(group: pd.DataFrame, ref: pd.DataFrame, metric: str, seed: str, confidence: float) -> dict[str, Any]:
    if seed not in group or metric not in ref:
        return {"diff": math.nan, "diff_low": math.nan, "diff_high": math.nan, "n_pairs": 0, "excludes_0": False}
    by_seed = lambda df: dict(zip(df[seed].tolist(), pd.to_numeric(df[metric], errors="coerce").tolist()))  # noqa: E731
    diff, low, high, n = paired_difference(by_seed(group), by_seed(ref), confidence)
    excludes = bool(n >= 2 and math.isfinite(low) and (low > 0 or high < 0))
    return {"diff": diff, "diff_low": low, "diff_high": high, "n_pairs": n, "excludes_0": excludes}


def interval_markdown(table: pd.DataFrame, params: Sequence[str], reference: Mapping[str, Any] | None = None) -> str:
    """The interval table as markdown: `mean [low, high]` per metric, n, and the paired
    difference against the reference (`*` where its interval excludes 0)."""
    def num(v: float) -> str:
        return "" if v is None or not math.isfinite(v) else f"{v:.2f}"

    def interval(m: float, lo: float, hi: float) -> str:
        return f"{num(m)} [{num(lo)}, {num(hi)}]" if math.isfinite(lo) else num(m)

    head = [*params, "metric", "mean [95% CI]", "n"]
    if reference:
        head.append(f"diff vs reference ({point_label(reference)}) [95% CI]")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in table.to_dict("records"):
        cells = [str(r[p]) for p in params] + [r["metric"], interval(r["mean"], r["ci_low"], r["ci_high"]), str(r["n"])]
        if reference:
            is_ref = all(str(r[p]) == str(reference[p]) for p in params)
            cells.append("reference" if is_ref else
                         interval(r["diff"], r["diff_low"], r["diff_high"]) + (" *" if r["excludes_0"] else ""))
        lines.append("| " + " | ".join(cells) + " |")
    if reference:
        lines.append(f"\n`*`: the paired {CONFIDENCE:.0%} interval of the difference excludes 0 (paired by seed).")
    return "\n".join(lines)
