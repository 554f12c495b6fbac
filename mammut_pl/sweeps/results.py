"""A sweep's results: the trials table, the per-point intervals (`stats`), the plots, the
scaling fits, and their place in the MLflow parent run (see mammut_pl.sweep)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from mammut_pl.sweeps.stats import SEED, interval_markdown, interval_table

if TYPE_CHECKING:
    from mammut_pl.sweeps.spec import Sweep


def metric_key(name: str) -> str:
    return name.replace("@", "")  # MLflow forbids '@' (R@1 -> R1), as Lightning's logger does


def results_table(study: optuna.Study, sweep: Sweep):
    """One row per trial: number, state, the swept parameters and every kept metric."""
    import pandas as pd

    columns = [o.metric for o in sweep.objectives] + [m for m in sweep.record if m not in {o.metric for o in sweep.objectives}]
    rows = []
    for t in sorted(study.trials, key=lambda t: t.number):
        metrics = t.user_attrs.get("metrics", {})
        row = {"trial": t.number, "state": t.state.name, **{p.name: t.params.get(p.name) for p in sweep.params}}
        if sweep.seeds:
            row[SEED] = t.params.get(SEED)
        row.update({c: metrics.get(c) for c in columns})
        if t.user_attrs.get("retry_of") is not None:
            row["note"] = f"retry of trial {t.user_attrs['retry_of']}"
        elif t.user_attrs.get("error"):
            row["note"] = str(t.user_attrs["error"])[:60]
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(df) -> str:
    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def result_metrics(sweep: Sweep) -> list[str]:
    """The objectives first, then the recorded metrics."""
    first = [o.metric for o in sweep.objectives]
    return first + [m for m in sweep.record if m not in first]


def point_column(df, sweep: Sweep) -> tuple[str, Any]:
    """The x axis of the plots: the one swept parameter, or all of them joined into a `point`
    column (several parameters); and the reference point's value on it."""
    names = [p.name for p in sweep.params]
    if len(names) == 1:
        return names[0], sweep.reference.get(names[0])
    df["point"] = [", ".join(str(r[n]) for n in names) for r in df[names].to_dict("records")]
    ref = ", ".join(str(sweep.reference[n]) for n in names) if sweep.reference else None
    return "point", ref


def plot_results(df, sweep: Sweep, out: Path) -> list[Path]:
    """ablation.png: a grid of panels, the objectives first, each metric's mean over seeds with
    its 95% interval per point, the reference marked; pareto.png (two objectives): the points'
    means with their intervals in both objectives."""
    from mammut_pl.sweeps import plots
    from mammut_pl.sweeps.ablations import Objective

    df = df.copy()
    x, ref = point_column(df, sweep)
    order = [", ".join(str(v) for v in vs) for vs in itertools.product(*(p.grid for p in sweep.params))] \
        if x == "point" else (sweep.params[0].grid or None)
    metrics = [Objective(o.metric, o.direction) for o in sweep.objectives] + \
        [m for m in result_metrics(sweep)[len(sweep.objectives):]]
    done = df[df["state"] == "COMPLETE"]
    seeds = f", {len(sweep.seeds)} seeds" if sweep.seeds else ""
    fig = plots.plot_ablation(df, x, metrics, order=[v for v in order if v in set(done[x])] if order else None,
                                  reference=ref, title=f"sweep {sweep.name}{seeds}: {sweep.description}"[:120])
    paths = [out / "ablation.png"]
    paths[0].write_bytes(plots.figure_png(fig))
    if len(sweep.objectives) >= 2:
        table = interval_table(done, [x], [o.metric for o in sweep.objectives])
        fig = plots.plot_pareto_intervals(table, [x], metrics[:2], reference={x: ref} if ref is not None else None,
                                              title=f"sweep {sweep.name}: means{seeds}")
        paths.append(out / "pareto.png")
        paths[1].write_bytes(plots.figure_png(fig))
    return paths


def log_intervals(client: Any, run_id: str, table, sweep: Sweep) -> None:
    """The aggregate table as parent-run metrics: `<param>_<value>/<metric>/mean|ci_low|ci_high|n`
    (MLflow names allow no "=")
    (and `/diff|diff_low|diff_high` against the reference)."""
    names = [p.name for p in sweep.params]
    for r in table.to_dict("records"):
        point = "_".join(f"{n.split('.')[-1]}={_plain(r[n])}" for n in names)
        for key in ("mean", "ci_low", "ci_high", "n", "diff", "diff_low", "diff_high"):
            v = r.get(key)
            if v is not None and math.isfinite(float(v)):
                client.log_metric(run_id, safe_metric_key(f"{point}/{metric_key(r['metric'])}/{key}"), float(v))


def _plain(value: Any) -> Any:
    """A grid value as written in the sweep file: pandas turns an int column holding a NaN into
    floats (2 -> 2.0), which would name the point `num_cross_attn=2.0`."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def safe_metric_key(name: str) -> str:
    """MLflow metric names allow alphanumerics, _ - . space : / only."""
    return "".join(c if c.isalnum() or c in "_-. :/" else "_" for c in name)


def summarise(study: optuna.Study, sweep: Sweep, out: Path, client: Any, parent_run_id: str, seconds: float,
              finished: bool) -> str:
    """The results files, printed table and MLflow parent run (artifacts, the aggregate table as
    metrics, the scaling fits); the parent run ends FINISHED once every trial has run (`finished`)."""
    df = results_table(study, sweep)
    md = markdown_table(df)
    params = [p.name for p in sweep.params]
    intervals = interval_table(df, params, result_metrics(sweep), sweep.reference or None)
    seeds = f"seeds {sweep.seeds}" if sweep.seeds else "one run per point (no seeds: no intervals)"
    intervals_md = interval_markdown(intervals, params, sweep.reference or None)
    (out / "results.md").write_text(f"# sweep {sweep.name}\n\n{sweep.description}\n\n"
                                    f"## Per point: mean over seeds, 95% CI (Student t), n ({seeds})\n\n"
                                    f"{intervals_md}\n\n## Trials\n\n{md}\n")
    df.to_csv(out / "results.csv", index=False)
    intervals.to_csv(out / "intervals.csv", index=False)
    plots = plot_results(df, sweep, out)
    states = df["state"].value_counts().to_dict()
    best = [{"trial": t.number, "values": t.values, "params": t.params} for t in study.best_trials] \
        if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) else []
    summary = {"sweep": sweep.name, "study": study.study_name, "n_trials": len(df), "states": states,
               "seeds": sweep.seeds, "reference": sweep.reference,
               "objectives": [dataclasses.asdict(o) for o in sweep.objectives], "best_trials": best,
               "seconds_this_invocation": round(seconds, 1)}
    if sweep.scaling:
        from mammut_pl.sweeps.scaling import scaling_report

        summary["scaling"] = scaling_report(df, sweep.scaling, out)
        plots += [out / "scaling.png"]
        for name, value in flat_numbers(summary["scaling"]["fits"], "scaling"):
            client.log_metric(parent_run_id, safe_metric_key(name), value)
        client.log_artifact(parent_run_id, str(out / "scaling.json"))
    (out / "study_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    for path in [out / "results.md", out / "results.csv", out / "intervals.csv", *plots, out / "study_summary.json"]:
        client.log_artifact(parent_run_id, str(path))
    log_intervals(client, parent_run_id, intervals, sweep)
    for i, row in enumerate(df.itertuples(index=False)):
        client.set_tag(parent_run_id, f"trial_{row.trial}_state", row.state)
    if all(s in ("COMPLETE", "PRUNED", "FAIL") for s in states) and finished:
        client.set_terminated(parent_run_id, "FINISHED")
    return f"{md}\n\n{intervals_md}"


def flat_numbers(tree: Any, prefix: str) -> list[tuple[str, float]]:
    """("a/b/c", 1.0) for every finite number in a nested dict."""
    if isinstance(tree, dict):
        return [kv for k, v in tree.items() for kv in flat_numbers(v, f"{prefix}/{k}")]
    if isinstance(tree, (int, float)) and not isinstance(tree, bool) and math.isfinite(tree):
        return [(prefix, float(tree))]
    return []


