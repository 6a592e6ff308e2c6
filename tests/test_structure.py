"""Dependencies run one way (docs/architecture.md): checked on the source, imports inside functions included."""

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
