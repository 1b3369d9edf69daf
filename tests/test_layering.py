"""The package's import structure, read from the source (module-level and in-function imports alike):

- no import cycle inside tunesweep/;
- the shared base (config, layout, provenance, loading, isolation, templates, files, errors, backends, stages,
  hub, cluster, tracking, metric_registry, records)
  imports nothing but the base;
- a stage package (data, generate, clean, evaluate, report, judge, track; train) imports the base and its own modules,
  never another stage and never the top layer (cli, pipeline, doctor, plan, tinymodel), which may
  import anything;
- a composite package (race: generate's rounds scored by evaluate's metrics) imports the base and the stages,
  never the top layer; no base module or stage imports a composite.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "tunesweep"

BASE = {"__init__", "errors", "files", "config", "templates", "layout", "provenance", "loading", "backends", "stages",
        "isolation", "cluster", "hub", "tracking", "metric_registry", "records"}
STAGES = {"data", "generate", "clean", "evaluate", "report", "train", "judge", "track"}
COMPOSITE = {"race"}
TOP = {"__main__", "cli", "pipeline", "doctor", "plan", "tinymodel"}


def module_files() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The tunesweep modules `name` imports anywhere in its file."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            candidates = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        for c in candidates:
            while c and c not in known:  # `from .x import name`: the module is the longest known prefix
                c = c.rpartition(".")[0]
            if c and c != name:
                found.add(c)
    return found


def graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    edges = {}
    for name, path in files.items():
        # A module's own parent packages run before it anyway: not an edge of interest.
        edges[name] = {t for t in imported_modules(name, path, known) if not name.startswith(t + ".")}
    return edges


def layer(module: str) -> tuple[str, str]:
    """(layer, group): ("base", m), ("stage", package), ("composite", package) or ("top", m)."""
    first = module.split(".")[1] if "." in module else "__init__"
    if first in BASE:
        return "base", first
    if first in STAGES:
        return "stage", first
    if first in COMPOSITE:
        return "composite", first
    assert first in TOP, f"{module}: not placed in a layer; add it to BASE, STAGES, COMPOSITE or TOP in {__file__}"
    return "top", first


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_every_module_is_in_a_layer():
    for module in graph():
        layer(module)


def test_no_import_goes_up_or_across_stages():
    wrong = []
    for module, targets in graph().items():
        kind, group = layer(module)
        for target in targets:
            t_kind, t_group = layer(target)
            if kind == "base" and t_kind != "base":
                wrong.append(f"{module} (base) imports {target} ({t_kind})")
            if kind == "stage" and (t_kind in ("top", "composite") or (t_kind == "stage" and t_group != group)):
                wrong.append(f"{module} (stage {group}) imports {target} ({t_kind} {t_group})")
            if kind == "composite" and (t_kind == "top" or (t_kind == "composite" and t_group != group)):
                wrong.append(f"{module} (composite {group}) imports {target} ({t_kind} {t_group})")
    assert wrong == []


def test_the_graph_holds_known_edges_of_every_kind():
    """The checks above pass on an empty graph too: the reader must see these imports, module-level,
    relative (`from ..layout import`), in-function (generate's backends load lazily) and package-level."""
    edges = graph()
    assert len(edges) > 40
    assert "tunesweep.layout" in edges["tunesweep.evaluate.scoring"]  # from ..layout import (...)
    assert "tunesweep.evaluate.compare" in edges["tunesweep.evaluate.scoring"]  # from .compare import ...
    assert "tunesweep.generate.vllm" in edges["tunesweep.generate.stage"]  # inside get_backend()
    assert "tunesweep.errors" in edges["tunesweep.config"]
    assert "tunesweep.metric_registry" in edges["tunesweep.config"]  # from . import metric_registry
    assert "tunesweep.cli" in edges["tunesweep.__main__"]
    assert {"tunesweep.generate.stage", "tunesweep.evaluate.metrics"} <= edges["tunesweep.race.stage"]


def test_no_function_is_longer_than_80_lines():
    """Issue 19: a function a newcomer reads in one screen; longer ones are split into named steps."""
    long = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{path.relative_to(PKG.parent)}:{node.lineno} {node.name}")
    assert not long, long
