"""The scaling study's pieces: the power-law fit recovers known parameters from noisy synthetic
points (within the uncertainties it reports), the crossing of two fitted laws is where they are
equal, the report on a synthetic sweep table, and FLOPs counted per training step."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mammut_pl import config as config_lib
from mammut_pl.sweeps.scaling import (Fit, ScalingSettings, Target, crossing_statement, crossings, fit_power_law,
                                      power_law, scaling_report, train_flops_per_step)

TRUE = {"a": 0.6, "b": 0.45, "c": 0.25}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_known_parameters_within_its_uncertainty(seed):
    rng = np.random.default_rng(seed)
    compute = np.geomspace(0.01, 100.0, 12)  # TFLOP
    noise = 0.005
    err = power_law(compute, **TRUE) + rng.normal(0, noise, compute.shape)
    fit = fit_power_law(compute, err)
    for name, true in TRUE.items():
        est, sigma = getattr(fit, name), getattr(fit, f"{name}_err")
        assert 0 < sigma < 0.5 * true  # an informative, non-zero uncertainty
        assert abs(est - true) < 3 * sigma, (name, est, true, sigma)  # within 3 standard errors
    # residuals at the noise level
    assert np.std(err - fit(compute)) < 2 * noise


def test_fit_needs_enough_points():
    with pytest.raises(ValueError, match=">= 4 points"):
        fit_power_law([1.0, 2.0, 3.0], [0.5, 0.4, 0.35])


def test_crossing_is_where_the_laws_are_equal():
    steep = Fit(a=2.0, b=0.5, c=0.10, a_err=0, b_err=0, c_err=0, n=9)  # worse at small C, better at large C
    flat = Fit(a=1.0, b=0.3, c=0.20, a_err=0, b_err=0, c_err=0, n=9)
    (c,) = crossings(steep, flat, 1e-3, 1e6)
    assert steep(np.array(c)) == pytest.approx(flat(np.array(c)), abs=1e-9)
    assert steep(np.array(c / 2)) > flat(np.array(c / 2)) and steep(np.array(c * 2)) < flat(np.array(c * 2))
    text = crossing_statement(("clip", "mammut"), (steep, flat), 1e-3, c / 10)
    assert f"at {c:.3g} TFLOP (extrapolated), beyond which clip is lower" in text
    lower = Fit(a=0.5, b=0.3, c=0.05, a_err=0, b_err=0, c_err=0, n=9)
    assert crossings(lower, flat, 1e-3, 1e6) == []
    assert "no crossing" in crossing_statement(("a", "b"), (lower, flat), 1e-3, 1.0) and "a is lower" in \
        crossing_statement(("a", "b"), (lower, flat), 1e-3, 1.0)
    # an exponent the points do not determine: the curves still intersect, but no crossing is claimed
    vague = Fit(a=2.0, b=0.5, c=0.10, a_err=0, b_err=0.8, c_err=0, n=9)
    assert crossings(vague, flat, 1e-3, 1e6) == [c]
    text = crossing_statement(("clip", "mammut"), (vague, flat), 1e-3, c / 10)
    assert text == "no crossing can be read: the exponent is undetermined (clip: b = 0.50 +- 0.8)"
    at_bound = Fit(a=0.003, b=5.0, c=0.93, a_err=0.1, b_err=94, c_err=0.01, n=9)  # flat points at chance
    assert "mammut: b = 5.00 at its bound 5" in crossing_statement(("clip", "mammut"), (flat, at_bound), 1e-3, 1.0)


def test_flat_points_leave_the_exponent_undetermined():
    """Points at chance whatever the compute (the demo's CLIP runs): the fit cannot find a power law."""
    rng = np.random.default_rng(0)
    compute = np.geomspace(0.5, 30, 9)
    fit = fit_power_law(compute, 0.95 + rng.normal(0, 0.005, 9))
    assert fit.undetermined
    assert not fit_power_law(compute, power_law(compute, 0.5, 0.4, 0.3)).undetermined


def test_scaling_report_fits_each_family(tmp_path):
    laws = {"clip": (0.5, 0.4, 0.30), "mammut": (0.8, 0.5, 0.20)}
    rows, trial = [], 0
    for family, (a, b, c) in laws.items():
        for size in ("s", "m", "l"):
            for steps, compute in zip((50, 100, 200), np.geomspace(0.02, 20, 3) * {"s": 1, "m": 3, "l": 9}[size]):
                for seed in (0, 1):
                    recall = 100 * (1 - power_law(compute, a, b, c)) + (seed - 0.5) * 0.2
                    rows.append({"trial": trial, "state": "COMPLETE", "family": family, "size": size,
                                 "budget": steps, "seed": seed, "pretrain/test/mean_R": recall,
                                 "pretrain/train_flops": compute * 1e12})
                    trial += 1
    settings = ScalingSettings(family="family", targets=[Target("retrieval_error", "pretrain/test/mean_R", True)])
    report = scaling_report(pd.DataFrame(rows), settings, tmp_path)
    for family, (a, b, c) in laws.items():
        fit = report["fits"]["retrieval_error"][family]
        assert fit["n"] == 9  # the 9 (size, budget) points, each the mean of its 2 seeds
        assert fit["b"] == pytest.approx(b, abs=3 * fit["b_err"] + 1e-3)
        assert fit["c"] == pytest.approx(c, abs=3 * fit["c_err"] + 1e-3)
    assert "mammut is lower" in report["crossing"]["retrieval_error"]
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "scaling.json").read_text())["fits"]["retrieval_error"]["clip"]["n"] == 9


def _checkpoint(path, *overrides):
    cfg = config_lib.to_dict(config_lib.load("demo", ["model.encoder_kwargs={patch_size:8,depth:1}", "model.depth=2",
                                                      "model.num_cross_attn=1", *overrides]))
    torch.save({"hyper_parameters": {"cfg": cfg}, "global_step": 7}, path)
    return path


def test_flops_per_step_counted_from_the_checkpoint(tmp_path):
    mammut = _checkpoint(tmp_path / "m.ckpt")
    clip = _checkpoint(tmp_path / "c.ckpt", "loss.caption_weight=0")
    f4, steps = train_flops_per_step(mammut, 4)
    f8, _ = train_flops_per_step(mammut, 8)
    assert steps == 7
    assert 1.9 < f8 / f4 < 2.1  # linear in the batch (only the B x B logits are not)
    c4, _ = train_flops_per_step(clip, 4)
    assert 0 < c4 < f4  # contrastive only: the generative pass is skipped


def test_summarise_writes_the_fits_and_logs_them_to_the_parent_run(tmp_path):
    """sweeps/scaling.yaml's 18 points with results from known laws, through the sweep's summary:
    scaling.json / scaling.png, the fits as parent-run metrics, the ablation grid readable."""
    import mlflow
    import optuna
    from PIL import Image

    from mammut_pl.sweeps.results import summarise
    from mammut_pl.sweeps.spec import load_sweep

    sweep = load_sweep("scaling")
    study = optuna.create_study(directions=sweep.directions)
    dists = {p.name: optuna.distributions.CategoricalDistribution(p.grid) for p in sweep.params}
    laws = {"clip": (0.5, 0.4, 0.30), "mammut": (0.8, 0.5, 0.20)}
    per_step = {"S": 1e9, "M": 3e9, "L": 9e9}
    for family in ("clip", "mammut"):
        for size in ("S", "M", "L"):
            for budget in ("50", "100", "200"):
                flops = per_step[size] * int(budget) * (1.5 if family == "mammut" else 1.0)
                mean_r = 100 * (1 - power_law(flops / 1e12, *laws[family]))
                metrics = {"pretrain/test/mean_R": mean_r, "pretrain/train_flops": flops}
                if family == "mammut":
                    metrics["pretrain/test/caption_loss"] = float(power_law(flops / 1e12, 2.0, 0.3, 3.0))
                study.add_trial(optuna.trial.create_trial(
                    params={"family": family, "size": size, "budget": budget}, distributions=dists,
                    values=[mean_r], user_attrs={"metrics": metrics}))
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.create_run(client.create_experiment("x"))
    summarise(study, sweep, tmp_path, client, run.info.run_id, 1.0, finished=True)
    report = json.loads((tmp_path / "scaling.json").read_text())
    assert set(report["fits"]["retrieval_error"]) == {"clip", "mammut"}
    assert set(report["fits"]["caption_loss"]) == {"mammut"}  # CLIP has no caption loss
    assert report["fits"]["caption_loss"]["mammut"]["b"] == pytest.approx(0.3, abs=0.01)
    logged = client.get_run(run.info.run_id).data.metrics
    assert logged["scaling/retrieval_error/mammut/b"] == pytest.approx(report["fits"]["retrieval_error"]["mammut"]["b"])
    assert "scaling/caption_loss/mammut/c_err" in logged
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"scaling.png", "scaling.json", "ablation.png", "intervals.csv", "results.md"} <= artifacts
    width, height = Image.open(tmp_path / "ablation.png").size
    assert width / height < 2.5  # a grid of panels, not one long strip
