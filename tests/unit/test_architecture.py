"""The package's shape (issue 16), checked over its source with `ast`:

- per-task knowledge lives in mammut_pl/tasks/ (the registry): no module outside it branches on
  the task (`task == "vqa"`, `cfg.task in (...)`, `TABLE[cfg.task]`, `task.startswith(...)`);
- imports go one way, model <- losses/metrics/config <- data <- tasks <- runtime <- CLIs, and no
  module imports an entry point (fit, evaluate, predict, sweep, bench are command lines only);
- the tools live beside the library: the benchmark in bench/ (mammut_pl.bench only forwards the old
  `python -m mammut_pl.bench` to it), and no package module imports it;
- sizes: every module of mammut_pl/ and bench/ <= 400 lines and every function <= 60 lines, unless
  it says why in a one-line `# size: <reason>` comment (a module: in its first lines; a function:
  on its `def` line or the line above it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "mammut_pl"
BENCH = ROOT / "bench"
ENTRY_POINTS = {"mammut_pl.fit", "mammut_pl.evaluate", "mammut_pl.predict", "mammut_pl.sweep", "mammut_pl.bench",
                "mammut_pl.export"}
# the layer of each module (the longest matching prefix wins); a module may import its own layer or lower
LAYERS = {
    "mammut_pl": 0, "mammut_pl.model": 0,
    "mammut_pl.losses": 1, "mammut_pl.metrics": 1, "mammut_pl.config": 1, "mammut_pl.resume": 1,
    "mammut_pl.flops": 1,
    "mammut_pl.data": 2,
    "mammut_pl.tasks": 3,
    "mammut_pl.runtime": 4, "mammut_pl.checkpoint": 4, "mammut_pl.report": 4, "mammut_pl.tracking": 4,
    "mammut_pl.evaluation": 4, "mammut_pl.prediction": 4, "mammut_pl.sweeps": 4,
    **{name: 5 for name in ENTRY_POINTS},
}
# per-task branches that stay outside tasks/ for now, each with its reason; the count may only go down
ALLOWED_BRANCHES = {
    # MSRVTTDataModule's own mode argument (task="qa" | "caption"), set by the video TaskSpecs'
    # datamodule_options: the datamodule's parameter, not the suite's task
    "mammut_pl/data/msrvtt.py": 2,
}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def imported(tree: ast.AST) -> list[tuple[str, int]]:
    """(module, line) of every mammut_pl import, including those inside functions."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("mammut_pl")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mammut_pl"):
            for a in node.names:  # `from mammut_pl import fit` imports the module mammut_pl.fit
                sub = f"{node.module}.{a.name}"
                found.append((sub if sub in modules() else node.module, node.lineno))
    return found


def is_task(node: ast.AST) -> bool:
    """An expression naming the suite's task: `task`, `cfg.task`, `own["task"]`, `stored_task`."""
    if isinstance(node, ast.Name):
        return node.id == "task" or node.id.endswith("_task")
    if isinstance(node, ast.Attribute):
        return node.attr == "task"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "task"
    return False


def is_literal_or_table(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts)
    return isinstance(node, ast.Name) and node.id.isupper()  # a module-level table, e.g. MONITOR


def task_branches(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(is_task(s) for s in sides) and any(is_literal_or_table(s) for s in sides):
                lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and is_task(node.slice):
            lines.append(node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("startswith", "endswith") and is_task(node.func.value)):
            lines.append(node.lineno)
    return lines


def test_branch_counter_finds_the_forms_it_claims():
    src = '''
if cfg.task == "vqa": pass
if task in ("a", "b"): pass
key = MONITOR[cfg.task]
if stored.task.startswith("video_"): pass
if own["task"] in OWN_DATA: pass
if cfg.data.name == "coco": pass
spec = task_spec(cfg.task)
'''
    assert task_branches(ast.parse(src)) == [2, 3, 4, 5, 6]


def test_no_per_task_branches_outside_the_task_modules():
    counts = {}
    for name, path in modules().items():
        if name.startswith("mammut_pl.tasks"):
            continue
        found = task_branches(ast.parse(path.read_text()))
        if found:
            counts[str(path.relative_to(PACKAGE.parent))] = (len(found), found)
    over = {f: c for f, c in counts.items() if c[0] > ALLOWED_BRANCHES.get(f, 0)}
    assert not over, f"per-task branches outside mammut_pl/tasks/ (file: (count, lines)): {over}; " \
                     "declare the difference in the task's TaskSpec / EvalSpec instead"
    stale = {f: n for f, n in ALLOWED_BRANCHES.items() if counts.get(f, (0,))[0] < n}
    assert not stale, f"fewer branches than allowed now, lower ALLOWED_BRANCHES: {stale}"


def test_the_command_lines_hold_no_task_branches():
    for name in (*ENTRY_POINTS, "mammut_pl.runtime", "mammut_pl.report", "mammut_pl.evaluation", "mammut_pl.prediction",
                 "mammut_pl.checkpoint"):
        assert task_branches(ast.parse(modules()[name].read_text())) == [], name


def test_imports_go_one_way_and_nothing_imports_an_entry_point():
    wrong = []
    for name, path in modules().items():
        for target, line in imported(ast.parse(path.read_text())):
            if target in ENTRY_POINTS and target != name:
                wrong.append(f"{name}:{line} imports the entry point {target}")
            elif layer(target) > layer(name):
                wrong.append(f"{name}:{line} (layer {layer(name)}) imports {target} (layer {layer(target)})")
    assert not wrong, "\n".join(wrong)


def benchmark_imports(tree: ast.AST) -> list[int]:
    """Lines that import the top-level benchmark package `bench` (or a module of it)."""
    lines = []
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        lines += [node.lineno for n in names if n == "bench" or n.startswith("bench.")]
    return lines


def test_the_benchmark_is_outside_the_package_and_unimported():
    assert (PACKAGE.parent / "bench" / "run.py").is_file() and not (PACKAGE / "bench_data.py").exists()
    assert benchmark_imports(ast.parse("import bench\nfrom bench.run import main\nfrom mammut_pl import bench\n")) == [1, 2]
    wrong = {name: found for name, path in modules().items() if (found := benchmark_imports(ast.parse(path.read_text())))}
    assert not wrong, f"package modules import the benchmark (bench/ is a tool beside the library): {wrong}"
    shim = modules()["mammut_pl.bench"].read_text()
    assert len([ln for ln in shim.splitlines() if ln.strip()]) < 20, "mammut_pl/bench.py only forwards to bench/"


def test_the_import_check_sees_lazy_and_upward_imports():
    tree = ast.parse("def f():\n    from mammut_pl.fit import run\nfrom mammut_pl import evaluate\n")
    assert sorted(imported(tree)) == [("mammut_pl.evaluate", 3), ("mammut_pl.fit", 2)]
    assert layer("mammut_pl.model.decoder") < layer("mammut_pl.data.coco") < layer("mammut_pl.tasks.vqa")
    assert layer("mammut_pl.tasks.registry") < layer("mammut_pl.runtime") < layer("mammut_pl.fit")


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS - {"mammut_pl.bench"}))
def test_the_command_lines_are_thin(module):
    """< 80 lines after the module docstring (the --help text)."""
    text = modules()[module].read_text()
    docstring = ast.parse(text).body[0]
    n = len(text.splitlines()) - docstring.end_lineno
    assert n < 80, f"{module}: {n} lines of code; library code goes into runtime / evaluation / prediction / tasks"


def test_every_configurable_task_is_registered_and_every_protocol_scores_one():
    from mammut_pl.tasks import EVAL_SPECS, TASK_SPECS, load_config

    assert list(TASK_SPECS) == ["pretrain", "captioning", "vqa", "video_qa", "video_captioning", "detection"]
    for name, spec in TASK_SPECS.items():  # each task's experiment selects it and passes its own checks
        assert load_config(spec.experiment).task == name
    assert list(EVAL_SPECS) == ["retrieval", "captioning", "videoqa", "video_caption", "detection", "zeroshot"]
    for spec in EVAL_SPECS.values():
        assert spec.task in TASK_SPECS
        assert bool(spec.own_data) == (spec.describe is not None) == (spec.set_split is not None), spec.name
    for spec in TASK_SPECS.values():
        assert spec.monitor[0].startswith("val/") and spec.monitor[1] in ("min", "max")


def test_tasks_read_their_datamodule_only_through_the_eval_context():
    """Tasks get categories, ground truth, answers and splits from `self.context` (an EvalContext the
    datamodule hands over), never from `self.trainer.datamodule.<attribute>`."""
    for name, path in modules().items():
        if name.startswith("mammut_pl.tasks"):
            assert "trainer.datamodule" not in path.read_text(), name


# --- sizes ---------------------------------------------------------------------------------------
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60
SIZE_MARK = "# size:"
MODULE_MARK_WITHIN = 40  # a module's reason stands in its first lines (after the docstring, say)
# modules over the limit without their own mark yet, each with its reason; an entry must go once
# the module is under the limit or carries its own `# size:` line
PENDING_SIZES: dict[str, str] = {}


def size_reason(line: str) -> str | None:
    """The reason of a `# size: <reason>` comment on this line (None: no mark, or an empty one)."""
    at = line.find(SIZE_MARK)
    reason = line[at + len(SIZE_MARK):].strip() if at >= 0 else ""
    return reason or None


def oversized(text: str) -> tuple[int | None, list[tuple[str, int, int]]]:
    """(the module's line count if over the limit and unmarked, [(function, line, length)] of the
    unmarked functions over the limit)."""
    lines = text.splitlines()
    module = len(lines) if len(lines) > MAX_MODULE_LINES and not any(
        size_reason(ln) for ln in lines[:MODULE_MARK_WITHIN]) else None
    functions = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            marked = size_reason(lines[node.lineno - 1]) or (first > 1 and size_reason(lines[first - 2]))
            if length > MAX_FUNCTION_LINES and not marked:
                functions.append((node.name, node.lineno, length))
    return module, functions


def test_the_size_check_finds_long_code_and_honours_a_reason():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    long_fn = f"def long():\n{body}\n"  # def line + 60 body lines = 61
    assert oversized(long_fn) == (None, [("long", 1, MAX_FUNCTION_LINES + 1)])
    assert oversized(f"# size: one table, read top to bottom\n{long_fn}") == (None, [])
    assert oversized(long_fn.replace("def long():", "def long():  # size: a port, kept line for line")) == (None, [])
    assert oversized(f"@decorated\n{long_fn}".replace("@decorated", "# size:\n@decorated"))[1], "an empty reason"
    assert oversized("def short():\n" + body.split("\n", 1)[1] + "\n") == (None, [])  # exactly 60 lines
    filler = "\n".join(f"y{i} = {i}" for i in range(MAX_MODULE_LINES + 1))
    assert oversized(filler) == (MAX_MODULE_LINES + 1, [])
    assert oversized(f'"""doc"""\n# size: generated tables\n{filler}') == (None, [])


def test_modules_and_functions_are_small_or_say_why():
    files = sorted([*PACKAGE.rglob("*.py"), *BENCH.rglob("*.py")])
    assert len(files) > 50 and any(f.parent == BENCH for f in files)
    over = []
    for path in files:
        name = str(path.relative_to(PACKAGE.parent))
        module, functions = oversized(path.read_text())
        if module and name not in PENDING_SIZES:
            over.append(f"{name}: {module} lines > {MAX_MODULE_LINES}")
        over += [f"{name}:{line} {fn}() {n} lines > {MAX_FUNCTION_LINES}" for fn, line, n in functions]
    assert not over, "split these (or add a one-line `# size: <reason>`):\n" + "\n".join(over)
    stale = [f for f in PENDING_SIZES if not oversized((PACKAGE.parent / f).read_text())[0]]
    assert not stale, f"now small or marked: remove from PENDING_SIZES: {stale}"
