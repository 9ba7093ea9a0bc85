"""The package's import graph: no cycles, imports point down the declared layers, the pipeline imports at the top.

Layers, top to bottom (a module may import its own layer and the layers below it, never above):

    cli → node → pipeline, train → explain, measure, triage, report, evaluate, monitor → model → preprocess, io
        → types, errors, files, outdir, results, cpus (and the package root, which only holds the version and a lazy API)

Inside ``cxrtriage.pipeline`` the modules are layered too: config → decode, engine, artefacts, journal → hooks.base →
the hooks → provenance, reports, scoring → predict, segment, incremental → validate, cluster (``predict --ray``; its
modules import each other bottom to top: shipping, shards → stages → run).

Every import counts: module level, inside functions and under ``TYPE_CHECKING``. The package root's public API
(``cxrtriage.predict`` and friends) is resolved with ``importlib`` at attribute access, so it is no import edge.
Allowed exceptions to the layers: none. To "the pipeline imports at the top": one, named in ``LAZY_IN_PIPELINE``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cxrtriage"

LAYERS: tuple[tuple[str, ...], ...] = (  # bottom first
    ("cxrtriage", "cxrtriage.types", "cxrtriage.errors", "cxrtriage.files", "cxrtriage.outdir", "cxrtriage.results",
     "cxrtriage.cpus"),
    ("cxrtriage.preprocess", "cxrtriage.io"),
    ("cxrtriage.model",),
    ("cxrtriage.explain", "cxrtriage.measure", "cxrtriage.triage", "cxrtriage.report", "cxrtriage.evaluate",
     "cxrtriage.monitor"),
    ("cxrtriage.pipeline", "cxrtriage.train"),
    ("cxrtriage.node",),
    ("cxrtriage.cli", "cxrtriage.__main__"),
)
PIPELINE_LAYERS: tuple[tuple[str, ...], ...] = (
    ("cxrtriage.pipeline", "cxrtriage.pipeline.hooks"),  # the package modules import nothing
    ("cxrtriage.pipeline.config", "cxrtriage.pipeline.startup"),  # startup: the forkserver, started early by the CLI
    ("cxrtriage.pipeline.decode", "cxrtriage.pipeline.engine", "cxrtriage.pipeline.artefacts",
     "cxrtriage.pipeline.journal"),
    ("cxrtriage.pipeline.hooks.base",),
    ("cxrtriage.pipeline.hooks.site", "cxrtriage.pipeline.hooks.lungs", "cxrtriage.pipeline.hooks.quality",
     "cxrtriage.pipeline.hooks.heatmaps", "cxrtriage.pipeline.hooks.triage"),
    ("cxrtriage.pipeline.provenance", "cxrtriage.pipeline.reports", "cxrtriage.pipeline.scoring"),
    ("cxrtriage.pipeline.predict", "cxrtriage.pipeline.segment", "cxrtriage.pipeline.incremental"),
    ("cxrtriage.pipeline.validate",  # models validate: predict + evaluate
     "cxrtriage.pipeline.cluster"),  # predict --ray: the same stages as predict, run by Ray Data
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str:
    """The module an imported name lives in: ``cxrtriage.a.b`` when that is a module, else its parent."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(module: str) -> Iterator[tuple[str, int, bool]]:
    """(imported cxrtriage module, line, inside a function) for every import statement of ``module``."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one
            names = [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name == "cxrtriage" or name.startswith("cxrtriage."):
                yield _resolve(name), node.lineno, id(node) in in_function


GRAPH: dict[str, set[str]] = {m: {t for t, _, _ in _imports(m) if t != m} for m in MODULES}


def _layer(module: str, layers: tuple[tuple[str, ...], ...]) -> int | None:
    """Index of the most specific layer entry that ``module`` is, or lies under."""
    best: tuple[int, int] | None = None
    for i, entries in enumerate(layers):
        for entry in entries:
            # the package root is its own entry: a module it does not list has no layer (and fails the test below)
            inside = module.startswith(entry + ".") and entry != "cxrtriage"
            if (module == entry or inside) and (best is None or len(entry) > best[1]):
                best = (i, len(entry))
    return None if best is None else best[0]


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer() -> None:
    missing = [m for m in MODULES if _layer(m, LAYERS) is None]
    missing += [m for m in MODULES if m.startswith("cxrtriage.pipeline") and _layer(m, PIPELINE_LAYERS) is None]
    assert not missing, f"modules outside the declared layers (add them to LAYERS / PIPELINE_LAYERS): {missing}"


def test_no_import_cycles() -> None:
    cycles = _cycles()
    assert not cycles, "import cycles inside cxrtriage: " + "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize(("layers", "scope"), [(LAYERS, "cxrtriage"), (PIPELINE_LAYERS, "cxrtriage.pipeline")])
def test_imports_point_down_the_layers(layers: tuple[tuple[str, ...], ...], scope: str) -> None:
    upward = []
    for module in MODULES:
        if not (module == scope or module.startswith(scope + ".")):
            continue
        for target, line, _ in _imports(module):
            src, dst = _layer(module, layers), _layer(target, layers)
            if src is not None and dst is not None and dst > src:
                upward.append(f"{module}:{line} imports {target}")
    assert not upward, "imports that climb against the layer order:\n" + "\n".join(upward)


# The one import inside a function that the pipeline may make: the report writers (fpdf, highdicom, pydicom, jinja2:
# ~0.4 s) come in when a run writes reports, so that a plain ``predict`` does not pay for them (`pipeline.reports`).
LAZY_IN_PIPELINE = {("cxrtriage.pipeline.reports", "cxrtriage.report.batch")}


def test_pipeline_imports_only_at_module_level() -> None:
    inside = {(m, t): line for m in MODULES if m.startswith("cxrtriage.pipeline")
              for t, line, in_function in _imports(m) if in_function}
    unexpected = [f"{m}:{line} imports {t}" for (m, t), line in inside.items() if (m, t) not in LAZY_IN_PIPELINE]
    assert not unexpected, "imports inside functions in cxrtriage.pipeline:\n" + "\n".join(unexpected)
    assert set(inside) == LAZY_IN_PIPELINE, "LAZY_IN_PIPELINE names an import that is no longer made in a function"


def test_the_checks_can_fail() -> None:
    """The graph is real: known edges are found, and a cycle planted in a copy of it is detected."""
    assert "cxrtriage.results" in GRAPH["cxrtriage.pipeline.predict"]
    assert _layer("cxrtriage.report.dicom_sr", LAYERS) == 3 and _layer("cxrtriage.cli.app", LAYERS) == 6
    saved = {k: set(v) for k, v in GRAPH.items()}
    try:
        GRAPH["cxrtriage.types"].add("cxrtriage.pipeline.predict")
        assert any("cxrtriage.types" in c for c in _cycles())
    finally:
        GRAPH.clear()
        GRAPH.update(saved)
