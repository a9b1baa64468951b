"""The package's shape: imports point down only (docs: /work/shared/ARCHITECTURE.md), and
``import minilm`` stays light.

Every module under ``minilm/`` is parsed (``ast``, nothing is imported) and each import, also
one inside a function, becomes an arrow from the importing module's floor to the imported one's.
An arrow may stay on its floor or point down, never up. ``minilm/__init__.py`` is exempt as an
importer (it re-exports the public API from every floor); importing the bare ``minilm`` counts
as importing the highest floor it re-exports.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

# Module (or package: it covers everything below it) -> floor. The longest matching prefix wins.
FLOORS = {
    # 1: math with no model in it
    "minilm.schedules": 1,
    "minilm.sharpness": 1,
    "minilm.imbalance": 1,
    "minilm.kernels": 1,
    "minilm.device": 1,
    "minilm.atomic": 1,
    "minilm.checkpoint": 1,
    "minilm.distributed": 1,  # torchrun plumbing (process group, DDP, rank shares); train.py uses it
    "minilm.executors": 1,  # running independent jobs: in process, local workers (one per GPU), submitit
    # 2: models and what they are made of or fed with
    "minilm.models": 2,
    "minilm.attention": 2,
    "minilm.data": 2,
    "minilm.optim": 2,
    "minilm.mup": 2,  # μP's rules and coordinate check; models.gpt and train.py use it
    "minilm.fp8": 2,  # FP8 formats, scaling recipes, the FP8 linear layer and to_fp8
    "minilm.toy_problems": 2,  # ill-conditioned quadratics run with minilm.optim's optimizers
    "minilm.filtering": 2,  # exact and near-duplicate detection, quality scores: what the data is fed through
    # 3: training and measuring
    "minilm.train": 3,
    "minilm.bench": 3,
    "minilm.scaling": 3,
    "minilm.mixing": 3,  # domain mixtures and the data-mixing law fitted on small runs
    "minilm.selection": 3,  # scoring examples with a model (loss, reference-model excess loss)
    "minilm.redundancy": 3,  # measuring and removing layers and weights of a trained model
    "minilm.records": 3,  # a lab's measured figures and their provenance, written as JSON
    "minilm.ledger": 1,  # the FLOPs and time training spends (6ND + attention), tallied per lab: bookkeeping
    # that imports nothing of minilm, so every training loop (mup.coord_check included) can charge it
    "minilm.report": 3,  # the learner's recorded figures beside the papers'
    # 4: the labs (questions + runner) and the grading engine
    "minilm.labs": 4,
    "minilm.grading": 4,
    # 5: commands
    "minilm.cli": 5,
    "minilm.__main__": 5,
}

PACKAGE = Path(__file__).resolve().parents[1] / "minilm"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported minilm module, line) for every import statement in the file, wherever it is."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .runs import x, from . import y
                package = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:  # "from pkg import mod" imports the module pkg.mod
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in known else base, node.lineno))
    found = dict.fromkeys(found)  # one arrow per (module, line): "from a import x, y" is one import
    return [(target, line) for target, line in found if target == "minilm" or target.startswith("minilm.")]


def _floor(module: str) -> int | None:
    for prefix in sorted(FLOORS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return FLOORS[prefix]
    return None


def _arrows() -> list[tuple[str, int, str, int]]:
    """(importer, line, imported, imported's floor) for every import of minilm inside minilm."""
    modules = _modules()
    known = set(modules)
    root = [_floor(t) for t, _ in _imports("minilm", modules["minilm"], known)]
    root_floor = max(f for f in root if f is not None)  # what ``import minilm`` brings along
    arrows = []
    for name, path in modules.items():
        if name == "minilm":
            continue
        for target, line in _imports(name, path, known):
            arrows.append((name, line, target, root_floor if target == "minilm" else _floor(target)))
    return arrows


def _graph() -> dict[str, set[str]]:
    """Module -> the modules its imports run. Importing ``a.b.c`` first runs the package ``a.b``'s
    ``__init__``, unless the importer is inside ``a.b`` (then that package is already running)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        if name == "minilm":
            continue
        runs = set()
        for target, _ in _imports(name, path, set(modules)):
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                module = ".".join(parts[:i])
                inside = name.startswith(module + ".")
                if module in modules and module != name and (module == target or not inside):
                    runs.add(module)
        graph[name] = runs
    return graph


def _path(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """A shortest import path start -> ... -> goal (breadth first), or None."""
    came_from, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for node in frontier:
            for dst in graph.get(node, ()):
                if dst not in came_from:
                    came_from[dst] = node
                    nxt.append(dst)
        frontier = nxt
    if goal not in came_from:
        return None
    path = [goal]
    while path[-1] != start:
        path.append(came_from[path[-1]])
    return path[::-1]


def test_no_import_cycles():
    # A cycle is what late imports inside functions hide: minilm.ssm imported minilm.models (its
    # __init__ runs the registry) and the registry imported minilm.ssm inside a function.
    graph = _graph()
    cycles = {" -> ".join([src, *path]) for src, dsts in graph.items() for dst in dsts
              if (path := _path(graph, dst, src)) is not None and min([src, *path]) == src}
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(sorted(cycles))


def test_every_module_has_a_floor():
    missing = sorted(name for name in _modules() if name != "minilm" and _floor(name) is None)
    assert not missing, f"modules without a floor: {missing}: add them to FLOORS in {Path(__file__).name}"


def test_imports_point_down_only():
    upward = [
        f"{src}:{line} (floor {_floor(src)}) imports {dst} (floor {floor})"
        for src, line, dst, floor in _arrows()
        if floor is not None and _floor(src) is not None and floor > _floor(src)
    ]
    assert not upward, f"{len(upward)} upward import(s):\n" + "\n".join(upward)


def test_grading_engine_never_imports_the_labs():
    # The engine gets a Lab object (or a module name) from whoever looked the lab up in minilm.labs.
    bad = [
        f"{src}:{line} imports {dst}"
        for src, line, dst, _ in _arrows()
        if _floor(src) is not None and src.startswith("minilm.grading") and (dst + ".").startswith("minilm.labs.")
    ]
    assert not bad, f"{len(bad)} import(s) of minilm.labs from the grading engine:\n" + "\n".join(bad)


def test_import_minilm_leaves_heavy_optional_packages_unloaded():
    # scipy.optimize alone took ~0.3 s of ``import minilm`` (benchmarks/bench_import.py); the
    # modules that need these packages import them inside the functions that use them.
    heavy = ["scipy", "matplotlib"]
    code = (
        "import json, sys; import minilm; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert not loaded, f"import minilm loaded {loaded[:10]}: import them inside the functions that use them"
