"""The scaling study (`make sweep-scaling`, sweeps/scaling.yaml): CLIP vs MaMMUT compared by
scaling laws fitted over model size x training budget (Nezhurina et al. 2025), not by single
points.

Every trial pretrains one (family, size, budget); its training compute is counted, not
estimated: the FLOPs of one training step (forward + backward of the suite's own loss,
`torch.utils.flop_counter` through `flops.count_flops`, as `make bench` counts) times the
steps it ran. Per family we fit

    err(C) = a * C^(-b) + c          (C in units of `UNIT` FLOPs)

with `scipy.optimize.curve_fit` on every run's error (its mean over seeds where there are
several), with the parameters' standard errors (sqrt of the covariance's diagonal). The fitted
curves are compared over the measured range and extrapolated `EXTRAPOLATE`x beyond it: where
they cross, the family that is worse at small compute becomes the better one.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

UNIT = 1e12  # compute axis in TFLOP: keeps a and C^-b within floating-point comfort
EXTRAPOLATE = 1e3  # how far beyond the largest measured compute the crossing is looked for
B_MAX = 5.0  # the fit's upper bound on the exponent b: a fit that ends there found no power law


# --- the sweep file's `scaling:` block ------------------------------------------------------------
@dataclass
class Target:
    name: str  # e.g. retrieval_error
    metric: str  # a pretrain metric of the trials, e.g. pretrain/test/mean_R
    percent_to_error: bool = False  # a recall in [0, 100] -> error 1 - x/100


@dataclass
class ScalingSettings:
    family: str  # the swept parameter whose values are the families (clip / mammut)
    compute: str = "pretrain/train_flops"  # the trials' training FLOPs
    targets: list[Target] = field(default_factory=list)


def parse_settings(raw: Any, params: Sequence[str], record: Sequence[str], path: Path) -> ScalingSettings | None:
    """The `scaling:` block, validated against the sweep's params and recorded metrics."""
    if raw is None:
        return None
    where = f"{path}: `scaling`"
    if not isinstance(raw, dict) or "family" not in raw or not raw.get("targets"):
        raise ValueError(f"{where}: expected {{family: PARAM, targets: [{{name, metric}}, ...]}}")
    s = ScalingSettings(family=str(raw["family"]), compute=str(raw.get("compute", ScalingSettings.compute)))
    if s.family not in params:
        raise ValueError(f"{where}.family: {s.family!r} is not a swept parameter ({list(params)})")
    for t in raw["targets"]:
        if not isinstance(t, dict) or not {"name", "metric"} <= set(t) or set(t) - {"name", "metric", "percent_to_error"}:
            raise ValueError(f"{where}.targets: expected {{name, metric[, percent_to_error]}}, got {t!r}")
        s.targets.append(Target(str(t["name"]), str(t["metric"]), bool(t.get("percent_to_error", False))))
    missing = [m for m in [s.compute, *(t.metric for t in s.targets)] if m not in record]
    if missing:
        raise ValueError(f"{where}: {missing} must be objectives or listed under `record` (the trials keep only those)")
    return s


# --- compute per run -------------------------------------------------------------------------------
def train_flops_per_step(checkpoint: str | Path, batch_size: int) -> tuple[int, int]:
    """(FLOPs of one training step, the steps the run took) for a pretraining checkpoint: its
    model rebuilt from the config it holds, one forward + backward of its own loss on a batch of
    `batch_size` random images and captions filling the context (an upper bound: real captions
    are shorter and padding is skipped)."""
    import torch

    from mammut_pl.config import from_dict
    from mammut_pl.flops import count_flops
    from mammut_pl.tasks.registry import build_task

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    stored = ckpt["hyper_parameters"]["cfg"]
    stored = {**stored, "model": {**stored["model"], "init_from": ""}}  # the FLOPs need the shapes, not the weights
    task = build_task(from_dict(stored), None)
    m = task.cfg.model
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, m.image_size, m.image_size, generator=gen)  # (B, 3, H, W)
    tokens = torch.randint(0, m.vocab_size, (batch_size, m.context_length), generator=gen)  # (B, T)
    tokens[:, 0], tokens[:, -1] = m.bos_id, m.eos_id
    tokens[(tokens == m.pad_id)] = m.eos_id if m.pad_id != m.eos_id else 1

    def step() -> None:
        task.losses(images, tokens)["loss"].backward()

    return count_flops(step), int(ckpt.get("global_step", 0))


# --- the fit ---------------------------------------------------------------------------------------
def power_law(compute: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """err(C) = a * C^(-b) + c (C in UNIT FLOPs)."""
    return a * np.power(compute, -b) + c


@dataclass
class Fit:
    a: float
    b: float
    c: float
    a_err: float  # standard errors: sqrt(diag(pcov))
    b_err: float
    c_err: float
    n: int  # points fitted

    def __call__(self, compute: np.ndarray) -> np.ndarray:
        return power_law(np.asarray(compute, float), self.a, self.b, self.c)

    @property
    def undetermined(self) -> str:
        """Why the exponent is not determined by the points ("" if it is): its standard error
        exceeds it, or it ended at the bound B_MAX (e.g. points flat at chance)."""
        if self.b >= B_MAX * 0.999:
            return f"b = {self.b:.2f} at its bound {B_MAX:g}"
        if not self.b_err <= self.b:  # also NaN / inf
            return f"b = {self.b:.2f} +- {self.b_err:.2g}"
        return ""


def fit_power_law(compute: Sequence[float], err: Sequence[float]) -> Fit:
    """Least squares fit of err = a * C^(-b) + c (C in UNIT FLOPs) with a, b, c >= 0;
    at least 4 points (3 parameters and a residual)."""
    from scipy.optimize import curve_fit

    x, y = np.asarray(compute, float), np.asarray(err, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[ok], y[ok]
    if len(x) < 4:
        raise ValueError(f"a power-law fit needs >= 4 points with finite compute and error, got {len(x)}")
    p0 = (max(y.max() - y.min(), 1e-6) * x.min() ** 0.3, 0.3, max(y.min() * 0.9, 0.0))
    popt, pcov = curve_fit(power_law, x, y, p0=p0, bounds=([0.0, 0.0, 0.0], [np.inf, B_MAX, np.inf]), maxfev=20000)
    perr = np.sqrt(np.diag(pcov))
    return Fit(*map(float, popt), *map(float, perr), n=len(x))


def crossings(f: Fit, g: Fit, low: float, high: float, samples: int = 4000) -> list[float]:
    """Computes C in [low, high] where the two fitted curves are equal (sign changes of f - g on
    a log grid, each refined with brentq)."""
    from scipy.optimize import brentq

    grid = np.geomspace(low, high, samples)
    d = f(grid) - g(grid)
    found = []
    for i in np.flatnonzero(np.sign(d[:-1]) * np.sign(d[1:]) < 0):
        found.append(float(brentq(lambda c: float(f(c) - g(c)), grid[i], grid[i + 1])))
    return found


def crossing_statement(names: tuple[str, str], fits: tuple[Fit, Fit], low: float, high: float) -> str:
    """One sentence: where the fitted curves of the two families cross, or which one is lower
    over the whole range (measured .. extrapolated); or, when a fit's exponent is undetermined,
    that no crossing can be read (the curves' intersection is then an artefact of the fit)."""
    (n1, n2), (f1, f2) = names, fits
    top = high * EXTRAPOLATE
    found = crossings(f1, f2, low, top)
    span = f"{low:.3g}..{top:.3g} TFLOP (measured up to {high:.3g})"
    vague = [f"{name}: {fit.undetermined}" for name, fit in zip(names, fits) if fit.undetermined]
    if vague:
        return f"no crossing can be read: the exponent is undetermined ({'; '.join(vague)})"
    if not found:
        lower = n1 if f1(np.array(math.sqrt(low * top))) < f2(np.array(math.sqrt(low * top))) else n2
        return f"no crossing in {span}: {lower} is lower throughout (asymptotes c: {n1} {f1.c:.3g}, {n2} {f2.c:.3g})"
    parts = []
    for c in found:
        after = n1 if f1(np.array(c * 1.01)) < f2(np.array(c * 1.01)) else n2
        kind = "measured range" if c <= high else "extrapolated"
        parts.append(f"at {c:.3g} TFLOP ({kind}), beyond which {after} is lower")
    return f"the fits cross in {span}: " + "; ".join(parts)


# --- the report --------------------------------------------------------------------------------------
def family_points(df: pd.DataFrame, settings: ScalingSettings, target: Target) -> pd.DataFrame:
    """Per run point (family, size, budget): compute (TFLOP) and the target's mean and std over seeds."""
    done = df[df["state"] == "COMPLETE"].copy()
    if target.metric not in done or settings.compute not in done:
        return pd.DataFrame(columns=["family", "compute", "err", "err_std", "n"])
    y = pd.to_numeric(done[target.metric], errors="coerce")
    done["err"] = 1.0 - y / 100.0 if target.percent_to_error else y
    done["compute"] = pd.to_numeric(done[settings.compute], errors="coerce") / UNIT
    params = [c for c in done.columns if c not in ("trial", "state", "seed", "note", "err", "compute")
              and not c.startswith(("pretrain/", "vqa/", "lvis/"))]
    grouped = done.dropna(subset=["err", "compute"]).groupby(params, sort=False)
    points = grouped.agg(compute=("compute", "mean"), err=("err", "mean"), err_std=("err", "std"), n=("err", "size"))
    return points.reset_index().rename(columns={settings.family: "family"})


def scaling_report(df: pd.DataFrame, settings: ScalingSettings, out: Path) -> dict[str, Any]:
    """Fits per target and family, the crossing statements; writes scaling.json and scaling.png."""
    report: dict[str, Any] = {"unit_flops": UNIT, "law": "err(C) = a * C^(-b) + c, C in TFLOP", "fits": {},
                              "crossing": {}, "points": {}}
    curves: dict[str, dict[str, Fit]] = {}
    for target in settings.targets:
        points = family_points(df, settings, target)
        report["points"][target.name] = points.to_dict("records")
        curves[target.name] = {}
        for family, group in points.groupby("family", sort=False):
            try:
                fit = fit_power_law(group["compute"], group["err"])
            except (ValueError, RuntimeError) as err:  # too few points / no convergence: say so
                report["fits"].setdefault(target.name, {})[str(family)] = {"error": str(err)}
                continue
            curves[target.name][str(family)] = fit
            report["fits"].setdefault(target.name, {})[str(family)] = asdict(fit)
        fitted = curves[target.name]
        if len(fitted) == 2:
            names = tuple(fitted)
            low, high = points["compute"].min(), points["compute"].max()
            report["crossing"][target.name] = crossing_statement(names, tuple(fitted.values()), low, high)
    (out / "scaling.json").write_text(json.dumps(report, indent=1, default=str))
    plot_scaling(report, curves, out / "scaling.png")
    return report


def plot_scaling(report: dict[str, Any], curves: dict[str, dict[str, Fit]], path: Path) -> Path:
    """One log-log panel per target: each family's runs (mean over seeds, std as bars) and its fit,
    drawn EXTRAPOLATE x beyond the runs; the crossing statement as the panel's caption."""
    from matplotlib.figure import Figure

    names = list(report["points"])
    fig = Figure(figsize=(6.2 * len(names), 4.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(names), squeeze=False)[0])
    for ax, name in zip(axes, names):
        points = pd.DataFrame(report["points"][name])
        for i, (family, group) in enumerate(points.groupby("family", sort=False) if len(points) else []):
            color = f"C{i}"
            ax.errorbar(group["compute"], group["err"], yerr=group["err_std"].fillna(0), fmt="o", color=color,
                        capsize=3, label=f"{family} runs")
            fit = curves[name].get(str(family))
            if fit is not None:
                c = np.geomspace(points["compute"].min(), points["compute"].max() * EXTRAPOLATE, 200)
                ax.plot(c, fit(c), "-", color=color, alpha=0.8,
                        label=f"{family}: {fit.a:.2g}·C^-{fit.b:.2f}±{fit.b_err:.2f} + {fit.c:.3g}±{fit.c_err:.2g}")
        if len(points):
            ax.axvline(points["compute"].max(), ls=":", color="gray")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training compute C (TFLOP, counted)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        ax.set_title(_wrap(report["crossing"].get(name, "fewer than two families fitted")), fontsize=8)
    fig.savefig(path, dpi=100)
    return path


def _wrap(text: str, width: int = 80) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))
