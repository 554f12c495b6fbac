"""The task registry: every task module declares itself here, once.

A `TaskSpec` says what the suite needs to know about one `task=NAME`: its
LightningModule, the metric best.ckpt follows, the datasets it reads and its own
config checks, how its datamodule is built, its end-of-fit report and what
`predict` accepts for its checkpoints. An `EvalSpec`
is one `python -m mammut_pl.evaluate task=NAME` protocol: which task's test loop
scores it, its metric names, data description and report lines. fit / evaluate /
predict / report read these; they hold no per-task code.

Adding a task: a module in mammut_pl/tasks/ that ends with `register_task(TaskSpec(...))`
(and `register_eval(...)` for an evaluate protocol), imported in tasks/__init__.py.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mammut_pl import config as config_lib
from mammut_pl.config import Config, ConfigError, to_dict
from mammut_pl.data.tokenizer import Tokenizer

# (cfg, LightningModule, datamodule, final metrics) -> lines printed at the end of `fit`
ReportLines = Callable[[Config, Any, Any, "dict[str, float]"], "list[str]"]


@dataclass(frozen=True)
class PredictSpec:
    """What `python -m mammut_pl.predict` does with a checkpoint of this task."""
    inputs: str = "image"  # the input key it reads: image= or video=
    question: str = "optional"  # optional | required | refused
    question_hint: str = ""  # required: what the checkpoint does; refused: what to give instead
    keys: tuple[str, ...] = ()  # predict keys only this task reads (detection: categories, score_threshold)
    # (LightningModule, cfg, paths, own keys, batch size) -> (result rows, printed lines); None = caption / answer
    run: Callable[..., tuple[list[dict[str, Any]], list[str]]] | None = None
    # split=SPLIT: (results, out path) -> path of the official results file; None = not offered
    write_split: Callable[[list[dict[str, Any]], Any], Any] | None = None


@dataclass(frozen=True)
class TaskSpec:
    name: str  # the config's `task=`
    module: type  # the LightningModule class: module(cfg dict, tokenizer)
    monitor: tuple[str, str]  # (metric, mode) that best.ckpt follows
    experiment: str = ""  # the experiment that trains it (named in error messages)
    datasets: tuple[str, ...] = ()  # the data.name values it reads; () = any
    check: Callable[[Config], None] | None = None  # its own cross-field checks: raise ConfigError naming the key
    image_model: bool = False  # its weights are a plain image MaMMUT (retrieval / captioning evaluate it)
    datamodule_options: dict[str, Any] = field(default_factory=dict)  # extra datamodule arguments
    report: ReportLines | None = None  # end-of-fit lines; None = the metrics only
    predict: PredictSpec = PredictSpec()


@dataclass(frozen=True)
class EvalSpec:
    """One `evaluate task=NAME` protocol."""
    name: str  # evaluate's task=
    task: str  # the TaskSpec whose test loop scores it
    metrics: tuple[str, ...]  # the test/* metrics its report holds (those logged: some are optional)
    lines: Callable[[dict[str, Any]], list[str]]  # the printed table of a report
    own_data: str = ""  # scores a checkpoint of `task` on its own dataset (this experiment's); "" = any
    #                     image checkpoint on a Karpathy split (data=coco|flickr30k)
    describe: Callable[[str, Config, Any], dict[str, Any]] | None = None  # (split, cfg, datamodule): own data
    set_split: Callable[[Config, str], None] | None = None  # own data: point the test set at split=
    decoding: bool = False  # the report records the eval.* decoding settings
    extra: Callable[[Any], dict[str, Any]] | None = None  # datamodule -> more report fields
    skipped: str = "videos that"  # "N {skipped} could not be decoded"
    keys: tuple[str, ...] = ()  # evaluate keys only this protocol reads (zeroshot: classnames, templates)
    # a protocol that reads its own data, not a datamodule (zeroshot: an ImageFolder), and may score
    # a model folder as well as a suite checkpoint: (model, cfg, own keys, given override keys,
    # trainer kwargs) -> report (data, split, counts, metrics ...); see evaluation.evaluate_model
    run: Callable[..., dict[str, Any]] | None = None


TASK_SPECS: dict[str, TaskSpec] = {}
EVAL_SPECS: dict[str, EvalSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    if spec.name in TASK_SPECS and TASK_SPECS[spec.name].module is not spec.module:
        raise ValueError(f"task {spec.name!r} is registered twice")
    TASK_SPECS[spec.name] = spec
    return spec


def register_eval(spec: EvalSpec) -> EvalSpec:
    if spec.name in EVAL_SPECS and EVAL_SPECS[spec.name] != spec:
        raise ValueError(f"evaluate task {spec.name!r} is registered twice")
    EVAL_SPECS[spec.name] = spec
    return spec


def task_spec(name: str) -> TaskSpec:
    try:
        return TASK_SPECS[name]
    except KeyError:
        near = difflib.get_close_matches(name, list(TASK_SPECS), n=1)
        hint = f" Did you mean task={near[0]}?" if near else ""
        raise ConfigError(f"`task`: {name!r} is not one of {', '.join(TASK_SPECS)}.{hint}") from None


def eval_spec(name: str) -> EvalSpec:
    return EVAL_SPECS[name]


def check_config(cfg: Config) -> Config:
    """The task's checks on top of `config.load`'s (which knows no task): the datasets it reads, then
    the spec's own `check`. Every path from a config to a run passes here (load_config, runtime)."""
    spec = task_spec(cfg.task)
    if spec.datasets and cfg.data.name not in spec.datasets:
        raise ConfigError(f"`data.name`: task={cfg.task} reads data.name={' or '.join(spec.datasets)}, "
                          f"not {cfg.data.name!r}")
    if spec.check is not None:
        spec.check(cfg)
    return cfg


def load_config(experiment: str = "", overrides: list[str] | None = None) -> Config:
    """`config.load` (typed defaults <- experiment <- overrides) and the task's own checks."""
    return check_config(config_lib.load(experiment, overrides))


def build_task(cfg: Config, tokenizer: Tokenizer):
    """The LightningModule of `cfg.task` (a fresh model, or `model.init_from`'s weights)."""
    return task_spec(cfg.task).module(to_dict(cfg), tokenizer)


def specs_where(**want: Any) -> list[str]:
    """Names of the tasks whose spec (or predict spec) fields equal `want`, in registry order."""
    def value(spec: TaskSpec, key: str) -> Any:
        return getattr(spec, key) if hasattr(spec, key) else getattr(spec.predict, key)

    return [name for name, spec in TASK_SPECS.items() if all(value(spec, k) == v for k, v in want.items())]
