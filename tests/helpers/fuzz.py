"""Reusable bad-input generators for fuzzing the readers (hypothesis strategies + helpers).

Any reader can use them (webdata, COCO today; VQAv2, MSRVTT, LVIS next):

    from tests.helpers.fuzz import json_mutations, assert_clear_error, bad_image_bytes, write_tar

    @given(m=json_mutations(valid_doc))            # one mutation of a valid JSON document
    def test_reader(m, tmp_path_factory):
        path = write_json(tmp, m.doc)                 # or m.text: the raw (maybe broken) text
        try:
            out = read(path)                          # either succeeds ...
        except (ValueError, FileNotFoundError) as err:
            assert_clear_error(err, path, m)          # ... or names the file, record and field

`JsonMutation.path` is where the document was changed, e.g. ("images", 3, "sentences", 0, "raw").
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from PIL import Image

# --- images -------------------------------------------------------------------------------------
PALETTE = [(230, 30, 30), (30, 200, 40), (40, 60, 230), (240, 230, 40), (160, 40, 200), (250, 140, 20),
           (240, 240, 240), (20, 20, 20)]


def image_bytes(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (16, 16), fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


@st.composite
def bad_image_bytes(draw: Any) -> bytes:
    """Bytes no image decoder accepts: empty, random, truncated JPEG/PNG, header-only."""
    good = image_bytes(draw(st.sampled_from(PALETTE)), fmt=draw(st.sampled_from(["JPEG", "PNG"])))
    kind = draw(st.sampled_from(["empty", "random", "truncated", "header"]))
    if kind == "empty":
        return b""
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=64).filter(lambda b: not b.startswith((b"\xff\xd8", b"\x89PNG"))))
    if kind == "header":
        return good[:draw(st.integers(1, 24))]
    return good[:draw(st.integers(len(good) // 4, len(good) // 2))]


def flip_bytes(data: bytes, positions: list[int]) -> bytes:
    """`data` with the bytes at `positions` (mod len) inverted: corruption no checksum catches."""
    b = bytearray(data)
    for p in positions:
        if b:
            b[p % len(b)] ^= 0xFF
    return bytes(b)


# --- tar shards -----------------------------------------------------------------------------------
def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return path


@st.composite
def tar_corruption(draw: Any) -> tuple[str, Any]:
    """What to do to a whole shard file: ("none"|"truncate"|"zero"|"garbage"|"flip", argument)."""
    kind = draw(st.sampled_from(["none", "none", "truncate", "zero", "garbage", "flip"]))
    arg: Any = None
    if kind == "truncate":
        arg = draw(st.floats(0.01, 0.99))
    elif kind == "garbage":
        arg = draw(st.binary(min_size=1, max_size=2048))
    elif kind == "flip":
        arg = draw(st.lists(st.integers(0, 1 << 20), min_size=1, max_size=8))
    return kind, arg


def corrupt_file(path: Path, corruption: tuple[str, Any]) -> None:
    kind, arg = corruption
    data = path.read_bytes()
    if kind == "truncate":
        path.write_bytes(data[: int(len(data) * arg)])
    elif kind == "zero":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(arg)
    elif kind == "flip":
        path.write_bytes(flip_bytes(data, arg))


# --- JSON documents -------------------------------------------------------------------------------
@dataclass
class JsonMutation:
    doc: Any  # the mutated document (None when only `text` is meaningful)
    text: str  # what to write to the file
    path: tuple  # where it was changed: keys and list indices from the root; () for whole-text damage
    op: str  # "delete" | "retype" | "empty" | "truncate_text" | "garble_text" | "duplicate"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def _walk(doc: Any, path: tuple) -> Any:
    for k in path:
        doc = doc[k]
    return doc


@st.composite
def json_path(draw: Any, doc: Any, min_depth: int = 1) -> tuple:
    """A random path to a node of `doc` (at least `min_depth` steps from the root)."""
    path: tuple = ()
    node = doc
    while isinstance(node, (dict, list)) and node:
        keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
        if len(path) >= min_depth and draw(st.booleans()):
            break
        k = draw(st.sampled_from(keys))
        path, node = path + (k,), node[k]
    return path


def _type_name(v: Any) -> str:
    return {bool: "bool", int: "num", float: "num", str: "str", list: "list", dict: "dict"}.get(type(v), "null")


@st.composite
def json_mutations(draw: Any, doc: Any, ops: tuple[str, ...] = ("delete", "retype", "empty", "truncate_text",
                                                                "garble_text", "duplicate")) -> JsonMutation:
    """One structural or textual mutation of the valid JSON document `doc`."""
    import copy

    op = draw(st.sampled_from(ops))
    text = json.dumps(doc)
    if op == "truncate_text":
        return JsonMutation(None, text[: draw(st.integers(0, max(0, len(text) - 1)))], (), op)
    if op == "garble_text":
        pos = draw(st.integers(0, max(0, len(text) - 1)))
        junk = draw(st.sampled_from(["\x00", "}", "]", "{", ",", '"', "NaN", "\ufffd", "\\", "]]]]"]))
        return JsonMutation(None, text[:pos] + junk + text[pos:], (), op)
    new = copy.deepcopy(doc)
    path = draw(json_path(new, min_depth=1))
    if not path:
        return JsonMutation(new, json.dumps(new), (), "none")
    parent, key = _walk(new, path[:-1]), path[-1]
    old = parent[key]
    if op == "delete":
        del parent[key]
    elif op == "retype":
        parent[key] = draw(JSON_VALUES.filter(lambda v: _type_name(v) != _type_name(old)))
    elif op == "empty":
        parent[key] = type(old)() if isinstance(old, (str, list, dict)) else None
    elif op == "duplicate":  # a sibling's value (duplicate ids, repeated records)
        siblings = [k for k in (parent.keys() if isinstance(parent, dict) else range(len(parent))) if k != key]
        if not siblings:
            return JsonMutation(new, json.dumps(new), (), "none")
        if isinstance(parent, list):
            parent[key] = copy.deepcopy(parent[draw(st.sampled_from(siblings))])
        else:
            parent[key] = copy.deepcopy(parent[draw(st.sampled_from(siblings))])
    return JsonMutation(new, json.dumps(new, allow_nan=False), path, op)


def record_label(path: tuple, list_key: str) -> str | None:
    """`images[3]` for a path ("images", 3, ...) into the record list `list_key`."""
    if len(path) >= 2 and path[0] == list_key and isinstance(path[1], int):
        return f"{list_key}[{path[1]}]"
    return None


def assert_clear_error(err: BaseException, file: Path, mutation: JsonMutation | None = None,
                       list_key: str = "images") -> None:
    """One clear error: ValueError / FileNotFoundError (not a library's own exception), naming the
    file, and -- for a change inside a record -- the record and, when one, its field."""
    assert isinstance(err, (ValueError, FileNotFoundError)), f"{type(err).__name__}: {err}"
    msg = str(err)
    assert str(file) in msg or file.name in msg, f"file not named: {msg}"
    assert "Traceback" not in msg
    if mutation is not None:
        label = record_label(mutation.path, list_key)
        if label is not None and mutation.op in ("delete", "retype", "empty"):
            assert label in msg, f"record {label} not named: {msg}"
            if len(mutation.path) >= 3:
                assert str(mutation.path[2]) in msg, f"field {mutation.path[2]!r} not named: {msg}"
