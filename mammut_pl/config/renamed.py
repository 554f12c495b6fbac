"""Keys that moved or went: an old key in a YAML or on the command line stops the run with one line
naming its new place; configs stored in older checkpoints are moved over (`migrate`)."""

from __future__ import annotations

import copy
from typing import Any

_WEBDATA = ("shards", "resampled", "steps_per_epoch", "shuffle_buffer", "val_root")
# {"old.key": "new.key"}; a key that several datamodules shared has one new key per dataset section
RENAMED: dict[str, str | tuple[str, ...]] = {
    **{f"video.{k}": f"data.msrvtt.{k}" for k in ("video_dir", "captions_file", "retrieval_csv")},
    **{f"detection.{k}": f"data.lvis.{k}" for k in ("train_file", "val_file", "test_file", "jitter_min", "jitter_max",
                                                   "max_eval_images")},
    **{f"data.{k}": f"data.webdata.{k}" for k in _WEBDATA},
    **{f"data.{k}": f"data.coco.{k}" for k in ("karpathy_file", "max_eval_images")},
    **{f"data.{k}": f"data.vqav2.{k}" for k in ("train_split", "predict_split")},
    "data.val_split": ("data.coco.val_split", "data.vqav2.val_split"),
    "data.test_split": ("data.coco.test_split", "data.vqav2.test_split", "data.msrvtt.test_split"),
    "data.vqa_prompt": ("data.vqav2.prompt", "data.msrvtt.prompt"),
    "data.max_answer_tokens": ("data.vqav2.max_answer_tokens", "data.msrvtt.max_answer_tokens"),
    "data.max_eval_questions": ("data.vqav2.max_eval_questions", "data.msrvtt.max_eval_questions"),
}
# the data.<dataset> sections a datamodule reads: web shards validate on COCO (data.webdata.val_root)
SECTIONS_READ: dict[str, tuple[str, ...]] = {"webdata": ("webdata", "coco")}
# keys that went without a successor: {"old.key": why}
REMOVED: dict[str, str] = {"data.extra": "it was read by no datamodule; delete it"}


def new_keys(old: str) -> tuple[str, ...]:
    new = RENAMED[old]
    return (new,) if isinstance(new, str) else tuple(new)


def moved_message(old: str, source: str, data_name: str = "") -> str:
    """`data.test_split` was renamed to `data.coco.test_split` (command line): with several new keys,
    the one of the config's data.name if it has one, else all of them."""
    if old in REMOVED:
        return f"`{old}` was removed ({source}): {REMOVED[old]}"
    keys = new_keys(old)
    keys = tuple(k for k in keys if k.startswith(f"data.{data_name}.")) or keys
    names = " or ".join(f"`{k}`" for k in keys)
    per_dataset = ", the section of your data.name" if len(keys) > 1 else ""
    return f"`{old}` was renamed to {names} ({source}{per_dataset})"


def _pop(tree: dict[str, Any], key: str) -> tuple[bool, Any]:
    *path, leaf = key.split(".")
    node: Any = tree
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and leaf in node:
        return True, node.pop(leaf)
    return False, None


def _put(tree: dict[str, Any], key: str, value: Any) -> None:
    *path, leaf = key.split(".")
    for part in path:
        tree = tree.setdefault(part, {})
    tree[leaf] = copy.deepcopy(value)


def migrate(stored: dict[str, Any]) -> dict[str, Any]:
    """A copy of a stored config dict with its RENAMED keys moved to their new place and its REMOVED
    keys dropped. A key that several datamodules shared goes to the sections the stored run read
    (its data.name's, SECTIONS_READ), so it reads the same values as before."""
    out = copy.deepcopy(stored)
    name = str((out.get("data") or {}).get("name", "webdata"))  # the typed default
    read = {f"data.{s}." for s in SECTIONS_READ.get(name, (name,))}
    for old in (*RENAMED, *REMOVED):
        found, value = _pop(out, old)
        if not found or old in REMOVED:
            continue
        keys = new_keys(old)
        for new in keys if len(keys) == 1 else [k for k in keys if k[: k.rindex(".") + 1] in read]:
            _put(out, new, value)
    return out
