"""docs/protocol.md is the protocol the code cites: every `docs/protocol.md §Section` names a real section."""

from __future__ import annotations

import re
from pathlib import Path

from tests_paths import REPO

CITATION = re.compile(r"docs/protocol\.md §([^\n]{0,40})")


def section_names() -> set[str]:
    text = (REPO / "docs" / "protocol.md").read_text()
    return {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("## ")}


def citations() -> list[tuple[Path, str]]:
    found = []
    for folder in ("orchestrator", "trainers", "pca", "configs", "tests", "scripts"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix in {".py", ".yaml", ".sh"} and path.name != Path(__file__).name:
                found += [(path, text) for text in CITATION.findall(path.read_text())]
    return found


def test_protocol_document_has_the_sections_code_relies_on():
    assert {"Evaluation protocol", "Batch and shuffle", "Pruning scores", "Selection", "PCA", "Students",
            "Teachers and caches", "Deviations"} <= section_names()


def test_every_citation_names_an_existing_section():
    found = citations()
    assert len(found) >= 8
    sections = section_names()
    missing = [(str(path.relative_to(REPO)), text) for path, text in found
               if not any(text.startswith(name) for name in sections)]
    assert not missing, missing


def test_nothing_cites_a_protocol_file_outside_the_repository():
    stale = [str(path.relative_to(REPO)) for folder in ("orchestrator", "trainers", "pca", "configs")
             for path in (REPO / folder).rglob("*") if path.suffix in {".py", ".yaml"}
             and re.search(r"(?<!docs/)PROTOCOL\.md", path.read_text())]
    assert not stale, stale
