"""The shape of the code base: no import cycles (top-level and function-level imports),
the library never reaching into `data_prep` or `benchmarks` (except the console script's
routing table), short files, a docstring for every package, one Aho-Corasick matcher."""
from __future__ import annotations

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("pathreasoner_jax", "data_prep", "benchmarks")
ROUTER = os.path.join("pathreasoner_jax", "cli.py")  # routes `prepare`/`features`/`bench` by name
MAX_LINES = 400


def _python_files(*tops):
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for fn in filenames:
                if fn.endswith(".py"):
                    yield os.path.relpath(os.path.join(dirpath, fn), ROOT)


def _module_name(rel: str) -> str:
    mod = rel[:-3].replace(os.sep, ".")
    return mod[: -len(".__init__")] if mod.endswith(".__init__") else mod


MODULES = {_module_name(p): p for p in _python_files(*PACKAGES)}


def _imports(rel: str) -> set[str]:
    """Modules of ours that `rel` imports anywhere (module level or inside functions)."""
    me = _module_name(rel)
    pkg = me if rel.endswith("__init__.py") else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(open(os.path.join(ROOT, rel)).read(), rel)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != me:
                out.add(name)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


GRAPH = {m: _imports(p) for m, p in MODULES.items()}


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_sees_function_level_imports():
    # grpo/trainer imports the data store inside train_grpo: the graph must have that edge
    assert "pathreasoner_jax.data.store" in GRAPH["pathreasoner_jax.grpo.trainer"]


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def _non_docstring_strings(tree):
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docs.add(id(body[0].value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


@pytest.mark.parametrize("outside", ["data_prep", "benchmarks"])
def test_library_never_imports_outside_packages(outside):
    pattern = re.compile(rf"\b{outside}[.:]\w")
    offenders = []
    for m, rel in MODULES.items():
        if not m.startswith("pathreasoner_jax") or rel == ROUTER:
            continue
        if any(i.split(".")[0] == outside for i in GRAPH[m]):
            offenders.append(f"{rel}: imports {outside}")
        tree = ast.parse(open(os.path.join(ROOT, rel)).read())
        offenders += [f"{rel}: names {s!r}" for s in _non_docstring_strings(tree) if pattern.search(s)]
    assert offenders == []


def test_router_is_the_only_library_module_naming_them():
    tree = ast.parse(open(os.path.join(ROOT, ROUTER)).read())
    targets = [s for s in _non_docstring_strings(tree) if re.match(r"^(data_prep|benchmarks)\.[\w.]+:\w+$", s)]
    assert {t.split(".")[0] for t in targets} == {"data_prep", "benchmarks"}


def test_no_file_over_the_line_limit():
    long = {}
    for rel in _python_files(*PACKAGES, "tests"):
        with open(os.path.join(ROOT, rel)) as f:
            n = sum(1 for _ in f)
        if n > MAX_LINES:
            long[rel] = n
    assert long == {}


def test_every_library_folder_says_what_it_holds():
    missing = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, "pathreasoner_jax")):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        init = os.path.join(dirpath, "__init__.py")
        if not os.path.exists(init) or not ast.get_docstring(ast.parse(open(init).read())):
            missing.append(os.path.relpath(dirpath, ROOT))
    assert missing == []


def test_one_aho_corasick_matcher():
    users = sorted(rel for rel in _python_files(*PACKAGES) if any(
        i == "ahocorasick" for node in ast.walk(ast.parse(open(os.path.join(ROOT, rel)).read()))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for i in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module])))
    assert users == [os.path.join("pathreasoner_jax", "text", "matcher.py")]


def test_every_imported_name_exists():
    """`from ours import name` anywhere (also inside functions, which run late) names a
    submodule or an attribute that the module really has."""
    import importlib
    missing = []
    for m, rel in MODULES.items():
        for node in ast.walk(ast.parse(open(os.path.join(ROOT, rel)).read())):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            if node.module.split(".")[0] not in PACKAGES or node.module not in MODULES:
                continue
            for a in node.names:
                if f"{node.module}.{a.name}" in MODULES:
                    continue
                try:
                    ok = hasattr(importlib.import_module(node.module), a.name)
                except ImportError:  # an optional dependency of that module (torch) is absent
                    continue
                if not ok:
                    missing.append(f"{rel}: {node.module}.{a.name}")
    assert missing == []


def _undefined_names(source: str, filename: str) -> list[str]:
    from pyflakes import checker, messages
    tree = ast.parse(source, filename)
    w = checker.Checker(tree, filename=filename)
    return [f"{filename}:{m.lineno}: {m.message % m.message_args}" for m in w.messages
            if isinstance(m, (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport))]


def test_undefined_name_finder_finds_a_planted_one():
    # a function body's NameError only fires when the function runs; pyflakes sees it statically
    src = "def f(xs):\n    for x in track(xs):\n        yield x\n"
    assert len(_undefined_names(src, "planted.py")) == 1
    assert _undefined_names("from m import track\n" + src, "ok.py") == []


def test_no_undefined_names():
    # the demo's eval and prior paths run only in the slow end-to-end test; this keeps a missing
    # import out of the default run
    bad = [msg for rel in _python_files(*PACKAGES, "tests", "launch")
           for msg in _undefined_names(open(os.path.join(ROOT, rel)).read(), rel)]
    assert not bad, "\n".join(bad)
