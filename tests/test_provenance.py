"""`code.commit`: which code a cell ran, read from a real git checkout."""

from __future__ import annotations

import subprocess

from orchestrator import provenance


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_code_commit_is_the_checkouts_commit_marked_modified_only_by_code_changes(tmp_path, monkeypatch):
    monkeypatch.delenv(provenance.COMMIT_ENV, raising=False)
    repo = tmp_path / "checkout"
    (repo / "trainers").mkdir(parents=True)
    (repo / "docs").mkdir()
    (repo / "trainers" / "loop.py").write_text("EPOCHS = 300\n")
    (repo / "docs" / "results.md").write_text("# results\n")
    _git(tmp_path, "init", "-q", str(repo))
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "--short", "HEAD")
    assert provenance._read_commit(repo) == head
    (repo / "docs" / "results.md").write_text("# results, regenerated\n")  # a page is not code
    (repo / "notes.txt").write_text("untracked\n")
    assert provenance._read_commit(repo) == head
    (repo / "trainers" / "loop.py").write_text("EPOCHS = 30\n")
    assert provenance._read_commit(repo) == f"{head}+modified"
    assert provenance._read_commit(tmp_path / "not-a-checkout") == "unknown"


def test_the_commit_a_driver_passes_on_wins_where_the_code_has_no_git(tmp_path, monkeypatch):
    monkeypatch.setenv(provenance.COMMIT_ENV, "0123abc")
    assert provenance.code_commit(tmp_path) == "0123abc"
