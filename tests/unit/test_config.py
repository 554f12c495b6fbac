"""Config: typed defaults <- experiment <- overrides; bad keys/values named before any work."""

import pytest
from omegaconf import OmegaConf

from mammut_pl import config as C
from mammut_pl.fit import main
from mammut_pl.tasks import load_config
from tests.helpers import TEST_DATA


def test_every_experiment_loads():
    assert {"demo", "pretrain"} <= set(C.list_experiments())
    for name in C.list_experiments():
        cfg = C.load(name)
        assert cfg.experiment == name


def test_override_order():
    cfg = C.load("demo", ["model.num_cross_attn=1", "optim.lr=0.1"])
    assert cfg.model.num_cross_attn == 1 and cfg.optim.lr == 0.1
    assert cfg.model.width == 192  # from demo.yaml
    assert cfg.loss.contrastive == "focal"  # typed default
    assert cfg.model.cross_attn_layers == (3,)


@pytest.mark.parametrize("overrides, message", [
    (["optim.lrr=1"], "unknown config key `optim.lrr`.*Did you mean `optim.lr`"),
    (["modle.width=3"], "unknown config key `modle`.*Did you mean `model`"),
    (["model.width=abc"], "bad value for `model.width`"),
    (["model.num_cross_attn=9"], "model.num_cross_attn=9: must be between 0 and model.depth=4"),
    (["loss.caption_weight=-1"], "loss.caption_weight"),
    (["loss.caption_weight=0", "loss.contrastive_weight=0"], "cannot both be 0"),  # pretrain's own check
    (["model.image_size=60"], None),  # checked when the encoder is built (patch size known): see test_model
    (["trainer.max_step=3"], "trainer.max_step.*Did you mean `trainer.max_steps`"),
    (["trainer.logger=false"], "trainer.logger"),
    (["data.name=imagenet"], "data.name"),
    (["task=pretrian"], "`task`: 'pretrian' is not one of pretrain, .*Did you mean task=pretrain"),
    (["data.name=msrvtt"], "task=pretrain reads data.name=webdata or coco, not 'msrvtt'"),  # the TaskSpec's datasets
    (["loss.contrastive=hinge"], "loss.contrastive"),
])
def test_bad_config_named(overrides, message):
    if message is None:
        C.load("demo", overrides)
        return
    with pytest.raises(C.ConfigError, match=message):
        load_config("demo", overrides)  # config.load's checks, then the task's own


def test_experiment_typo_suggests():
    with pytest.raises(C.ConfigError, match="Did you mean experiment=demo"):
        C.load("dmeo")


def test_cli_exit_codes(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "pretrain" in out and "ckpt_path" in out and "model.preset=NAME (test, tiny," in out
    assert main(["experiment=demo", "print_config=true", "model.depth=6"]) == 0
    out = capsys.readouterr().out
    assert "depth: 6" in out and "encoder: vit_tiny_patch16_224" in out
    assert main(["experiment=demo", "optim.lrr=1"]) == 2
    assert "Did you mean `optim.lr`" in capsys.readouterr().err
    assert main(["experiment=demo", "notakeyvalue"]) == 2


def test_the_tasks_own_checks_run_before_any_work(capsys, tmp_path):
    """fit refuses a task on a dataset it does not read (its TaskSpec's datasets) with exit 2, and
    runtime.run checks a config that did not come through load_config before it writes anything."""
    from mammut_pl.runtime import run

    assert main(["experiment=demo", "data.name=vqav2", f"output_dir={tmp_path}"]) == 2
    assert "`data.name`: task=pretrain reads data.name=webdata or coco, not 'vqav2'" in capsys.readouterr().err
    unchecked = C.load("lvis", ["detection.image_size=100", f"output_dir={tmp_path}"])  # config.load knows no task
    with pytest.raises(C.ConfigError, match="`detection.image_size`: 100 must be divisible by the encoder's patch size 8"):
        run(unchecked)
    assert not any(tmp_path.iterdir())  # no run dir, no data prepared


def test_flatten_for_mlflow():
    flat = C.flatten(C.to_dict(C.load("demo")))
    assert flat["model.width"] == 192 and flat["trainer.max_steps"] == 1500
    assert all("." in k or k in {"experiment", "task", "seed", "ckpt_path", "output_dir", "print_config",
                                 "checkpoint_every_n_steps"} for k in flat)


# every group's typed defaults are valid together: each task with only the switches that select it
TASK_SELECTORS = {
    "pretrain": [], "captioning": ["data.name=coco"], "vqa": ["data.name=vqav2"],
    "video_qa": ["data.name=msrvtt"], "video_captioning": ["data.name=msrvtt"], "detection": ["data.name=lvis"],
}


@pytest.mark.parametrize("task", TASK_SELECTORS)
def test_typed_defaults_of_every_task_validate(task):
    cfg = load_config("", [f"task={task}", *TASK_SELECTORS[task]])
    assert cfg.task == task


def test_typed_video_defaults_are_tubevits_clip():
    """32 frames, one 2D frame (stride 32) and the three tubes, each yielding tubes (the clip check)."""
    cfg = C.load("", ["task=video_qa", "data.name=msrvtt"])
    v = cfg.video
    assert (v.num_frames, v.frame_stride, v.frame_indices(v.num_frames)) == (32, 32, [0])
    assert all(0 not in s.grid(v.num_frames, cfg.model.image_size, cfg.model.image_size) for s in v.specs)
    with pytest.raises(C.ConfigError, match="16x4x4"):  # the old default clip length is refused
        load_config("", ["task=video_qa", "data.name=msrvtt", "video.num_frames=16"])


def test_experiments_resolve_as_before_presets():
    """The experiment files lost their repeated model block (now `model.preset: tiny`) and the keys that
    restated typed defaults; every experiment must still resolve to the config its old file gave
    (tests/data/experiments_resolved.json, dumped from the files before that edit; when keys move,
    regenerated with `{name: to_dict(load(name))}` after checking that the diff only moves keys)."""
    import json

    before = json.loads((TEST_DATA / "experiments_resolved.json").read_text())
    assert set(before) <= set(C.list_experiments())
    for name, resolved in before.items():
        now = json.loads(json.dumps(C.to_dict(C.load(name))))  # tuples -> lists, as the snapshot
        assert now == resolved, name


def test_model_preset_then_explicit_keys():
    from mammut_pl.model.config import PRESETS

    cfg = C.load("", ["model.preset=tiny", "model.depth=2", "model.num_cross_attn=1"])
    assert (cfg.model.encoder, cfg.model.width, cfg.model.encoder_kwargs) == (
        PRESETS["tiny"]["encoder"], PRESETS["tiny"]["width"], PRESETS["tiny"]["encoder_kwargs"])
    assert cfg.model.depth == 2 and cfg.model.num_cross_attn == 1  # explicit keys win over the preset
    # a preset on the command line sets the whole architecture, even over an experiment's model keys:
    # demo's ViT kwargs (patch 8, 4 blocks) do not leak into b32
    b32 = C.load("demo", ["model.preset=b32"])
    assert b32.model.architecture() == C.MaMMUTConfig.from_name("b32", cpe_grid=b32.model.cpe_grid)  # derived
    assert b32.data.batch_size == 64  # the rest of the experiment stays


def test_model_preset_unknown_named():
    with pytest.raises(C.ConfigError, match=r"`model.preset` \(command line\).*tiyn.*Did you mean `model.preset=tiny`"):
        C.load("demo", ["model.preset=tiyn"])


def test_experiment_base_file(tmp_path):
    """`base: NAME` merges experiments/base/NAME.yaml first; the experiment's own keys win; an unknown
    base is named with the known ones."""
    own = tmp_path / "mine.yaml"
    own.write_text("base: demo_scale\ntask: captioning\ndata: {name: coco, root: data/demo/coco, batch_size: 8}\n")
    cfg = C.load(str(own))
    assert cfg.data.batch_size == 8  # own key over the base's 64
    assert cfg.data.tokenizer == "data/demo/tokenizer.json" and cfg.model.width == 192  # from the base
    assert cfg.trainer["max_steps"] == 1500
    own.write_text("base: demo_scael\ntask: pretrain\n")
    with pytest.raises(C.ConfigError, match=r"`base` \(.*mine.yaml\): no file .*demo_scael.yaml. Known: demo_scale"):
        C.load(str(own))
    assert "base" not in C.list_experiments()  # bases are not experiments


@pytest.fixture
def renamed_key(monkeypatch):
    """A rename in the table (the real entries come and go with the config's history)."""
    monkeypatch.setitem(C.RENAMED, "eval.num_examples_shown", "eval.num_examples")
    return "eval.num_examples_shown", "eval.num_examples"


def test_renamed_key_names_the_new_one(renamed_key, tmp_path):
    old, new = renamed_key
    with pytest.raises(C.ConfigError, match=rf"^`{old}` was renamed to `{new}` \(command line\)$"):
        C.load("demo", [f"{old}=3"])
    yaml = tmp_path / "old.yaml"
    yaml.write_text("eval:\n  num_examples_shown: 3\n")
    with pytest.raises(C.ConfigError, match=rf"`{old}` was renamed to `{new}` \(.*old.yaml\)"):
        C.load(str(yaml))


def test_moved_data_keys_name_their_new_place(tmp_path):
    with pytest.raises(C.ConfigError, match=r"^`video.captions_file` was renamed to `data.msrvtt.captions_file`"):
        C.load("msrvtt_qa", ["video.captions_file=x.json"])
    yaml = tmp_path / "old.yaml"
    yaml.write_text("base: demo_scale\ntask: detection\ndata: {name: lvis}\ndetection:\n  val_file: v.json\n")
    with pytest.raises(C.ConfigError, match=r"`detection.val_file` was renamed to `data.lvis.val_file` \(.*old.yaml\)"):
        C.load(str(yaml))
    assert C.load("lvis", ["data.lvis.test_file=t.json"]).data.lvis.test_file == "t.json"
    with pytest.raises(C.ConfigError, match=r"^`detection.jitter_max` was renamed to `data.lvis.jitter_max`"):
        C.load("lvis", ["detection.jitter_max=1.5"])  # LVIS' scale jitter is the datamodule's
    assert C.load("lvis").data.lvis.jitter_max == 1.25


@pytest.mark.parametrize("old, new", [
    ("data.val_root", "data.webdata.val_root"), ("data.shards", "data.webdata.shards"),
    ("data.karpathy_file", "data.coco.karpathy_file"), ("data.train_split", "data.vqav2.train_split"),
])
def test_flat_data_keys_name_their_section(old, new, tmp_path):
    """`data.*` was one flat union of the datamodules' fields: each dataset's own keys moved to its section."""
    with pytest.raises(C.ConfigError, match=rf"^`{old}` was renamed to `{new}` \(command line\)$"):
        C.load("demo", [f"{old}=x"])
    *_, section, leaf = new.split(".")
    yaml = tmp_path / "old.yaml"
    yaml.write_text(f"base: demo_scale\ndata:\n  {old.split('.')[1]}: x\n")
    with pytest.raises(C.ConfigError, match=rf"^`{old}` was renamed to `{new}` \(.*old.yaml\)$"):
        C.load(str(yaml))


def test_fit_with_an_old_data_key_fails_in_one_line(capsys):
    """`fit experiment=vqa data.val_split=...` (the flat key of before) stops with exit code 2 and one
    line naming the new key, before any work."""
    assert main(["experiment=vqa", "data.val_split=val2014"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: `data.val_split` was renamed to `data.vqav2.val_split` (command line)"]


def test_shared_data_key_names_the_section_of_its_dataset():
    """A key several datamodules read (data.test_split) names the section of the run's data.name,
    wherever data.name is set (experiment or the same command line); without one, all of them."""
    with pytest.raises(C.ConfigError, match=r"^`data.test_split` was renamed to `data.vqav2.test_split` \(command line\)$"):
        C.load("vqa", ["data.test_split=val2014"])
    with pytest.raises(C.ConfigError, match=r"^`data.vqa_prompt` was renamed to `data.msrvtt.prompt` \(command line\)$"):
        C.load("", ["task=video_qa", "data.name=msrvtt", "data.vqa_prompt=q: {question}"])
    with pytest.raises(C.ConfigError, match=r"^`data.test_split` was renamed to `data.coco.test_split` or "
                                            r"`data.vqav2.test_split` or `data.msrvtt.test_split` \(command line, "):
        C.load("demo", ["data.test_split=val"])  # webdata has no test split of its own
    assert C.load("vqa").data.vqav2.test_split == "val2014"


def test_removed_data_extra_says_so():
    with pytest.raises(C.ConfigError, match=r"^`data.extra` was removed \(command line\): it was read by no datamodule"):
        C.load("demo", ["data.extra.a=1"])
    stored = C.to_dict(C.load("demo"))
    stored["data"]["extra"] = {}  # as every config stored before the removal
    assert C.from_dict(stored) == C.load("demo")


def test_stored_flat_data_config_loads_into_the_sections():
    """A checkpoint's config from before the data sections (a hand-written old `vqa` run): each old key's
    value lands where the datamodule now reads it; shared keys go to the run's own dataset only."""
    stored = C.to_dict(C.load("vqa"))
    d = stored["data"]
    for section in ("webdata", "coco", "vqav2", "msrvtt"):
        del d[section]
    d.update(val_root="", shards="", karpathy_file="dataset_coco.json", train_split="train2014+val2014",
             val_split="val2014", test_split="val2014", vqa_prompt="Q: {question} A:", max_answer_tokens=5,
             max_eval_questions=7, extra={})
    stored["video"]["captions_file"] = "old.json"
    cfg = C.from_dict(stored)
    q = cfg.data.vqav2
    assert (q.train_split, q.val_split, q.test_split, q.prompt, q.max_answer_tokens, q.max_eval_questions) == (
        "train2014+val2014", "val2014", "val2014", "Q: {question} A:", 5, 7)
    assert cfg.data.msrvtt.captions_file == "old.json"
    assert (cfg.data.coco.test_split, cfg.data.msrvtt.prompt) == ("test", C.MSRVTTSettings().prompt)  # not read: defaults
    pre = C.to_dict(C.load("demo"))
    for section in ("webdata", "coco"):
        del pre["data"][section]
    pre["data"].update(val_root="data/demo/coco", test_split="val", max_eval_images=3)
    cfg = C.from_dict(pre)  # web shards validate on COCO: their shared keys are COCO's
    assert (cfg.data.webdata.val_root, cfg.data.coco.test_split, cfg.data.coco.max_eval_images) == (
        "data/demo/coco", "val", 3)


def test_stored_config_with_renamed_key_is_moved_over(renamed_key):
    """An older checkpoint's config (old key) loads, its value under the new key."""
    stored = C.to_dict(C.load("demo"))
    del stored["eval"]["num_examples"]
    stored["eval"]["num_examples_shown"] = 3
    assert C.from_dict(stored).eval.num_examples == 3
    assert stored["eval"]["num_examples_shown"] == 3  # the caller's dict is left as it was


def test_renamed_table_targets_exist():
    """Every new name in RENAMED is a key of the typed config (a rename into nothing would be a trap)."""
    valid = set(C._valid_keys(OmegaConf.structured(C.Config)))
    new = {k for old in C.RENAMED for k in C.renamed.new_keys(old)}
    assert new <= valid, new - valid
    assert not (set(C.RENAMED) | set(C.REMOVED)) & valid  # and no old name is still a key


def test_one_conversion_back_to_the_architecture_configs():
    """model.* and video.* extend the torch-free architecture configs; `.architecture()` gives each back."""
    from mammut_pl.model.video_config import VideoConfig

    cfg = C.load("msrvtt_qa")
    model, video = cfg.model.architecture(), cfg.video.architecture()
    assert type(model) is C.MaMMUTConfig and type(video) is VideoConfig
    assert model == C.MaMMUTConfig(**{k: getattr(cfg.model, k) for k in C.MaMMUTConfig.__dataclass_fields__})
    assert video.tube_specs == ["8x8x8 8x8x8 0x0x0"] and video.tube_specs is not cfg.video.tube_specs
