"""The ablation plots: metric vs swept parameter with seed intervals, and Pareto fronts of two
objectives (over trials, or over the points' means with their intervals). Figures without pyplot:
no display needed; `figure_png` turns one into PNG bytes."""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mammut_pl.sweeps.ablations import COMPLETE, Objective, as_objectives, param_order, pareto_front
from mammut_pl.sweeps.stats import mean_ci


def _arrow(direction: str) -> str:
    return "↑" if direction == "maximize" else "↓"


def plot_ablation(trials: pd.DataFrame, param: str, metrics: Sequence[str | Objective], *,
                  order: Sequence[Any] | None = None, title: str | None = None,
                  baselines: Mapping[str, float] | None = None, reference: Any = None) -> Figure:
    """One panel per metric vs the swept `param` (a grid, 3 panels a row, in the order given:
    objectives first): each completed trial (seed) a dot, the mean per value with its 95% t
    interval over the seeds as error bars. The x axis is the values in `order` (default
    `param_order`), evenly spaced; pruned and failed trials are left out. `baselines` draws a
    dashed line in a metric's panel; `reference` (a value of `param`) marks the sweep's
    reference point (a shaded column and a dotted line at its mean)."""
    objs = as_objectives(metrics)
    done = trials[trials["state"] == COMPLETE] if "state" in trials else trials
    order = list(order) if order is not None else param_order(done[param])
    pos = {v: i for i, v in enumerate(order)}
    numeric = pd.api.types.is_numeric_dtype(done[param])
    ncols = min(3, max(1, len(objs)))
    nrows = -(-max(1, len(objs)) // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, obj in zip(axes, objs):
        pts = done[[param, obj.metric]].dropna() if obj.metric in done else pd.DataFrame(columns=[param, obj.metric])
        pts = pts[pts[param].isin(pos)]
        xs = pts[param].map(pos).to_numpy(float)
        ax.scatter(xs, pts[obj.metric].to_numpy(float), alpha=0.45, color="tab:blue", label="trial")
        per_value = pts.groupby(param, sort=False)[obj.metric].agg(list)
        per_value = per_value.reindex([v for v in order if v in per_value.index])
        ci = np.array([mean_ci(v)[:3] for v in per_value], dtype=float).reshape(-1, 3)  # (values, mean/low/high)
        err = np.nan_to_num(np.abs(ci[:, 1:].T - ci[:, 0]))  # (2, values); no interval (n < 2): no bar
        style = "o-" if numeric else "D"  # no line between categories
        ax.errorbar([pos[v] for v in per_value.index], ci[:, 0], yerr=err, fmt=style, color="tab:blue",
                    capsize=4, label="mean, 95% CI")
        if reference is not None and reference in per_value.index:
            ax.axvspan(pos[reference] - 0.4, pos[reference] + 0.4, color="tab:orange", alpha=0.15,
                       label=f"reference {reference}")
            ax.axhline(ci[list(per_value.index).index(reference), 0], ls=":", color="tab:orange")
        if baselines and obj.metric in baselines:
            ax.axhline(baselines[obj.metric], ls="--", color="gray", label="baseline")
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(order)), [str(v) for v in order], rotation=20 if len(order) > 5 else 0)
        ax.set_xlim(-0.5, max(len(order), 1) - 0.5)
        ax.set_xlabel(param)
        ax.set_title(f"{obj.metric} {_arrow(obj.direction)}", fontsize=10)
        ax.grid(alpha=0.3)
        if len(pts) == 0:
            ax.text(0.5, 0.5, "no completed trial has this metric", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
    axes[0].legend(fontsize=8)
    for ax in axes[len(objs):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


def plot_pareto(trials: pd.DataFrame, objectives: Sequence[Objective | Mapping[str, str] | str],
                mask: np.ndarray | None = None, *, label: str | None = None, title: str | None = None) -> Figure:
    """Scatter of the first two objectives over `trials` (completed ones), the non-dominated trials
    (`mask`, default `pareto_front`) highlighted and joined; each point annotated with its trial
    number and, if given, its value of the column `label`."""
    x, y = as_objectives(objectives)[:2]
    mask = pareto_front(trials, [x, y]) if mask is None else np.asarray(mask, dtype=bool)
    trials = trials.reindex(columns=list(dict.fromkeys([x.metric, y.metric, *trials.columns])))
    fig = Figure(figsize=(5.6, 4.4), layout="constrained")
    ax = fig.subplots()
    ok = trials[[x.metric, y.metric]].notna().all(axis=1).to_numpy()
    rest, front = trials[ok & ~mask], trials[mask].sort_values(x.metric)
    ax.scatter(rest[x.metric], rest[y.metric], color="tab:gray", alpha=0.7, label="dominated")
    ax.scatter(front[x.metric], front[y.metric], color="tab:red", s=60, zorder=3, label="Pareto front")
    ax.plot(front[x.metric], front[y.metric], color="tab:red", alpha=0.5)
    names: dict[tuple[float, float], list[str]] = {}  # trials at the same point share one label
    for trial, row in trials[ok].iterrows():
        names.setdefault((row[x.metric], row[y.metric]), []).append(
            f"#{trial}" + (f" {row[label]}" if label and label in row else ""))
    for xy, texts in names.items():
        ax.annotate(", ".join(texts), xy, textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"{x.metric} {_arrow(x.direction)}")
    ax.set_ylabel(f"{y.metric} {_arrow(y.direction)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title=f"labels: #trial {label}" if label else None, title_fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def point_means(intervals: pd.DataFrame, params: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """The long interval table (`Study.intervals`) as one row per point: `{metric}` (the mean),
    `{metric} low`, `{metric} high` and `{metric} n` for each of `metrics`; points in table order."""
    rows: dict[tuple, dict[str, Any]] = {}
    for r in intervals.to_dict("records"):
        if r["metric"] in metrics:
            m = r["metric"]
            row = rows.setdefault(tuple(r[p] for p in params), {p: r[p] for p in params})
            row.update({m: r["mean"], f"{m} low": r["ci_low"], f"{m} high": r["ci_high"], f"{m} n": r["n"]})
    columns = [*params, *[f"{m}{suffix}" for m in metrics for suffix in ("", " low", " high", " n")]]
    return pd.DataFrame(list(rows.values()), columns=columns)


def plot_pareto_intervals(intervals: pd.DataFrame, params: Sequence[str],
                          objectives: Sequence[Objective | Mapping[str, str] | str], *,
                          reference: Mapping[str, Any] | None = None, title: str | None = None) -> Figure:
    """The first two objectives' means over seeds per point, with their 95% intervals as error
    bars in both directions; the points whose means no other point's means dominate in red (a
    front through intervals that overlap is no claim: read the bars); the reference point boxed."""
    x, y = as_objectives(objectives)[:2]
    pts = point_means(intervals, params, [x.metric, y.metric]).dropna(subset=[x.metric, y.metric])
    mask = pareto_front(pts, [x, y]) if len(pts) else np.zeros(0, dtype=bool)
    fig = Figure(figsize=(6.0, 4.6), layout="constrained")
    ax = fig.subplots()

    def err(df: pd.DataFrame, m: str) -> np.ndarray:
        return np.nan_to_num(np.abs(df[[f"{m} low", f"{m} high"]].to_numpy(float).T - df[m].to_numpy(float)))

    for part, color, name in ((pts[~mask], "tab:gray", "dominated (means)"), (pts[mask], "tab:red", "front of the means")):
        ax.errorbar(part[x.metric], part[y.metric], xerr=err(part, x.metric), yerr=err(part, y.metric),
                    fmt="o", color=color, capsize=3, label=name)
    front = pts[mask].sort_values(x.metric)
    ax.plot(front[x.metric], front[y.metric], color="tab:red", alpha=0.4)
    for row in pts.to_dict("records"):
        point = {p: row[p] for p in params}
        is_ref = bool(reference) and all(str(point[p]) == str(reference[p]) for p in params)
        label = ", ".join(str(v) for v in point.values()) + (" (reference)" if is_ref else "")
        ax.annotate(label, (row[x.metric], row[y.metric]), textcoords="offset points", xytext=(5, 5), fontsize=8,
                    bbox={"boxstyle": "round", "fc": "none", "ec": "tab:orange"} if is_ref else None)
    ax.set_xlabel(f"{x.metric} {_arrow(x.direction)}")
    ax.set_ylabel(f"{y.metric} {_arrow(y.direction)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="mean over seeds, 95% CI", title_fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (Agg; works with any matplotlib backend, or none)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
