"""Zero-shot classification: class names x prompt templates -> a classifier made of text embeddings.

CLIP's recipe (Radford et al. 2021, as open_clip's `build_zero_shot_classifier` does it): each
class name is put into every template, each text is embedded and L2-normalised, the embeddings of a
class are averaged over its templates and the mean is renormalised. An image's logits are the dot
products of its normalised embedding with the C class vectors. The texts are embedded in batches of
`text_batch_size` and summed into a (C, D) accumulator, so 1000 classes x 80 templates (80k texts)
take one batch of activations plus C x D floats, whatever C and T are.

Class names (`classnames=`): ImageNet-1k names (open_clip's IMAGENET_CLASSNAMES, OpenAI's curated
list) when every class folder is an ImageNet-1k WordNet id; otherwise a FILE; otherwise the folder
names with "_" read as spaces. Templates (`templates=`): `openai` (the 80 of CLIP's ImageNet
evaluation), `simple` (open_clip's SIMPLE_IMAGENET_TEMPLATES: the 7 of OpenAI's selected subset) or
a FILE. File formats: see `read_classnames` and `read_templates`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

PLACEHOLDER = "{}"  # where a template takes the class name


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids in class-index order (sorted, as timm ships them)."""
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo("imagenet-1k").label_names())


def template_set(name: str) -> list[str]:
    """open_clip's template lists as format strings with one `{}`."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    lambdas = {"openai": OPENAI_IMAGENET_TEMPLATES, "simple": SIMPLE_IMAGENET_TEMPLATES}[name]
    return [t(PLACEHOLDER) for t in lambdas]


def fill(template: str, name: str) -> str:
    return template.replace(PLACEHOLDER, name)  # not str.format: a class name may hold braces


# --- class names -------------------------------------------------------------------------------------
def class_names(folders: Sequence[str], spec: str = "") -> tuple[list[str], str]:
    """(one name per class folder, where the names come from)."""
    if spec:
        return read_classnames(Path(spec), folders), str(spec)
    wnids = imagenet_wnids()
    index = {w: i for i, w in enumerate(wnids)}
    if all(f in index for f in folders):
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        assert len(IMAGENET_CLASSNAMES) == len(wnids)
        names = [IMAGENET_CLASSNAMES[index[f]] for f in folders]
        return names, "imagenet-1k" if len(folders) == len(wnids) else f"imagenet-1k ({len(folders)} classes)"
    return [f.replace("_", " ") for f in folders], "folder names"


def read_classnames(path: Path, folders: Sequence[str]) -> list[str]:
    """Class names from a file, one per class folder:
    - `.json`: a list of names in sorted-folder order, or an object {folder: name};
    - otherwise UTF-8 text: one name per line in sorted-folder order, or `folder<TAB>name` lines.
    Blank lines are ignored. Every folder needs exactly one non-empty name."""
    if not path.is_file():
        raise FileNotFoundError(f"classnames file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, (list, dict)):
            raise ValueError(f"{path}: expected a JSON list of names or an object {{folder: name}}")
    else:
        lines = [line.rstrip("\r") for line in text.splitlines() if line.strip()]
        tabbed = [line for line in lines if "\t" in line]
        if tabbed and len(tabbed) != len(lines):
            raise ValueError(f"{path}: mixes `folder<TAB>name` lines with plain name lines")
        data = dict(line.split("\t", 1) for line in lines) if tabbed else lines
    if isinstance(data, list):
        if len(data) != len(folders):
            raise ValueError(f"{path}: {len(data)} class names for {len(folders)} class folders "
                             f"(one name per folder, in sorted-folder order)")
        names = data
    else:
        missing = [f for f in folders if f not in data]
        if missing:
            raise ValueError(f"{path}: no name for the class folder(s) {', '.join(missing[:5])}"
                             + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        names = [data[f] for f in folders]
    bad = [i for i, n in enumerate(names) if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"{path}: empty or non-text class name for folder {folders[bad[0]]!r}")
    return [n.strip() for n in names]


def read_templates(spec: str) -> list[str]:
    """`openai` | `simple` | a UTF-8 file with one template per line, each with `{}` where the class
    name goes (e.g. `a photo of a {}.`); blank lines and lines starting with `#` are skipped."""
    if spec in ("openai", "simple"):
        return template_set(spec)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"templates={spec}: expected openai, simple or a file of templates (not found)")
    templates = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if PLACEHOLDER not in line:
            raise ValueError(f"{path}:{n}: template {line!r} has no {PLACEHOLDER} for the class name")
        templates.append(line)
    if not templates:
        raise ValueError(f"{path}: no templates (one per line, each with {PLACEHOLDER})")
    return templates


# --- the classifier ------------------------------------------------------------------------------------
@torch.no_grad()
def build_classifier(encode_text: Callable[[Tensor], Tensor], tokenize: Callable[[list[str]], Tensor],
                     classnames: Sequence[str], templates: Sequence[str], text_batch_size: int = 1000,
                     device: torch.device | str = "cpu") -> Tensor:
    """(C, D) float32 class vectors: per class, the renormalised mean of the normalised embeddings of
    its T prompts. Texts are embedded `text_batch_size` at a time (any C x T in bounded memory)."""
    if not classnames or not templates:
        raise ValueError("a zero-shot classifier needs at least one class name and one template")
    C, T = len(classnames), len(templates)
    sums: Tensor | None = None
    for start in range(0, C * T, text_batch_size):
        flat = range(start, min(start + text_batch_size, C * T))  # text i = class i // T, template i % T
        texts = [fill(templates[i % T], classnames[i // T]) for i in flat]
        emb = F.normalize(encode_text(tokenize(texts).to(device)).float(), dim=-1)  # (b, D)
        if sums is None:
            sums = emb.new_zeros(C, emb.shape[-1])
        sums.index_add_(0, torch.tensor([i // T for i in flat], device=emb.device), emb)
    return F.normalize(sums / T, dim=-1)


def zero_shot_logits(image_embed: Tensor, classifier: Tensor) -> Tensor:
    """(B, D) image embeddings x (C, D) classifier -> (B, C) cosine similarities."""
    return F.normalize(image_embed.float(), dim=-1) @ classifier.T
