"""A sweep file (sweeps/NAME.yaml) read and validated, the command line split into sweep
settings and per-stage overrides, and each stage's config built from them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mammut_pl import config as config_lib
from mammut_pl.config import PROJECT_ROOT, ConfigError, named_yaml

SWEEPS_DIR = PROJECT_ROOT / "sweeps"
STAGES = ("pretrain", "vqa", "lvis")
DOWNSTREAM = ("vqa", "lvis")  # fine-tuned from the trial's pretraining checkpoint, in this order
MLFLOW_EXPERIMENT = "mammut_pl-sweeps"


@dataclass
class Param:
    """One swept dimension: a grid of values for a config key, a float/int range, or named
    choices that each set several keys (e.g. contrastive-only / captioning-only / both)."""

    name: str
    values: list[Any] = field(default_factory=list)  # grid / categorical
    low: float | None = None  # range (tpe / random samplers)
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> {key: value}

    @property
    def grid(self) -> list[Any]:
        return list(self.choices) if self.choices else list(self.values)

    def overrides(self, value: Any) -> dict[str, Any]:
        """The config keys this parameter's value sets."""
        return dict(self.choices[value]) if self.choices else {self.name: value}


@dataclass
class Objective:
    metric: str  # "<stage>/<metric logged by fit>", e.g. "pretrain/test/i2t_R@1", "vqa/test/vqa_accuracy"
    direction: str = "maximize"


@dataclass
class SweepSettings:
    """The `sweep.*` keys (settable in the file's `sweep:` block or on the command line)."""

    n_trials: int = 0  # 0 = the whole grid (grid sampler)
    workers: int = 1  # trials in parallel on this machine (one process each)
    storage: str = ""  # "" = SQLite (1 worker) / JournalStorage file (several) in `out`; or an RDB URL
    study_name: str = ""  # "" = the sweep name
    out: str = ""  # "" = sweeps/out/NAME
    seed: int = 0  # the grid/TPE sampler's seed (the order trials are drawn in)
    seeds: Any = None  # N (= seeds 0..N-1) or a list: every point runs once per seed; None: once (config seed)
    mlflow_experiment: str = MLFLOW_EXPERIMENT
    tracking_uri: str = ""  # "" = the suite's default (mlflow.db in the project, or $MLFLOW_TRACKING_URI)
    role: str = "main"  # main | worker (internal: processes started by sweep.workers)


@dataclass
class Sweep:
    name: str
    description: str
    pretrain: str  # experiment for the pretraining stage
    vqa: str  # experiment for the VQA fine-tune ("" = no VQA stage)
    lvis: str  # experiment for the LVIS detection fine-tune ("" = no detection stage)
    params: list[Param]
    objectives: list[Objective]
    record: list[str]  # further "<stage>/<metric>" values kept per trial (tables, MLflow)
    sampler: str  # grid | tpe | random
    pruner: str  # none | median | threshold (single-objective studies only)
    prune_metric: str  # validation metric of the pretraining stage the pruner watches
    prune_threshold: float  # threshold pruner: prune when below (maximize) this
    overrides: dict[str, list[str]]  # per stage (and "all") key=value budget of this sweep
    settings: SweepSettings
    path: Path
    seeds: list[int] = field(default_factory=list)  # [] = one run per point with the configs' own seed
    reference: dict[str, Any] = field(default_factory=dict)  # the paper's default point: {param: value}
    scaling: Any = None  # the scaling study's settings (sweeps.scaling.ScalingSettings), or None

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def n_trials(self) -> int:
        if self.settings.n_trials:
            return self.settings.n_trials
        if self.sampler != "grid":
            raise ConfigError(f"{self.path}: sampler={self.sampler} needs sweep.n_trials")
        return math.prod(len(p.grid) for p in self.params) * max(1, len(self.seeds))


def list_sweeps() -> list[str]:
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


SWEEP_KEYS = {"description", "pretrain", "vqa", "lvis", "params", "objectives", "record", "sampler", "pruner",
              "prune_metric", "prune_threshold", "overrides", "sweep", "seeds", "reference", "scaling"}


def load_sweep(name: str, settings_overrides: list[str] | None = None) -> Sweep:
    """sweeps/NAME.yaml (or a path), validated: unknown keys and values name the file and key."""
    path = sweep_path(name)
    raw = read_sweep_file(path)
    params, objectives = parse_params(raw, path), parse_objectives(raw, path)
    sweep = Sweep(
        name=path.stem, description=str(raw.get("description", "")), pretrain=str(raw.get("pretrain", "demo")),
        vqa=str(raw.get("vqa", "") or ""), lvis=str(raw.get("lvis", "") or ""), params=params, objectives=objectives,
        record=list(raw.get("record") or []), sampler=str(raw.get("sampler", "grid")),
        pruner=str(raw.get("pruner", "none")), prune_metric=str(raw.get("prune_metric", "val/mean_R")),
        prune_threshold=float(raw.get("prune_threshold", 0.0)),
        overrides={k: list(v) for k, v in (raw.get("overrides") or {}).items()},
        settings=merge_settings(raw, settings_overrides), path=path,
    )
    sweep.seeds = parse_seeds(sweep.settings.seeds if sweep.settings.seeds is not None else raw.get("seeds"), path)
    sweep.reference = parse_reference(raw.get("reference"), params, path)
    from mammut_pl.sweeps.results import result_metrics
    from mammut_pl.sweeps.scaling import parse_settings

    try:
        sweep.scaling = parse_settings(raw.get("scaling"), [p.name for p in params], result_metrics(sweep), path)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_sweep(sweep)
    return sweep


def _need(path: Path, ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{path}: `{key}`: {why}")


def sweep_path(name: str) -> Path:
    """sweep=NAME -> sweeps/NAME.yaml; a .yaml path as given. A missing one names the nearest sweep."""
    return named_yaml("sweep", name, SWEEPS_DIR)


def read_sweep_file(path: Path) -> dict[str, Any]:
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:  # noqa: BLE001 - YAML syntax
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping")
    unknown = set(raw) - SWEEP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; expected some of {sorted(SWEEP_KEYS)}")
    return raw


def parse_params(raw: dict[str, Any], path: Path) -> list[Param]:
    """`params: {name: [values] | {choices: {label: {key: value}}} | {low, high[, log, int]}}`."""
    params = []
    for pname, spec in (raw.get("params") or {}).items():
        if isinstance(spec, list):
            p = Param(pname, values=spec)
        elif isinstance(spec, dict) and "choices" in spec:
            choices = spec["choices"]
            _need(path, isinstance(choices, dict) and all(isinstance(v, dict) for v in choices.values()),
                  f"params.{pname}.choices", "expected {label: {config.key: value, ...}, ...}")
            p = Param(pname, choices=spec["choices"])
        elif isinstance(spec, dict) and {"low", "high"} <= set(spec):
            p = Param(pname, low=spec["low"], high=spec["high"], log=bool(spec.get("log", False)),
                      integer=bool(spec.get("int", False)))
        else:
            raise ConfigError(f"{path}: `params.{pname}`: expected a list of values, {{choices: ...}} or {{low, high}}")
        _need(path, bool(p.grid) or p.low is not None, f"params.{pname}", "no values")
        params.append(p)
    _need(path, bool(params), "params", "a sweep needs at least one parameter")
    return params


def parse_objectives(raw: dict[str, Any], path: Path) -> list[Objective]:
    objectives = [Objective(**o) if isinstance(o, dict) else Objective(str(o)) for o in raw.get("objectives") or []]
    _need(path, bool(objectives), "objectives", "a sweep needs at least one objective")
    for o in objectives:
        _need(path, o.direction in ("maximize", "minimize"), "objectives", f"direction {o.direction!r}")
        _need(path, o.metric.split("/", 1)[0] in STAGES, "objectives", f"{o.metric!r} must start with a stage {STAGES}")
    return objectives


def merge_settings(raw: dict[str, Any], overrides: list[str] | None) -> SweepSettings:
    """The file's `sweep:` block, then the command line's sweep.KEY=VALUE."""
    settings = OmegaConf.structured(SweepSettings)
    try:
        settings = OmegaConf.merge(settings, raw.get("sweep") or {}, OmegaConf.from_dotlist(overrides or []))
    except Exception as err:  # noqa: BLE001
        key = getattr(err, "full_key", "") or str(err).splitlines()[0]
        raise ConfigError(f"unknown or bad sweep setting `sweep.{key}`") from None
    return OmegaConf.to_object(settings)


def check_sweep(sweep: Sweep) -> None:
    """The checks across keys: sampler, pruner, seeds, stages and budget fit together."""
    def need(ok: bool, key: str, why: str) -> None:
        _need(sweep.path, ok, key, why)

    need(not sweep.seeds or sweep.sampler == "grid", "seeds",
         "seeds run every grid point once per seed: use sampler: grid (tpe/random draw their own points)")
    need(not sweep.seeds or "seed" not in {p.name for p in sweep.params}, "params.seed",
         "`seed` is swept by `seeds:` / sweep.seeds, not as a parameter")
    need(sweep.sampler in ("grid", "tpe", "random"), "sampler", "expected grid, tpe or random")
    need(sweep.pruner in ("none", "median", "threshold"), "pruner", "expected none, median or threshold")
    need(sweep.pruner == "none" or len(sweep.objectives) == 1, "pruner",
         "Optuna prunes single-objective studies only; use one objective or pruner: none")
    need(sweep.sampler != "grid" or all(p.grid for p in sweep.params), "sampler",
         "the grid sampler needs a list of values (or choices) for every parameter")
    need(set(sweep.overrides) <= {*STAGES, "all"}, "overrides", f"stages are {STAGES} and 'all'")
    for stage in DOWNSTREAM:
        need(any(o.metric.startswith(f"{stage}/") for o in sweep.objectives) <= bool(getattr(sweep, stage)), stage,
             f"a {stage}/... objective needs a {stage} experiment")
    need(sweep.settings.workers >= 1, "sweep.workers", "must be >= 1")
    need(sweep.settings.n_trials >= 0, "sweep.n_trials", "must be >= 0")
    sweep.n_trials()  # raises if a non-grid sampler has no budget


def parse_seeds(value: Any, path: Path) -> list[int]:
    """`seeds: 3` / sweep.seeds=3 -> [0, 1, 2]; `seeds: [0, 5]` as given; None -> []."""
    if value is None or value == []:
        return []
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, (list, tuple)) and value
                                                                    and all(isinstance(v, int) and not isinstance(v, bool) for v in value))):
        raise ConfigError(f"{path}: `seeds` / sweep.seeds: expected a number of seeds N >= 1 or a list of "
                          f"distinct integers, got {value!r}")
    seeds = list(range(value)) if isinstance(value, int) else list(value)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: `seeds` / sweep.seeds: expected N >= 1 or distinct integers, got {value!r}")
    return seeds


def parse_reference(value: Any, params: list[Param], path: Path) -> dict[str, Any]:
    """`reference: {param: value, ...}`: one value of every swept parameter, from its grid."""
    if value is None:
        return {}
    grids = {p.name: p.grid for p in params}
    if not isinstance(value, dict) or set(value) != set(grids):
        raise ConfigError(f"{path}: `reference`: expected a value for each swept parameter {sorted(grids)}, "
                          f"got {value!r}")
    for name, v in value.items():
        if grids[name] and v not in grids[name]:
            raise ConfigError(f"{path}: `reference.{name}`: {v!r} is not one of {grids[name]}")
    return dict(value)


# --- a stage's config ------------------------------------------------------------------------
def split_overrides(args: list[str]) -> tuple[str, list[str], dict[str, list[str]]]:
    """sweep=NAME, sweep.* settings, and per-stage config overrides ("all" = every stage)."""
    name, settings, stage = "", [], {s: [] for s in (*STAGES, "all")}
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r}: expected key=value (see --help)")
        key, value = arg.split("=", 1)
        head, _, rest = key.partition(".")
        if key == "sweep":
            name = value
        elif head == "sweep" and rest:
            settings.append(f"{rest}={value}")
        elif head in STAGES and rest:
            stage[head].append(f"{rest}={value}")
        else:
            stage["all"].append(arg)
    if not name:
        raise ConfigError(f"sweep=NAME is required; known sweeps: {', '.join(list_sweeps())}")
    return name, settings, stage


def value_str(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v).replace(" ", "")
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def stage_config(sweep: Sweep, stage: str, trial_overrides: dict[str, Any], cli: dict[str, list[str]],
                 extra: list[str]) -> config_lib.Config:
    """A stage's full config: its experiment <- the sweep's budget <- the trial's parameters <-
    the command line, validated before any work."""
    experiment = sweep.pretrain if stage == "pretrain" else getattr(sweep, stage)
    params = [f"{k}={value_str(v)}" for k, v in trial_overrides.items()]
    if stage != "pretrain":  # downstream stages take the architecture keys only (weights come from pretraining)
        params = [p for p in params if p.startswith("model.")]
    overrides = [*sweep.overrides.get("all", []), *sweep.overrides.get(stage, []), *params,
                 *cli["all"], *cli[stage], *extra]
    from mammut_pl.tasks import load_config  # the task modules (torch): only once a sweep is set up

    return load_config(experiment, overrides)


def single_process(cfg: config_lib.Config) -> None:
    """A trial trains in its worker process. Lightning's DDP launcher would start this whole
    command again for every further rank (each taking trials of its own), so multi-process
    trainers are refused; run trials in parallel with sweep.workers instead."""
    t = config_lib.trainer_kwargs(cfg)
    devices = t.get("devices", 1)
    many = len(devices) > 1 if isinstance(devices, (list, tuple)) else str(devices) != "1"  # -1, auto: all
    if many or int(t.get("num_nodes", 1) or 1) > 1:
        raise ConfigError(f"`trainer.devices={devices}` / `trainer.num_nodes`: a sweep trains each trial in "
                          "one process (one device); run trials in parallel with sweep.workers=K instead")
