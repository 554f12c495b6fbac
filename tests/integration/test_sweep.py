"""Sweeps: every sweep file loads and every stage config of every grid point validates;
bad sweep files name the key; an interrupted trial is failed and retried with its own
grid point, so a resumed study runs each grid point to completion exactly once."""

import itertools
import json
from collections import Counter

import numpy as np
import optuna
import pytest

from mammut_pl import sweep as sweep_cli
from mammut_pl.config import ConfigError
from mammut_pl.sweeps.results import markdown_table, plot_results, result_metrics, results_table
from mammut_pl.sweeps.spec import (DOWNSTREAM, STAGES, list_sweeps, load_sweep, single_process, split_overrides,
                                   stage_config)
from mammut_pl.sweeps.study import (INTERRUPTED, TERMINATED, SweepTerminated, counted_trials, note_sigterm,
                                    open_study, retry_interrupted, run_workers, search_space)
from mammut_pl.sweeps.trial import TrialRunner


@pytest.mark.parametrize("name", list_sweeps())
def test_every_sweep_file_loads_and_every_stage_config_validates(name):
    sweep = load_sweep(name)
    points = list(itertools.product(*(p.grid for p in sweep.params)))
    assert sweep.sampler == "grid" and sweep.n_trials() == len(points) * max(1, len(sweep.seeds)) >= 3
    assert len(sweep.seeds) >= 3 or name == "scaling"  # intervals by default (the scaling study: a fit instead)
    if sweep.reference:  # a real grid point
        assert tuple(sweep.reference[p.name] for p in sweep.params) in points
    cli = {s: [] for s in (*STAGES, "all")}
    for point in points:
        overrides = {k: v for p, value in zip(sweep.params, point) for k, v in p.overrides(value).items()}
        pre = stage_config(sweep, "pretrain", overrides, cli, [])
        downstream = [stage_config(sweep, s, overrides, cli, []) for s in DOWNSTREAM if getattr(sweep, s)]
        if downstream:
            assert pre.task == "pretrain" and {c.task for c in downstream} <= {"vqa", "detection"}
        else:  # one-stage sweeps: the video ablations, the scaling study (pretraining alone)
            assert pre.task == ("pretrain" if name == "scaling" else "video_qa")
        for key, v in overrides.items():  # the trial's values reach the configs
            group, field = key.split(".", 1)
            section = getattr(pre, group)  # trainer.* is a plain dict of Trainer arguments
            got = section[field] if isinstance(section, dict) else getattr(section, field)
            assert got == v or (isinstance(v, dict) and {**got, **v} == got), key
        # downstream fine-tuning uses the pretraining architecture (or init_from would not fit)
        assert all(pre.model.architecture() == c.model.architecture() for c in downstream)


def test_paper_grids():
    assert load_sweep("xattn").params[0].grid == [1, 2, 3, 4]  # {1, 2, 3, N/2, N} with N = 4
    assert set(load_sweep("cross_task").params[0].grid) == {"contrastive_only", "captioning_only", "both"}
    both = load_sweep("cross_task").params[0].overrides("contrastive_only")
    assert both == {"loss.contrastive_weight": 1.0, "loss.caption_weight": 0.0}


def test_split_overrides():
    name, settings, stage = split_overrides(["sweep=xattn", "sweep.workers=2", "pretrain.data.root=/a",
                                                "vqa.data.root=/b", "lvis.data.root=/c", "trainer.devices=2"])
    assert name == "xattn" and settings == ["workers=2"]
    assert stage == {"pretrain": ["data.root=/a"], "vqa": ["data.root=/b"], "lvis": ["data.root=/c"],
                     "all": ["trainer.devices=2"]}
    with pytest.raises(ConfigError, match="sweep=NAME is required"):
        split_overrides(["trainer.devices=2"])


def _write(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return str(path)


BASE = """
pretrain: demo
vqa: vqa
params:
  model.num_cross_attn: [1, 2]
objectives:
  - {metric: pretrain/test/i2t_R@1, direction: maximize}
"""


@pytest.mark.parametrize("extra, match", [
    ("colour: red\n", "unknown key"),
    ("pruner: median\nobjectives:\n  - pretrain/test/i2t_R@1\n  - vqa/test/vqa_accuracy\n", "single-objective"),
    ("sampler: tpe\n", "needs sweep.n_trials"),
    ("sampler: bayes\n", "`sampler`"),
    ("sweep: {workerz: 2}\n", "sweep.workerz"),
])
def test_bad_sweep_files_name_the_key(tmp_path, extra, match):
    text = BASE.split("objectives:")[0] if "objectives:" in extra else BASE
    with pytest.raises(ConfigError, match=match):
        load_sweep(_write(tmp_path, text + extra))
    with pytest.raises(ConfigError, match="Did you mean sweep=xattn"):
        load_sweep("xatn")


def test_a_bad_trial_value_fails_before_any_work(tmp_path):
    sweep = load_sweep(_write(tmp_path, BASE.replace("[1, 2]", "[1, 9]")))
    cli = {s: [] for s in (*STAGES, "all")}
    with pytest.raises(ConfigError, match="num_cross_attn"):
        stage_config(sweep, "pretrain", sweep.params[0].overrides(9), cli, [])


def test_multi_process_trainers_are_refused_before_any_work(tmp_path, capsys):
    """Lightning's DDP launcher re-runs the command in each extra rank: a sweep would run again there."""
    sweep_file = _write(tmp_path, BASE)
    for args in (["trainer.devices=2", "trainer.strategy=ddp"], ["pretrain.trainer.devices=-1"],
                 ["trainer.num_nodes=2"]):
        assert sweep_cli.main([f"sweep={sweep_file}", f"sweep.out={tmp_path}/out", *args]) == 2
        assert "sweep.workers" in capsys.readouterr().err
        assert not (tmp_path / "out" / "study.db").exists()
    single_process(stage_config(load_sweep(sweep_file), "pretrain", {}, {s: [] for s in (*STAGES, "all")},
                                      ["trainer.devices=[0]"]))  # one device, named: fine


class FakeRunner:
    """Stands in for pretraining + VQA: the value is a function of the parameter."""

    def __init__(self):
        self.calls = []

    def __call__(self, trial):
        m = trial.suggest_categorical("model.num_cross_attn", [1, 2, 3, 4])
        self.calls.append(m)
        if m == 3 and not any(t.user_attrs.get("raised") for t in trial.study.trials):
            trial.set_user_attr("raised", True)
            raise RuntimeError("a trial that raises")  # recorded as failed, the study goes on
        return float(m * 10)


def test_resume_retries_the_interrupted_trial_and_runs_each_grid_point_once(tmp_path):
    sweep = load_sweep(_write(tmp_path, BASE.replace("[1, 2]", "[1, 2, 3, 4]")), [f"out={tmp_path}"])
    study = open_study(sweep, tmp_path)
    runner = FakeRunner()
    study.optimize(runner, n_trials=1, catch=(Exception,))
    # a sweep killed while its second trial ran: the trial stays RUNNING in the storage
    killed = study.ask()
    killed_value = killed.suggest_categorical("model.num_cross_attn", [1, 2, 3, 4])
    assert counted_trials(study) == 1

    study = open_study(sweep, tmp_path)  # the re-run opens the same study from its storage
    assert retry_interrupted(study) == [killed.number]
    run_workers(sweep, study, runner, [])
    trials = study.get_trials()
    states = Counter(t.state for t in trials)
    assert states[optuna.trial.TrialState.FAIL] == 2  # the interrupted one and the one that raised
    assert trials[killed.number].user_attrs["error"] == INTERRUPTED
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == killed.number)
    assert retry.params["model.num_cross_attn"] == killed_value and retry.state.name == "COMPLETE"
    assert any("RuntimeError" in str(t.user_attrs.get("error", "")) or t.user_attrs.get("raised") for t in trials)
    # every grid point was tried exactly once after the interruption, no point twice to completion
    finished = [t.params["model.num_cross_attn"] for t in trials
                if t.state.name in ("COMPLETE", "FAIL") and t.user_attrs.get("error") != INTERRUPTED]
    assert sorted(finished) == [1, 2, 3, 4]
    assert counted_trials(study) == 4
    # a third run has nothing left to do
    before = len(runner.calls)
    run_workers(sweep, open_study(sweep, tmp_path), runner, [])
    assert len(runner.calls) == before


def test_results_table_and_markdown(tmp_path):
    sweep = load_sweep(_write(tmp_path, BASE))
    study = optuna.create_study(directions=sweep.directions)
    for m in (1, 2):
        study.enqueue_trial({"model.num_cross_attn": m})  # fixed values: the sampler would pick at random
        t = study.ask()
        assert t.suggest_categorical("model.num_cross_attn", [1, 2]) == m
        t.set_user_attr("metrics", {"pretrain/test/i2t_R@1": 10.0 * m})
        study.tell(t, 10.0 * m)
    df = results_table(study, sweep)
    assert list(df["pretrain/test/i2t_R@1"]) == [10.0, 20.0] and list(df["state"]) == ["COMPLETE"] * 2
    md = markdown_table(df)
    assert md.splitlines()[2] == "| 0 | COMPLETE | 1 | 10.00 |"
    (png,) = plot_results(df, sweep, tmp_path)
    assert png.name == "ablation.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(load_sweep("xattn").settings.__dict__)  # settings are plain values


def test_sigterm_to_the_process_group_stops_the_sweep_and_the_rerun_retries_the_trial(tmp_path):
    """SIGTERM to the whole group (a scheduler, `kill -- -PGID`) kills the DataLoader workers too: the
    trial then dies of an ordinary error, which must stop the sweep (trial left for the re-run), not
    be recorded as the trial's own failure while the sweep goes on with the next trial."""
    import signal

    sweep = load_sweep(_write(tmp_path, BASE.replace("[1, 2]", "[1, 2, 3, 4]")), [f"out={tmp_path}"])
    study = open_study(sweep, tmp_path)
    calls = []

    def runner(trial):
        calls.append(trial.suggest_categorical("model.num_cross_attn", [1, 2, 3, 4]))
        if len(calls) == 2:
            note_sigterm(signal.SIGTERM, None)  # what the signal handler does
            raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.")
        return float(calls[-1])

    try:
        with pytest.raises(SweepTerminated) as stop:
            run_workers(sweep, study, runner, [])
    finally:
        TERMINATED.clear()
    assert stop.value.code == 143 and len(calls) == 2  # no third trial started
    states = [t.state.name for t in study.get_trials()]
    assert states == ["COMPLETE", "RUNNING"]  # not FAIL: the re-run retries it
    study = open_study(sweep, tmp_path)
    assert retry_interrupted(study) == [1]
    run_workers(sweep, study, runner, [])
    done = [t.params["model.num_cross_attn"] for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert sorted(done) == [1, 2, 3, 4] and calls[2] == calls[1]  # the interrupted point first, each once


@pytest.mark.parametrize("extra, match", [
    ("seeds: 0\n", "`seeds`"),
    ("seeds: [1, 1]\n", "distinct"),
    ("seeds: [a]\n", "`seeds`"),
    ("seeds: 2\nsampler: tpe\nsweep: {n_trials: 2}\n", "sampler: grid"),
    ("reference: {model.num_cross_attn: 7}\n", "reference.model.num_cross_attn"),
    ("reference: {other: 1}\n", "`reference`"),
])
def test_bad_seeds_and_reference_name_the_key(tmp_path, extra, match):
    with pytest.raises(ConfigError, match=match):
        load_sweep(_write(tmp_path, BASE + extra))


def test_seeds_from_the_file_or_the_command_line():
    assert load_sweep("xattn", ["seeds=2"]).seeds == [0, 1]
    assert load_sweep("xattn", ["seeds=[3,7]"]).seeds == [3, 7]
    sweep = load_sweep("xattn", ["seeds=2"])
    assert sweep.n_trials() == 4 * 2 and search_space(sweep) == {"model.num_cross_attn": [1, 2, 3, 4], "seed": [0, 1]}


class SeededRunner:
    """Stands in for a trial: records the (point, seed) pairs it ran."""

    def __init__(self, runner: TrialRunner):
        self.runner, self.pairs = runner, []

    def __call__(self, trial):
        point = self.runner.suggest(trial)["model.num_cross_attn"]
        override = self.runner.suggest_seed(trial)
        assert override == [f"seed={trial.params['seed']}"]  # what every stage's config gets
        self.pairs.append((point, trial.params["seed"]))
        return float(point)


def test_seeds_run_every_point_once_per_seed_and_a_resume_keeps_finished_pairs(tmp_path):
    sweep = load_sweep(_write(tmp_path, BASE + "seeds: [0, 5]\n"), [f"out={tmp_path}"])
    study = open_study(sweep, tmp_path)
    runner = SeededRunner(TrialRunner(sweep, {}, tmp_path, ""))
    study.optimize(runner, n_trials=2)
    finished = list(runner.pairs)
    killed = study.ask()  # a sweep killed in its third trial: left RUNNING
    killed_pair = (killed.suggest_categorical("model.num_cross_attn", [1, 2]), killed.suggest_categorical("seed", [0, 5]))
    assert killed_pair not in finished

    study = open_study(sweep, tmp_path)
    assert retry_interrupted(study) == [killed.number]
    run_workers(sweep, study, runner, [])
    reruns = runner.pairs[len(finished):]
    assert reruns[0] == killed_pair  # the interrupted pair first
    assert not set(reruns) & set(finished) and len(set(reruns)) == len(reruns) == 2  # no finished pair again
    done = sorted((t.params["model.num_cross_attn"], t.params["seed"]) for t in study.get_trials()
                  if t.state.name == "COMPLETE")
    assert done == [(1, 0), (1, 5), (2, 0), (2, 5)]  # every (point, seed) once
    assert all(t.user_attrs["seed"] == t.params["seed"] for t in study.get_trials() if t.state.name == "COMPLETE")


def test_a_stage_seed_next_to_sweep_seeds_is_refused(tmp_path, capsys):
    sweep_file = _write(tmp_path, BASE + "seeds: 2\n")
    assert sweep_cli.main([f"sweep={sweep_file}", f"sweep.out={tmp_path}/out", "seed=1"]) == 2
    assert "sweep.seeds" in capsys.readouterr().err and not (tmp_path / "out" / "study.db").exists()


def test_ablation_png_is_a_grid_with_the_objectives_first_and_the_reference_marked(tmp_path):
    from PIL import Image

    sweep = load_sweep("xattn", ["seeds=2"])  # 2 objectives + 6 recorded metrics
    study = optuna.create_study(directions=sweep.directions)
    dists = {"model.num_cross_attn": optuna.distributions.CategoricalDistribution([1, 2, 3, 4]),
             "seed": optuna.distributions.CategoricalDistribution([0, 1])}
    for m in (1, 2, 3, 4):
        for seed in (0, 1):
            metrics = {k: 10.0 * m + seed for k in result_metrics(sweep)}
            study.add_trial(optuna.trial.create_trial(params={"model.num_cross_attn": m, "seed": seed},
                                                      distributions=dists, values=[1.0, 1.0],
                                                      user_attrs={"metrics": metrics}))
    df = results_table(study, sweep)
    ablation, pareto = plot_results(df, sweep, tmp_path)
    width, height = Image.open(ablation).size
    assert width / height < 2.5  # 8 panels in rows of 3, not 3520 x 352
    assert pareto.name == "pareto.png" and pareto.read_bytes()[:4] == b"\x89PNG"
    from mammut_pl.sweeps.ablations import Objective
    from mammut_pl.sweeps.plots import plot_ablation

    fig = plot_ablation(df, "model.num_cross_attn", [Objective(o.metric) for o in sweep.objectives],
                                  reference=2)
    first = fig.axes[0]
    assert first.get_title().startswith("pretrain/test/i2t_R@1")  # the objectives first
    assert any("reference 2" in t.get_text() for t in first.get_legend().get_texts())
    # error bars: mean 10m + 0.5 over seeds {10m, 10m + 1}, t interval half-width 12.706 * 0.5
    bars = [c for c in first.collections if hasattr(c, "get_segments")][-1].get_segments()
    assert [tuple(np.round(s[:, 1], 3)) for s in bars][0] == pytest.approx((10.5 - 6.353, 10.5 + 6.353), abs=1e-3)
