"""Dependencies run one way (docs/architecture.md): checked on the source, imports inside functions included.

The import graph covers every module of orchestrator/, trainers/ and pca/; an edge is any import of
one of them (top level or inside a function; `import a.b`, `from a import b` where b is a submodule,
relative imports).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests_paths import REPO

PACKAGES = ("orchestrator", "trainers", "pca")


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def sources(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((REPO / folder).rglob("*.py"))]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of `modules` a file imports. `from a import b` is the submodule a.b when there is one,
    else the module a; a relative import is anchored at the file's package."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                         for alias in node.names)
    return {module for module in found if module in modules and module != name}


def import_graph() -> dict[str, set[str]]:
    """{module: the project modules it imports} for every module of PACKAGES."""
    paths = {module_name(p): p for p in sources(*PACKAGES)}
    return {name: project_imports(path, set(paths)) for name, path in paths.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while not component or component[-1] != node:
                    component.append(stack.pop())
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circles():
    graph = import_graph()
    assert len(graph) > 50  # the walk found the packages
    described = [", ".join(f"{a} -> {b}" for a in circle for b in sorted(graph[a] & set(circle)))
                 for circle in circles(graph)]
    assert described == [], "import circles (module -> module it imports):\n" + "\n".join(described)


def test_circles_are_found():
    """The finder itself: a three-module loop and a pair, beside modules outside any loop."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}, "g": {"a"}}
    assert sorted(circles(graph)) == [["a", "b", "c"], ["e", "f"]]


def test_data_side_and_worker_side_import_each_other_nowhere():
    """orchestrator/data/ and trainers/ share only lower modules (config, errors, files, image_views, store_retry)."""
    graph = import_graph()
    data = {m for m in graph if m.startswith("orchestrator.data.") or m == "orchestrator.data"}
    worker = {m for m in graph if m.split(".")[0] == "trainers"}
    crossing = sorted(f"{a} -> {b}" for a in graph for b in graph[a]
                      if (a in data and b in worker) or (a in worker and b in data))
    assert crossing == []


# Who may import mlflow, and why: tracking.py is the driver's one door to MLflow and store_retry.py its
# retrying client; the training loop runs in a Ray Train worker, which may not import tracking, so it
# builds its Metric batches itself (and writes them through store_retry); report/ reads runs as pandas
# frames through mlflow.search_runs (a global-URI call tracking never makes) and logs its files back.
MLFLOW_IMPORTERS = {"orchestrator/tracking.py", "orchestrator/store_retry.py", "trainers/loop.py",
                    "orchestrator/report/runs.py", "orchestrator/report/output.py"}


def test_only_tracking_and_its_named_exceptions_import_mlflow():
    importers = {str(p.relative_to(REPO)) for p in sources(*PACKAGES, "scripts")
                 if any(name == "mlflow" or name.startswith("mlflow.") for name in imports_of(p))}
    assert importers - MLFLOW_IMPORTERS == set()


def test_mlflow_calls_go_through_tracking():
    """Driver modules call tracking's functions; only the worker's loop opens the retrying client itself
    (scripts/, standalone tools, may open it too)."""
    openers = {str(p.relative_to(REPO)) for p in sources(*PACKAGES)
               for node in ast.walk(ast.parse(p.read_text()))
               if isinstance(node, ast.ImportFrom) and node.module == "orchestrator.store_retry"
               and any(alias.name == "retrying_client" for alias in node.names)}
    assert openers == {"orchestrator/tracking.py", "trainers/loop.py"}


def test_no_verb_imports_the_cli():
    offenders = [p.relative_to(REPO) for p in sources(*PACKAGES)
                 if "orchestrator.cli" in imports_of(p) and p.name != "__main__.py"]
    assert offenders == []


def test_methods_defined_outside_the_registry_never_import_it():
    outside = sources("pca") + [REPO / "orchestrator" / "distill_job.py", REPO / "orchestrator" / "method_spec.py"]
    offenders = [p.relative_to(REPO) for p in outside if "orchestrator.methods" in imports_of(p)]
    assert offenders == []


def test_worker_code_never_imports_the_driver_side():
    driver = {"orchestrator.cell", "orchestrator.sweep", "orchestrator.cli", "orchestrator.methods",
              "orchestrator.report", "orchestrator.tracking"}
    offenders = {str(p.relative_to(REPO)): sorted(imports_of(p) & driver) for p in sources("trainers")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_mlflow_clients_wait_out_a_busy_store():
    """MLflow is called through `store_retry.retrying_client`, which waits out a busy store; `report/` only reads."""
    offenders = [p.relative_to(REPO) for p in sources("orchestrator", "trainers")
                 if "MlflowClient(" in p.read_text() and p.name != "store_retry.py" and "report" not in p.parts]
    assert offenders == []


def test_only_pca_names_the_pca_method():
    """Other modules ask the registry what a method's set holds instead of checking its name."""
    offenders = [p.relative_to(REPO) for p in sources("orchestrator", "trainers")
                 if any(isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value == "pca"
                                                             for c in [node.left, *node.comparators])
                        for node in ast.walk(ast.parse(p.read_text())))]
    assert offenders == []
