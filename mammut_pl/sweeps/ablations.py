"""Ablation sweeps read back from MLflow: trials tables, ablation tables, Pareto fronts.

What `notebooks/ablations.ipynb` reads and tabulates, as functions (its plots: `sweeps.plots`).
The MLflow layout a sweep writes:

- one parent run per Optuna study, tags `mammut_pl.kind=sweep`, `mammut_pl.sweep` (sweep name),
  `mammut_pl.study`, `mammut_pl.params` (JSON list of the swept params), `mammut_pl.objectives`
  (JSON list of `{"metric", "direction"}`), optionally `mammut_pl.space` (JSON
  `{param: [values in the sweep file's order]}`: the x-axis order of categorical params);
- one child run per trial, tags `mlflow.parentRunId`, `mammut_pl.kind=trial`, `optuna.trial`,
  `optuna.state` (COMPLETE / PRUNED / FAIL), the swept params as MLflow params (strings) and
  the trial's metrics (`pretrain/test/i2t_R1`, `vqa/test/vqa_accuracy`, ...);
- stage runs below the trial runs (`mammut_pl.kind=stage`), ignored here.

Only pandas, numpy and mlflow.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

EXPERIMENT = "mammut_pl-sweeps"
KIND_TAG, SWEEP_TAG, STUDY_TAG = "mammut_pl.kind", "mammut_pl.sweep", "mammut_pl.study"
PARAMS_TAG, OBJECTIVES_TAG, SPACE_TAG = "mammut_pl.params", "mammut_pl.objectives", "mammut_pl.space"
REFERENCE_TAG, SEEDS_TAG = "mammut_pl.reference", "mammut_pl.seeds"
TRIAL_TAG, STATE_TAG, PARENT_TAG = "optuna.trial", "optuna.state", "mlflow.parentRunId"
COMPLETE = "COMPLETE"
# when a parent run names no objectives: retrieval R@1 vs VQA accuracy, as in the paper's tables
DEFAULT_OBJECTIVES = ({"metric": "pretrain/test/i2t_R1", "direction": "maximize"},
                      {"metric": "vqa/test/vqa_accuracy", "direction": "maximize"})
VQA_BASELINE = "vqa/test/majority_baseline"


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str = "maximize"  # or "minimize"

    def __post_init__(self) -> None:
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(f"objective {self.metric!r}: direction must be 'maximize' or 'minimize', "
                             f"got {self.direction!r}")

    @property
    def sign(self) -> float:  # +1 where larger is better
        return 1.0 if self.direction == "maximize" else -1.0

    @property
    def label(self) -> str:
        return f"{self.metric} ({'higher' if self.direction == 'maximize' else 'lower'} is better)"


def as_objectives(objectives: Iterable[Objective | Mapping[str, str] | str]) -> list[Objective]:
    """Objectives from `Objective`s, `{"metric", "direction"}` dicts or bare metric names (maximized)."""
    out = []
    for o in objectives:
        if isinstance(o, Objective):
            out.append(o)
        elif isinstance(o, str):
            out.append(Objective(o))
        else:
            out.append(Objective(str(o["metric"]), str(o.get("direction", "maximize"))))
    return out


@dataclass
class Study:
    """One Optuna study of a sweep (possibly spread over several parent runs, one per resume)."""

    sweep: str
    name: str
    params: list[str]
    objectives: list[Objective]
    status: str  # MLflow status of the newest parent run: FINISHED, RUNNING, FAILED, KILLED
    parent_run_ids: list[str]
    start_time: int  # ms, newest parent run
    space: dict[str, list[str]] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)  # the sweep's reference point (paper default)
    # index `trial`; columns run_id, state, the swept params (typed), the metrics
    trials: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def finished(self) -> bool:
        return self.status == "FINISHED"

    @property
    def metrics(self) -> list[str]:
        return metric_columns(self.trials, self.objectives, self.params)

    def completed(self) -> pd.DataFrame:
        return self.trials[self.trials["state"] == COMPLETE]

    def order(self, param: str) -> list[Any]:
        return param_order(self.trials[param], self.space.get(param))

    def intervals(self) -> pd.DataFrame:
        """Per point and metric: mean, 95% CI over seeds, n; the paired difference against the
        reference point where the sweep names one (`stats.interval_table`)."""
        from mammut_pl.sweeps.stats import interval_table

        reference = {p: typed_value(v, self.trials[p]) for p, v in self.reference.items() if p in self.trials}
        return interval_table(self.completed(), self.params, self.metrics,
                              reference if len(reference) == len(self.params) else None)

    def summary(self) -> str:
        counts = self.trials["state"].value_counts()
        states = ", ".join(f"{n} {s.lower()}" for s, n in counts.items())
        return (f"sweep {self.sweep} · study {self.name} · {self.status.lower()} · "
                f"{len(self.trials)} trials ({states or 'none'}) · swept {', '.join(self.params) or '-'}")


# ---------------------------------------------------------------- reading MLflow


def _json_tag(tags: Mapping[str, str], key: str, default: Any) -> Any:
    try:
        return json.loads(tags[key])
    except (KeyError, TypeError, ValueError):
        return default


def _search_all(client: Any, experiment_ids: list[str], filter_string: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def sqlite_store_missing(tracking_uri: str) -> bool:
    """A `sqlite:///path` URI whose file does not exist (MLflow would create an empty store)."""
    if not tracking_uri.startswith("sqlite:///"):
        return False
    path = tracking_uri[len("sqlite:///"):].split("?", 1)[0]
    return path != ":memory:" and not Path(path).exists()


def load_studies(tracking_uri: str, experiment: str = EXPERIMENT, sweep: str | None = None) -> list[Study]:
    """The studies to show, oldest sweep first.

    `sweep=None`: the newest *finished* study of every sweep. `sweep="xattn"` (or a comma-separated
    list): the newest study of each named sweep, finished or not; a name that is a study name picks
    that study. An absent store or experiment, or nothing matching, gives `[]`.
    """
    if sqlite_store_missing(tracking_uri):
        return []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    parents = _search_all(client, [exp.experiment_id], f"tags.`{KIND_TAG}` = 'sweep'")
    by_study: dict[tuple[str, str], list[Any]] = {}
    for run in parents:
        tags = run.data.tags
        sweep_name = tags.get(SWEEP_TAG) or run.info.run_name or run.info.run_id
        by_study.setdefault((sweep_name, tags.get(STUDY_TAG) or run.info.run_id), []).append(run)
    studies = [_study(sweep_name, name, runs) for (sweep_name, name), runs in by_study.items()]
    chosen = select_studies(studies, sweep)
    for study in chosen:
        children = []
        for run_id in study.parent_run_ids:
            children += _search_all(client, [exp.experiment_id],
                                    f"tags.`{PARENT_TAG}` = '{run_id}' and tags.`{KIND_TAG}` = 'trial'")
        if not study.params:  # no tag: every param the trials logged
            study.params = sorted({p for run in children for p in run.data.params})
        study.trials = trials_frame(children, study.params)
    return chosen


def _study(sweep: str, name: str, runs: list[Any]) -> Study:
    runs = sorted(runs, key=lambda r: r.info.start_time or 0)
    newest = runs[-1]
    tags = newest.data.tags
    objectives = as_objectives(_json_tag(tags, OBJECTIVES_TAG, []) or DEFAULT_OBJECTIVES)
    space = {str(k): [str(v) for v in vs] for k, vs in _json_tag(tags, SPACE_TAG, {}).items()}
    return Study(sweep=sweep, name=name, params=[str(p) for p in _json_tag(tags, PARAMS_TAG, [])],
                 objectives=objectives, status=newest.info.status, start_time=newest.info.start_time or 0,
                 parent_run_ids=[r.info.run_id for r in runs], space=space,
                 reference=_json_tag(tags, REFERENCE_TAG, {}) or {})


def select_studies(studies: Sequence[Study], sweep: str | None = None) -> list[Study]:
    """See `load_studies`; the result is ordered by start time."""
    if sweep is None or not sweep.strip():
        candidates = [s for s in studies if s.finished]
        names = sorted({s.sweep for s in candidates})
    else:
        candidates = list(studies)
        names = [n.strip() for n in sweep.split(",") if n.strip()]
    chosen: list[Study] = []
    for name in names:
        exact = [s for s in candidates if s.name == name]
        of_sweep = sorted((s for s in candidates if s.sweep == name), key=lambda s: s.start_time)
        for s in exact or of_sweep[-1:]:
            if s not in chosen:
                chosen.append(s)
    return sorted(chosen, key=lambda s: s.start_time)


def trials_frame(runs: Iterable[Any], params: Sequence[str]) -> pd.DataFrame:
    """One row per trial (index `trial`): run_id, state, the params (typed), the metrics.
    A trial logged twice (a resumed run) keeps its newest run."""
    rows = []
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        tags = run.data.tags
        try:
            trial = int(tags[TRIAL_TAG])
        except (KeyError, ValueError):
            continue
        seed = {"seed": run.data.params["seed"]} if "seed" in run.data.params and "seed" not in params else {}
        rows.append({"trial": trial, "run_id": run.info.run_id, "state": tags.get(STATE_TAG) or run.info.status,
                     **{p: run.data.params.get(p) for p in params}, **seed, **run.data.metrics})
    if not rows:
        return pd.DataFrame(columns=["run_id", "state", *params], index=pd.Index([], name="trial", dtype=int))
    df = pd.DataFrame(rows).drop_duplicates("trial", keep="last").set_index("trial").sort_index()
    for p in [*params, *(["seed"] if "seed" in df else [])]:
        df[p] = typed(df[p])
    return df


def load_sweeps(tracking_uri: str, experiment: str = EXPERIMENT, sweep: str | None = None) -> pd.DataFrame:
    """All trials of `load_studies(...)` in one frame, columns sweep, study, trial, run_id, state,
    params, metrics; `df.attrs["studies"]` holds each study's sweep, params, objectives, status."""
    studies = load_studies(tracking_uri, experiment, sweep)
    frames = [s.trials.reset_index().assign(sweep=s.sweep, study=s.name) for s in studies]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["sweep", "study", "trial"])
    df = df[["sweep", "study", *[c for c in df.columns if c not in ("sweep", "study")]]]
    df.attrs["studies"] = {s.name: {"sweep": s.sweep, "params": s.params, "status": s.status,
                                    "objectives": [vars(o) for o in s.objectives],
                                    "parent_run_ids": s.parent_run_ids} for s in studies}
    return df


# ---------------------------------------------------------------- tables


def typed(values: pd.Series) -> pd.Series:
    """MLflow param strings as numbers where every value is one (ints where all are integral)."""
    present = values.dropna()
    numbers = pd.to_numeric(present, errors="coerce")
    if len(present) == 0 or numbers.isna().any():
        return values
    numbers = pd.to_numeric(values, errors="coerce")
    if (numbers.dropna() % 1 == 0).all():
        return numbers.astype("Int64") if numbers.isna().any() else numbers.astype("int64")
    return numbers.astype(float)


def typed_value(value: Any, column: pd.Series) -> Any:
    """A value (e.g. from a JSON tag) in the type of a `typed` column, for comparisons."""
    if pd.api.types.is_numeric_dtype(column):
        try:
            return float(value) if pd.api.types.is_float_dtype(column) else int(value)
        except (TypeError, ValueError):
            return value
    return str(value)


def param_order(values: pd.Series, space: Sequence[Any] | None = None) -> list[Any]:
    """x-axis order of a swept param: numbers ascending; categories in the sweep file's order
    (`space`) where known, otherwise in order of first appearance (by trial number)."""
    present = values.dropna()
    if pd.api.types.is_numeric_dtype(present):
        return sorted(present.unique().tolist())
    seen = list(dict.fromkeys(present.tolist()))
    ranked = [v for v in (space or []) if v in seen]
    return ranked + [v for v in seen if v not in ranked]


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def metric_columns(trials: pd.DataFrame, objectives: Sequence[Objective] = (), params: Sequence[str] = ()) -> list[str]:
    """Metric columns (float columns that are not `params`): the objectives first, then test
    metrics, then the rest, in natural order (R1, R5, R10)."""
    fixed = {"run_id", "state", "sweep", "study", "trial", "seed", *params}
    metrics = [c for c in trials.columns if c not in fixed and pd.api.types.is_float_dtype(trials[c])]
    first = [o.metric for o in as_objectives(objectives) if o.metric in metrics]
    rest = sorted((c for c in metrics if c not in first), key=lambda c: ("/test/" not in c, _natural_key(c)))
    return first + rest


def trials_table(study: Study) -> pd.DataFrame:
    """Every trial (pruned and failed ones too): state, swept params, seed (if the sweep had seeds), metrics."""
    seed = ["seed"] if "seed" in study.trials and "seed" not in study.params else []
    return study.trials[["state", *study.params, *seed, *study.metrics]]


def ablation_table(trials: pd.DataFrame, params: Sequence[str], metrics: Sequence[str],
                   order: Mapping[str, Sequence[Any]] | None = None) -> pd.DataFrame:
    """The paper's ablation table: one row per value of the swept params (in `order`, default
    `param_order`), the mean of each metric over the completed trials with that value, and how
    many there were. Pruned and failed trials are left out."""
    done = trials[trials["state"] == COMPLETE] if "state" in trials else trials
    keys = [pd.Categorical(done[p], categories=list((order or {}).get(p) or param_order(done[p])), ordered=True)
            for p in params]
    grouped = done[list(metrics)].groupby(keys, observed=True, sort=True)
    table = grouped.mean().dropna(axis=1, how="all")  # metrics only pruned/failed trials have
    table.insert(0, "trials", grouped.size())
    table.index.names = list(params)
    return table


def baselines(trials: pd.DataFrame) -> dict[str, float]:
    """Reference lines for the plots: the majority-answer baseline under VQA accuracy."""
    if VQA_BASELINE in trials and trials[VQA_BASELINE].notna().any():
        return {"vqa/test/vqa_accuracy": float(trials[VQA_BASELINE].mean())}
    return {}


# ---------------------------------------------------------------- Pareto front


def pareto_front(df: pd.DataFrame, objectives: Sequence[Objective | Mapping[str, str] | str]) -> np.ndarray:
    """Boolean mask over `df`'s rows: True where no other row dominates it (at least as good in
    every objective, strictly better in one). Rows missing an objective value are never on it;
    equal rows do not dominate each other."""
    objs = as_objectives(objectives)
    if not objs:
        raise ValueError("pareto_front needs at least one objective")
    cols = [pd.to_numeric(df[o.metric], errors="coerce").to_numpy(float) * o.sign if o.metric in df
            else np.full(len(df), np.nan) for o in objs]
    values = np.column_stack(cols) if len(df) else np.zeros((0, len(objs)))  # (n, k), larger is better
    valid = np.isfinite(values).all(axis=1)
    v = values[valid]
    at_least = (v[:, None, :] >= v[None, :, :]).all(axis=-1)  # [i, j]: i >= j everywhere
    better = (v[:, None, :] > v[None, :, :]).any(axis=-1)  # [i, j]: i > j somewhere
    dominated = (at_least & better).any(axis=0)
    mask = np.zeros(len(df), dtype=bool)
    mask[np.flatnonzero(valid)[~dominated]] = True
    return mask
