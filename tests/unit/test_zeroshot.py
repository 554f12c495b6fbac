"""Zero-shot classification: the metric against sklearn, the classifier and the accuracy against open_clip's
own `build_zero_shot_classifier` / `open_clip_train.zero_shot.run`, class names and templates, the reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, recall_score, top_k_accuracy_score

from mammut_pl.data.imagefolder import ClassFolders, image_folder_loader
from mammut_pl.data.tokenizer import ClipTokenizer
from mammut_pl.metrics.zeroshot import ZeroShotAccuracy
from mammut_pl.model import MaMMUT, MaMMUTConfig
from mammut_pl.tasks.zeroshot import ImageTextModel, run_zeroshot, suite_tokenize
from mammut_pl.zeroshot import build_classifier, class_names, imagenet_wnids, read_classnames, read_templates


# --- the metric ----------------------------------------------------------------------------------------
def test_metric_matches_sklearn_on_unbalanced_classes():
    g = torch.Generator().manual_seed(0)
    C = 12
    # unbalanced: class c has ~ (c + 1) images; class 7 has none (left out of the mean recall)
    labels = torch.tensor([c for c in range(C) if c != 7 for _ in range(c + 1)])
    logits = torch.randn(len(labels), C, generator=g)
    logits[torch.arange(len(labels)), labels] += 1.2  # better than chance, so every score is informative
    metric = ZeroShotAccuracy(C)
    for chunk in torch.arange(len(labels)).split(17):  # several updates, as batches arrive
        metric.update(logits[chunk], labels[chunk])
    out = metric.compute()
    y, s = labels.numpy(), logits.numpy()
    pred = s.argmax(1)
    assert out["top1"].item() == pytest.approx(100 * (pred == y).mean())
    assert out["top5"].item() == pytest.approx(100 * top_k_accuracy_score(y, s, k=5, labels=range(C)))
    assert out["mean_per_class_recall"].item() == pytest.approx(100 * balanced_accuracy_score(y, pred))
    assert out["top1"].item() != pytest.approx(out["mean_per_class_recall"].item())  # unbalanced: they differ
    present = [c for c in range(C) if c != 7]
    np.testing.assert_allclose(out["recall@1"][present].numpy(),
                               100 * recall_score(y, pred, labels=present, average=None, zero_division=0))
    top5 = np.argsort(-s, 1)[:, :5]
    for c in present:  # brute force per-class top-5 recall
        rows = y == c
        assert out["recall@5"][c].item() == pytest.approx(100 * (top5[rows] == c).any(1).mean())
    assert out["images"].tolist() == [int((y == c).sum()) for c in range(C)]


def test_metric_rejects_bad_shapes_and_labels():
    m = ZeroShotAccuracy(3)
    with pytest.raises(ValueError, match=r"logits \(N, 3\)"):
        m.update(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        m.update(torch.zeros(2, 3), torch.tensor([0, 3]))


# --- against open_clip ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_model() -> tuple[MaMMUT, ClipTokenizer, MaMMUTConfig]:
    torch.manual_seed(0)
    cfg = MaMMUTConfig.from_name("test", vocab_size=49408, bos_id=49406, eos_id=49407, pad_id=0, context_length=24)
    return MaMMUT(cfg).eval(), ClipTokenizer(), cfg


class OpenClipAdapter(torch.nn.Module):
    """What open_clip's zero-shot code calls: encode_text(tokens, normalize=True) and model(image=...)."""

    def __init__(self, model: MaMMUT) -> None:
        super().__init__()
        self.model = model

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.model.encode_text(tokens, normalize=normalize)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image_features": self.model.encode_image(image)}


def test_classifier_equals_open_clip_build_zero_shot_classifier(clip_model):
    from open_clip import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, build_zero_shot_classifier

    model, tok, cfg = clip_model
    names = list(IMAGENET_CLASSNAMES[:7])
    tokenize = suite_tokenize(tok, cfg.context_length)
    ref = build_zero_shot_classifier(OpenClipAdapter(model), tokenizer=lambda t: tok(t, cfg.context_length),
                                     classnames=names, templates=OPENAI_IMAGENET_TEMPLATES, num_classes_per_batch=3)
    # 7 x 80 texts in batches of 37: chunks cut through classes, the result must not depend on it
    ours = build_classifier(model.encode_text, tokenize, names, read_templates("openai"), text_batch_size=37)
    assert ours.shape == (7, cfg.embed_dim) and ref.shape == (cfg.embed_dim, 7)
    torch.testing.assert_close(ours, ref.T, rtol=0, atol=1e-6)
    assert not torch.allclose(ours[0], ours[1], atol=1e-3)  # the classes are told apart
    simple = build_classifier(model.encode_text, tokenize, names, read_templates("simple"), text_batch_size=37)
    assert (simple - ours).abs().max() > 1e-3  # the templates matter


def noise_folder(root: Path, classes: int, per_class: int, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for k in range(per_class):
            pixels = rng.integers(0, 256, (size, size + 8 * c, 3), dtype=np.uint8)  # non-square: resize + crop
            Image.fromarray(pixels).save(root / f"class_{c}" / f"{k}.png")
    return root


@torch.no_grad()
def open_clip_run(model, classifier, loader) -> tuple[float, float]:
    """open_clip_train.zero_shot.run's loop and accuracy() (its float(np.ndarray) fails under NumPy 2)."""
    top1 = top5 = n = 0
    for images, target in loader:
        logits = 100.0 * model(image=images)["image_features"] @ classifier
        pred = logits.topk(5, 1, True, True)[1].t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        top1, top5, n = top1 + correct[:1].sum().item(), top5 + correct[:5].sum().item(), n + len(target)
    return top1 / n, top5 / n


def test_accuracy_equals_open_clip_zero_shot_run(clip_model, tmp_path):
    from open_clip import build_zero_shot_classifier
    from torchvision.datasets import ImageFolder

    from mammut_pl.data.transforms import image_transform

    model, tok, cfg = clip_model
    root = noise_folder(tmp_path / "folder", classes=7, per_class=6)
    zs = ImageTextModel(model, suite_tokenize(tok, cfg.context_length), image_transform(cfg.image_size, False), "test")
    report = run_zeroshot(zs, str(root), templates="simple", batch_size=5, num_workers=0,
                          trainer_kwargs={"accelerator": "cpu", "enable_progress_bar": False})
    # open_clip's own loop over torchvision's ImageFolder, with its classifier
    names = [f"class {c}" for c in range(7)]
    adapter = OpenClipAdapter(model)
    classifier = build_zero_shot_classifier(adapter, lambda t: tok(t, cfg.context_length), names,
                                            read_templates("simple"), num_classes_per_batch=10)
    loader = torch.utils.data.DataLoader(ImageFolder(str(root), image_transform(cfg.image_size, False)), batch_size=4)
    top1, top5 = open_clip_run(adapter, classifier, loader)
    assert report["images"] == 42 and report["classes"] == 7 and report["classnames"] == "folder names"
    assert report["metrics"]["top1"] == pytest.approx(100 * top1, abs=1e-4)
    assert report["metrics"]["top5"] == pytest.approx(100 * top5, abs=1e-4)
    assert 0 < top1 < 1 and top5 > top1  # neither trivially 0 nor all right
    per_class = report["per_class"]
    assert [c["folder"] for c in per_class] == [f"class_{c}" for c in range(7)]
    assert sum(c["top1"] * c["images"] for c in per_class) / 42 == pytest.approx(report["metrics"]["top1"])
    assert report["metrics"]["mean_per_class_recall"] == pytest.approx(np.mean([c["top1"] for c in per_class]))


# --- class names, templates, the folder ------------------------------------------------------------------
def test_imagenet_names_follow_sorted_wordnet_ids():
    from open_clip import IMAGENET_CLASSNAMES

    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and list(wnids) == sorted(wnids) and len(IMAGENET_CLASSNAMES) == 1000
    names, source = class_names(list(wnids))
    assert source == "imagenet-1k" and names == list(IMAGENET_CLASSNAMES)
    # standard indices: 0 tench (n01440764), 1 goldfish (n01443537), 999 toilet tissue (n15075141)
    assert (names[0], names[1], wnids[999]) == ("tench", "goldfish", "n15075141")
    subset, source = class_names(["n01443537", "n15075141"])
    assert subset == ["goldfish", IMAGENET_CLASSNAMES[999]] and "2 classes" in source
    assert class_names(["red_circle", "n01443537"]) == (["red circle", "n01443537"], "folder names")
    assert len(read_templates("openai")) == 80 and read_templates("openai")[0] == "a bad photo of a {}."
    assert len(read_templates("simple")) == 7 and read_templates("simple")[0] == "itap of a {}."


def test_classnames_and_templates_files(tmp_path):
    folders = ["b_dir", "a_dir"]
    cases = {"pos.txt": "bee\n\nant\n", "map.txt": "a_dir\tant\nb_dir\tbee\n", "list.json": '["bee", "ant"]',
             "map.json": '{"a_dir": "ant", "b_dir": "bee"}'}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        assert read_classnames(tmp_path / name, folders) == ["bee", "ant"], name
    bad = {"count.txt": ("one\n", r"count.txt: 1 class names for 2 class folders"),
           "missing.json": ('{"a_dir": "ant"}', r"missing.json: no name for the class folder\(s\) b_dir"),
           "mixed.txt": ("a_dir\tant\nbee\n", r"mixed.txt: mixes"),
           "broken.json": ("[1,", r"broken.json: not valid JSON"),
           "empty.json": ('["bee", " "]', r"empty.json: empty or non-text class name for folder 'a_dir'")}
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=message):
            read_classnames(tmp_path / name, folders)
    with pytest.raises(FileNotFoundError, match="classnames file not found"):
        class_names(folders, str(tmp_path / "nope.txt"))
    (tmp_path / "t.txt").write_text("# comment\na photo of a {}.\n\n{} on a table\n")
    assert read_templates(str(tmp_path / "t.txt")) == ["a photo of a {}.", "{} on a table"]
    (tmp_path / "bad.txt").write_text("a photo of a {}.\na photo\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: template 'a photo' has no \{\}"):
        read_templates(str(tmp_path / "bad.txt"))
    with pytest.raises(FileNotFoundError, match="templates=openia: expected openai, simple or a file"):
        read_templates("openia")


def test_braces_in_class_names_are_kept(clip_model):
    model, tok, cfg = clip_model
    seen: list[str] = []

    def tokenize(texts: list[str]) -> torch.Tensor:
        seen.extend(texts)
        return tok(texts, cfg.context_length)

    build_classifier(model.encode_text, tokenize, ["a {b}"], ["x {} y"])
    assert seen == ["x a {b} y"]


def test_image_folder_reader(tmp_path):
    root = noise_folder(tmp_path / "f", classes=3, per_class=2)
    (root / "class_1" / "notes.txt").write_text("not an image")
    data = ClassFolders(root)
    assert data.folders == ["class_0", "class_1", "class_2"]
    assert [(Path(p).relative_to(root).as_posix(), c) for p, c in data.samples] == [
        (f"class_{c}/{k}.png", c) for c in range(3) for k in range(2)]
    images, labels = next(iter(image_folder_loader(root, image_size=32, batch_size=6, num_workers=0)))
    assert images.shape == (6, 3, 32, 32) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        ClassFolders(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "x.png")
    with pytest.raises(ValueError, match="not an ImageFolder layout"):
        ClassFolders(tmp_path / "flat")
    (root / "class_3").mkdir()
    with pytest.raises(ValueError, match="no valid file for the classes class_3"):
        ClassFolders(root)


def test_unreadable_image_names_the_file(tmp_path):
    root = noise_folder(tmp_path / "f", classes=1, per_class=1)
    (root / "class_0" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        list(image_folder_loader(root, image_size=32, num_workers=0))


def test_demo_world_has_the_zeroshot_split(tmp_path):
    from mammut_pl.data.demo import COLORS, SHAPES, write_demo

    world = write_demo(tmp_path / "world", tiny=True)
    data = ClassFolders(world / "zeroshot" / "val")
    assert sorted(data.folders) == sorted(f"{c}_{s}" for c in COLORS for s in SHAPES)
    assert class_names(data.folders)[0][0] == data.folders[0].replace("_", " ")
    assert len(read_templates(str(world / "zeroshot" / "templates.txt"))) >= 3
    manifest = json.loads((world / "manifest.json").read_text())
    assert manifest["counts"]["zeroshot"] == {"classes": 35, "images": len(data), "templates": 5}
