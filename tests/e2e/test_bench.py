"""`python -m bench --smoke` runs every section on tiny models and writes
well-formed results. No timing is asserted: benchmarks, not timed tests."""

import json
import math
import subprocess
import sys

import pytest

from bench import contenders, measure, report, run, steps
from tests.helpers import ROOT



@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--threads", "1", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "latest.json").read_text()), proc.stdout


def positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def check_times(t):
    assert t["n"] == len(t["values"]) >= 1
    assert all(positive(v) for v in t["values"])
    assert t["min"] <= t["q1"] <= t["median"] <= t["q3"] <= t["max"]


def test_writes_the_three_files(smoke):
    out, res, stdout = smoke
    dated = [p for p in out.glob("*.json") if p.name != "latest.json"]
    assert len(dated) == 1 and json.loads(dated[0].read_text()) == res
    md = (out / "latest.md").read_text()
    assert md in stdout  # the table is printed too
    assert "| model | params | s/step |" in md and "mammut_pl / CoCa" in md
    assert res["machine"]["cpu"] in md and res["machine"]["versions"]["torch"] in md


def test_machine_and_plan(smoke):
    _, res, _ = smoke
    m = res["machine"]
    assert m["cores"] >= 1 and m["torch_threads"] == 1 and m["cpu"]  # --threads 1
    for pkg in ("torch", "timm", "open_clip"):
        assert m["versions"][pkg]
    # the bench extra is optional (CI installs only .[dev]): installed, or its contender skipped
    assert bool(m["versions"]["mammut_pytorch"]) != ("lucidrains" in res["train"]["skipped"])
    assert res["mode"] == "smoke" and res["plan"]["mode"] == "smoke"
    assert set(run.SECTIONS) <= set(res)
    assert not any("error" in res[s] for s in run.SECTIONS)


def test_training_rows_and_ratios_are_consistent(smoke):
    _, res, _ = smoke
    tr = res["train"]
    assert set(tr["skipped"]) <= {"lucidrains"}
    assert set(tr["rows"]) == {"mammut_pl", "mammut_pl_padded", "coca", "clip", "lucidrains",
                               "image_tower"} - set(tr["skipped"])
    B = tr["batch_size"]
    assert tr["tokens_shape"][0] == B and tr["tokens_shape"][1] <= 76
    for row in tr["rows"].values():
        check_times(row["step_s"]), check_times(row["cpu_s"])
        assert row["step_s"]["n"] == row["cpu_s"]["n"] == tr["rounds"]
        assert math.isclose(row["images_per_s"], B / row["step_s"]["median"], rel_tol=1e-9)
        assert positive(row["params_m"]) and positive(row["state_mb"])
        if row["step_peak_mb"] is not None:
            assert row["step_peak_mb"] >= 0
            assert math.isclose(row["total_mb"], row["state_mb"] + row["step_peak_mb"], rel_tol=1e-9)
    med = {k: r["step_s"]["median"] for k, r in tr["rows"].items()}
    r = tr["ratios"]
    assert math.isclose(r["mammut_pl/coca"], med["mammut_pl"] / med["coca"], rel_tol=1e-9)
    if "lucidrains" in tr["skipped"]:
        assert r["mammut_pl/lucidrains"] is None
    else:
        assert math.isclose(r["mammut_pl/lucidrains"], med["mammut_pl"] / med["lucidrains"], rel_tol=1e-9)
    assert math.isclose(r["mammut_pl/clip"], med["mammut_pl"] / med["clip"], rel_tol=1e-9)
    assert math.isclose(r["image_tower/coca"], med["image_tower"] / med["coca"], rel_tol=1e-9)
    flops = {k: row["tflop_per_step"] for k, row in tr["rows"].items()}
    assert all(positive(f) for f in flops.values())
    for k, row in tr["rows"].items():
        assert math.isclose(row["tflops"], flops[k] / med[k], rel_tol=1e-9)
    assert math.isclose(r["flops mammut_pl/coca"], flops["mammut_pl"] / flops["coca"], rel_tol=1e-9)
    assert flops["image_tower"] < flops["mammut_pl"]  # the floor is a part of mammut_pl's step
    assert flops["mammut_pl_padded"] > flops["mammut_pl"]  # packing skips the padding's work
    assert math.isclose(r["image_tower/mammut_pl"], med["image_tower"] / med["mammut_pl"], rel_tol=1e-9)
    cpu = {k: r["cpu_s"]["median"] for k, r in tr["rows"].items()}
    assert math.isclose(r["cpu mammut_pl/coca"], cpu["mammut_pl"] / cpu["coca"], rel_tol=1e-9)
    text_s = med["mammut_pl"] - med["image_tower"]  # the efficiency row, by its definition (issue 18)
    if text_s > 0:
        want = ((flops["mammut_pl"] - flops["image_tower"]) / text_s) / (flops["image_tower"] / med["image_tower"])
        assert math.isclose(r["text_side_efficiency"], want, rel_tol=1e-9)
    else:
        assert r["text_side_efficiency"] is None
    assert "text-side efficiency" in report.markdown(res) or r["text_side_efficiency"] is None


def test_text_side_efficiency_hand_worked():
    """The issue's own numbers: floor 208 GFLOP in 2.19 s (95 GFLOP/s), full step 289 GFLOP in 3.88 s;
    the text side did 81 GFLOP in 1.69 s (47.9 GFLOP/s): efficiency 47.93 / 94.98 = 0.5046."""
    rows = {"mammut_pl": {"tflop_per_step": 0.289, "step_s": {"median": 3.88}},
            "image_tower": {"tflop_per_step": 0.208, "step_s": {"median": 2.19}}}
    assert measure.text_side_efficiency(rows) == pytest.approx((81 / 1.69) / (208 / 2.19), rel=1e-12)
    assert measure.text_side_efficiency(rows) == pytest.approx(0.5046, abs=1e-4)
    rows["mammut_pl"]["step_s"]["median"] = 2.0  # faster than the floor alone: no text-side time to divide by
    assert measure.text_side_efficiency(rows) is None
    assert measure.text_side_efficiency({"mammut_pl": rows["mammut_pl"]}) is None


def test_the_floor_is_mammut_pls_own_image_tower():
    """The floor contender holds exactly mammut_pl's image encoder and image projection."""
    floor = contenders.build_image_tower("tiny")[0].model
    full = contenders.build_mammut_pl("tiny", with_padded=False)[0].model
    tower = [p.numel() for n, p in full.named_parameters() if n.startswith(("visual.", "image_proj."))]
    assert sum(p.numel() for p in floor.parameters()) == sum(tower)
    assert [n for n, _ in floor.named_parameters()] == \
        [n for n, _ in full.named_parameters() if n.startswith(("visual.", "image_proj."))]


def test_overhead_generation_retrieval_data(smoke):
    _, res, _ = smoke
    ov = res["overhead"]
    full, con = ov["rows"]["full"]["step_s"], ov["rows"]["contrastive_only"]["step_s"]
    check_times(full), check_times(con)
    check_times(ov["rows"]["full"]["cpu_s"])
    assert math.isclose(ov["ratios"]["full/contrastive"], full["median"] / con["median"], rel_tol=1e-9)

    ge = res["generate"]
    plan = res["plan"]
    assert [at["batch_size"] for at in ge["by_batch"]] == [plan["gen_batch"], plan["gen_eval_batch"]]
    assert ge["batch_size"] == plan["gen_eval_batch"] and ge["speedup"] == ge["by_batch"][-1]["speedup"]
    for at in ge["by_batch"]:
        assert at["identical_tokens"] is True
        assert at["tokens_shape"] == [at["batch_size"], at["new_tokens"]] and at["new_tokens"] == 30
        for row in at["rows"].values():
            check_times(row["time_s"]), check_times(row["cpu_s"])
            assert math.isclose(row["tokens_per_s"], at["batch_size"] * at["new_tokens"] / row["time_s"]["median"],
                                rel_tol=1e-9)
        assert math.isclose(at["speedup"], at["rows"]["cache"]["tokens_per_s"] / at["rows"]["no_cache"]["tokens_per_s"],
                            rel_tol=1e-9)

    rt = res["retrieval"]
    assert rt["n_texts"] == 5 * rt["n_images"]
    check_times(rt["time_s"])
    assert rt["peak_extra_mb"] is None or rt["peak_extra_mb"] >= 0

    da = res["data"]
    assert set(da["shards"]) == {"laion_256", "datacomp_512"}
    for sh in da["shards"].values():
        rows = sh["rows"]
        assert set(rows) == {"open_clip", "fast", "fast_pil", "float"}
        for row in rows.values():
            check_times(row["time_s"])
            # every pipeline drops its partial last batch: a pass yields whole batches only
            assert 0 < row["images"] <= plan["data_images"] and row["images"] % plan["data_batch"] == 0
            assert math.isclose(row["images_per_s"], row["images"] / row["time_s"]["median"], rel_tol=1e-9)
        for key in ("fast", "fast_pil", "float"):
            assert math.isclose(sh["ratios"][f"{key}/open_clip"],
                                rows[key]["images_per_s"] / rows["open_clip"]["images_per_s"], rel_tol=1e-9)
    assert {"coco_train", "coco_eval", "vqav2_train", "msrvtt_train_clip", "msrvtt_eval_clip"} == set(da["readers"])
    assert all(positive(r["images_per_s"]) for r in da["readers"].values())

    ev = res["eval"]
    assert ev["batch_size"] == plan["eval_batch"] and ev["beams"] == plan["beams"]
    for name in ("retrieval", "greedy", "beam"):
        check_times(ev["rows"][name]["time_s"])
        assert math.isclose(ev["rows"][name]["per_s"], ev["batch_size"] / ev["rows"][name]["time_s"]["median"],
                            rel_tol=1e-9)
    md = (smoke[0] / "latest.md").read_text()
    assert "open_clip get_wds_dataset" in md and "zero-shot retrieval" in md


def test_compiled_step_row(smoke):
    """The compile section: the compiled step (dynamo only in --smoke) against eager on one model and
    batch, then batches of other text lengths without a graph break or a recompile."""
    out, res, _ = smoke
    co = res["compile"]
    assert co["backend"] == res["plan"]["compile_backend"] == "eager"
    for row in co["rows"].values():
        check_times(row["step_s"]), check_times(row["cpu_s"])
    assert math.isclose(co["ratios"]["compiled/eager"],
                        co["rows"]["compiled"]["step_s"]["median"] / co["rows"]["eager"]["step_s"]["median"], rel_tol=1e-9)
    lengths = co["text_lengths"]  # [T, N, M] of each batch: all different, T among them
    assert len({tuple(x) for x in lengths}) == len(lengths) == res["plan"]["compile_batches"]
    assert len({x[0] for x in lengths}) > 1 and all(x[0] * co["batch_size"] >= x[1] >= x[2] for x in lengths)
    assert co["graph_breaks"] == 0 and co["recompiles"] <= 2 and positive(co["first_compiled_step_s"])
    assert "compiled step: graph breaks / recompiles" in (out / "latest.md").read_text()


def test_summary_and_cli_validation():
    s = measure.summary([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)
    with pytest.raises(SystemExit):
        run.main(["--sections", "train,nonsense"])
    with pytest.raises(SystemExit):
        run.main(["--quick", "--smoke"])
    with pytest.raises(SystemExit):
        run.main(["--smoke", "--batch", "0"])


def test_batch_option_sets_the_training_step_batch(tmp_path):
    res = run.run("smoke", tmp_path, ["train"], log=lambda _: None, batch=3)
    assert res["plan"]["batch"] == 3 and res["train"]["batch_size"] == 3 and res["train"]["tokens_shape"][0] == 3
    with pytest.raises(SystemExit):
        run.main(["--threads", "0"])


@pytest.mark.parametrize("module", ["bench", "mammut_pl.bench"])  # the old form still runs the benchmark
def test_both_command_forms_reach_the_benchmark(module, tmp_path):
    proc = subprocess.run([sys.executable, "-m", module, "--quick", "--smoke"], cwd=tmp_path if module == "mammut_pl.bench"
                          else ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "python -m bench" in proc.stderr, proc.stderr[-2000:]


def test_a_missing_extra_skips_its_contender_with_the_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "mammut_pytorch", None)  # import raises ModuleNotFoundError
    skipped = {}
    assert contenders.optional(contenders.build_lucidrains, "tiny", skipped) == []
    assert list(skipped) == ["lucidrains"] and "mammut_pytorch not installed" in skipped["lucidrains"]
    res = {"machine": {"cpu": "x", "cores": 2, "torch_threads": 2, "gpu": None, "versions": {
        "torch": "t", "timm": "t", "open_clip": "o", "mammut_pytorch": None}}, "mode": "smoke", "date": "d",
        "train": {"precision": "fp32", "batch_size": 1, "tokens_shape": [1, 5], "rounds": 1, "warmup_rounds": 1,
                  "rows": {}, "skipped": skipped, "ratios": {k: None for k in (
                      "mammut_pl/coca", "mammut_pl/lucidrains", "mammut_pl/clip", "mammut_pl/mammut_pl_padded")}}}
    md = report.markdown(res)
    assert "| lucidrains | skipped: mammut_pytorch not installed" in md
    assert "| step time mammut_pl / lucidrains MaMMUT (CPU; FLOPs per step: n/a) | n/a |" in md


def test_the_gpu_section_dry_runs_on_cpu(monkeypatch):
    """section_gpu's code path (bf16 autocast, eager and 'compiled' runs, FLOPs, the ViT-B/16 MFU rows,
    its markdown lines) on CPU with tiny models, torch.compile replaced by the eager model: what
    can break before a GPU is ever lent. No number here means anything."""
    import torch

    monkeypatch.setattr(contenders.Contender, "compiled", lambda self: self)
    torch.set_num_threads(1)
    gpu = steps.section_gpu(measure.make_plan("smoke"), torch.device("cpu"))
    assert gpu["precision"] == "bf16-mixed" and gpu["peak_bf16_tflops"] is None
    for key in ("eager", "compiled"):
        run = gpu["runs"][key]
        assert "error" not in run, run.get("error")
        rows = run["rows"]
        assert {"mammut_pl", "coca", "clip"} <= set(rows)
        med = {k: r["step_s"]["median"] for k, r in rows.items()}
        assert math.isclose(run["ratios"]["mammut_pl/coca"], med["mammut_pl"] / med["coca"], rel_tol=1e-9)
    assert "tflops" in gpu["runs"]["eager"]["rows"]["mammut_pl"]  # FLOPs counted on the eager run only
    mfu = gpu["b16_mfu"]
    assert "error" not in mfu, mfu.get("error")
    for row in mfu.values():
        assert math.isclose(row["tflops"], row["tflop_per_step"] / row["step_s"]["median"], rel_tol=1e-9)
        assert row["mfu"] is None  # no peak figure for a CPU
    res = {"machine": {"cpu": "x", "cores": 2, "torch_threads": 1, "gpu": "cpu", "versions": {
        "torch": "t", "timm": "t", "open_clip": "o", "mammut_pytorch": None}}, "mode": "smoke", "date": "d", "gpu": gpu}
    md = report.markdown(res)
    assert md.count("| GPU cpu bf16 batch 8 ") == 2 and "mammut_pl / CoCa" in md


def test_profile_table_is_the_full_step_minus_the_floor(tmp_path):
    from bench import profile

    lines = profile.table({"aten::mm": 10.0, "aten::add": 3.0}, {"aten::mm": 6.0, "aten::fill_": 1.0}, (2.0, 1.5), top=5)
    rows = [line for line in lines if line.startswith("| `")]
    assert rows == ["| `aten::mm` | 10.0 | 6.0 | 4.0 | 57.1% |", "| `aten::add` | 3.0 | 0.0 | 3.0 | 42.9% |",
                    "| `aten::fill_` | 0.0 | 1.0 | -1.0 | -14.3% |"]
    assert "text side 0.50 s" in lines[0]
    out = tmp_path / "profile.md"
    assert profile.main(["--scale", "tiny", "--steps", "1", "--warmup", "1", "--threads", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert "aten::mm" in text or "aten::addmm" in text  # the tiny step's matrix products were profiled
