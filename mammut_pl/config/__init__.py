"""Typed experiment config: defaults in the dataclasses of config/tree.py (`data.*` in config/data.py),
experiments/NAME.yaml holds only differences, command-line `key=value` overrides last. Unknown keys
and bad values stop the run before any work starts, naming the key (and the closest valid one);
a key that moved names its new place (config/renamed.py)."""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from mammut_pl.config.checks import derive, encoder_patch_size, validate
from mammut_pl.config.data import (CocoSettings, DataConfig, LVISSettings, MSRVTTSettings, VQAv2Settings,
                                   WebDataSettings)
from mammut_pl.config.renamed import REMOVED, RENAMED, migrate, moved_message
from mammut_pl.config.tree import (DATAMODULES, TRAINER_DEFAULTS, Config, ConfigError, EvalConfig,
                                   LossConfig, MLflowConfig, ModelSettings, OptimConfig, VideoSettings)
from mammut_pl.model.detection_config import DetectionConfig
from mammut_pl.model.config import PRESETS, MaMMUTConfig
from mammut_pl.model.video_config import VideoConfig

__all__ = [
    "PROJECT_ROOT", "EXPERIMENTS_DIR", "BASES_DIR", "Config", "ConfigError", "ModelSettings", "LossConfig",
    "DataConfig", "WebDataSettings", "CocoSettings", "VQAv2Settings", "MSRVTTSettings", "LVISSettings",
    "OptimConfig", "MLflowConfig", "EvalConfig", "VideoSettings", "DetectionConfig", "MaMMUTConfig", "VideoConfig",
    "DATAMODULES", "TRAINER_DEFAULTS", "RENAMED", "REMOVED", "migrate", "derive", "validate",
    "encoder_patch_size", "list_experiments", "parse_overrides", "load", "from_dict", "trainer_kwargs", "to_yaml",
    "to_dict", "flatten", "tracking_uri",
]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS_DIR = PROJECT_ROOT / "experiments"
BASES_DIR = EXPERIMENTS_DIR / "base"  # shared settings an experiment includes with `base: NAME`


def list_experiments() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


def named_yaml(key: str, name: str, folder: Path) -> Path:
    """`key=NAME` -> folder/NAME.yaml (a .yaml path as given); a missing one names the nearest known."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        near = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {key}={near[0]}?" if near else ""
        raise ConfigError(f"{key}={name}: no file {path}. Known: {', '.join(known)}.{hint}")
    return path


def _experiment_file(name: str) -> Path:
    return named_yaml("experiment", name, EXPERIMENTS_DIR)


def _valid_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys += _valid_keys(node._get_node(k), f"{full}.")
    return keys


def _friendly(err: OmegaConfBaseException, base: DictConfig, source: str, data_name: str = "") -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    if key in RENAMED or key in REMOVED:
        return ConfigError(moved_message(key, source, data_name))
    if isinstance(err, ConfigKeyError) or "not in" in str(err):
        near = difflib.get_close_matches(key, [*_valid_keys(base), "model.preset"], n=1, cutoff=0.5)
        hint = f" Did you mean `{near[0]}`?" if near else ""
        return ConfigError(f"unknown config key `{key}` ({source}).{hint}")
    msg = str(err).splitlines()[0]
    return ConfigError(f"bad value for `{key}` ({source}): {msg}")


def _data_name(layer: Any, merged: DictConfig) -> str:
    """data.name as this layer leaves it (so a moved key's message can name its dataset's section)."""
    name = OmegaConf.select(layer, "data.name", default=None) if isinstance(layer, DictConfig) else None
    return str(name or merged.data.name)


def parse_overrides(args: list[str]) -> tuple[str, list[str]]:
    """Split `experiment=NAME` from the other `key=value` arguments."""
    experiment, rest = "", []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r}: expected key=value (see --help)")
        key, value = arg.split("=", 1)
        if key == "experiment":
            experiment = value
        else:
            rest.append(arg)
    return experiment, rest


def _read_yaml(path: Path) -> Any:
    try:
        return OmegaConf.load(path)
    except Exception as err:  # yaml syntax
        raise ConfigError(f"{path}: not valid YAML: {err}") from None


def _experiment_layers(path: Path) -> list[tuple[str, Any]]:
    """The experiment file, after the file its top-level `base: NAME` names (experiments/base/NAME.yaml,
    the settings that several experiments share); the experiment's own keys win."""
    layer = _read_yaml(path)
    if not isinstance(layer, DictConfig) or "base" not in layer:
        return [(str(path), layer)]
    name = str(layer.pop("base"))
    base_path = BASES_DIR / f"{name}.yaml"
    if not base_path.is_file():
        known = sorted(p.stem for p in BASES_DIR.glob("*.yaml"))
        raise ConfigError(f"`base` ({path}): no file {base_path}. Known: {', '.join(known)}")
    return [(str(base_path), _read_yaml(base_path)), (str(path), layer)]


def _apply_preset(merged: DictConfig, layer: DictConfig, source: str) -> DictConfig:
    """`model.preset: NAME` in a layer sets every architecture key to MaMMUTConfig.from_name(NAME)
    (litgpt-style); the layer's explicit model.* keys then override it. Pops the key from the layer."""
    model = layer.get("model")
    if not isinstance(model, DictConfig) or "preset" not in model:
        return merged
    name = str(model.pop("preset"))
    try:
        arch = dataclasses.asdict(MaMMUTConfig.from_name(name))
    except ValueError as err:
        near = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f" Did you mean `model.preset={near[0]}`?" if near else ""
        raise ConfigError(f"`model.preset` ({source}): {err}.{hint}") from None
    merged = OmegaConf.merge(merged, {"model": arch})
    merged.model.encoder_kwargs = arch["encoder_kwargs"]  # replaced, not merged: the preset's own ViT
    return merged


def load(experiment: str = "", overrides: list[str] | None = None) -> Config:
    """Typed defaults <- experiments/NAME.yaml <- overrides; validated before returning."""
    base = OmegaConf.structured(Config)
    layers: list[tuple[str, Any]] = []
    if experiment:
        layers += _experiment_layers(_experiment_file(experiment))
    if overrides:
        try:
            layers.append(("command line", OmegaConf.from_dotlist(overrides)))
        except Exception as err:
            raise ConfigError(f"command line: cannot parse overrides {overrides}: {err}") from None
    merged = base
    for source, layer in layers:
        if isinstance(layer, ListConfig):
            raise ConfigError(f"{source}: expected a mapping of config keys, got a list")
        try:
            merged = OmegaConf.merge(_apply_preset(merged, layer, source), layer)
        except OmegaConfBaseException as err:
            raise _friendly(err, base, source, _data_name(layer, merged)) from None
    if experiment:
        merged.experiment = Path(experiment).stem if experiment.endswith((".yaml", ".yml")) else experiment
    try:
        cfg: Config = OmegaConf.to_object(merged)  # runs the dataclasses' __post_init__ checks
    except OmegaConfBaseException as err:
        raise _friendly(err, base, "resolved config", str(merged.data.name)) from None
    except ValueError as err:
        raise ConfigError(str(err)) from None
    derive(cfg)
    validate(cfg)
    return cfg


def from_dict(d: dict[str, Any]) -> Config:
    """A typed Config from a plain dict (e.g. the one stored in a checkpoint)."""
    try:
        cfg: Config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), migrate(d)))
    except OmegaConfBaseException as err:
        name = (d.get("data") or {}).get("name", "") if isinstance(d, dict) else ""
        raise _friendly(err, OmegaConf.structured(Config), "stored config", name) from None
    except ValueError as err:
        raise ConfigError(str(err)) from None
    derive(cfg)
    validate(cfg)
    return cfg


def trainer_kwargs(cfg: Config) -> dict[str, Any]:
    return {**TRAINER_DEFAULTS, **cfg.trainer}


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'width': 8}} -> {'model.width': 8}, for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def tracking_uri(cfg: Config) -> str:
    return cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"
