"""Which code a cell ran: the git commit of this checkout, logged on every cell as the `code.commit` tag.

The device a cell trained on is recorded beside it by the training loop (`resolved.device`, from
`trainers.precision.device_description`); `report --into` states both under each results block, so a
page's "ran at commit X on machine Y" is read from MLflow, not typed. A checkout with changes to its tracked
code (CODE_PATHS) reads `<commit>+modified`. Where the code has no `.git` (a Ray job's uploaded working dir), the
submitting machine's commit travels in the `ORCHESTRATOR_COMMIT` environment variable (`submit` sets
it); with neither, "unknown".
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

COMMIT_TAG = "code.commit"
COMMIT_ENV = "ORCHESTRATOR_COMMIT"
REPO = Path(__file__).resolve().parents[1]
#: what decides a cell's numbers (a change to docs or results/ does not make the code "+modified")
CODE_PATHS = ("orchestrator", "trainers", "pca", "configs", "pyproject.toml")
_COMMITS: dict[Path, str] = {}


def code_commit(repo: Path = REPO) -> str:
    """The short commit of the checkout `repo` (this package's by default), `+modified` when tracked
    files differ from it; the `ORCHESTRATOR_COMMIT` variable where set; "unknown" outside git."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    if repo not in _COMMITS:
        _COMMITS[repo] = _read_commit(repo)
    return _COMMITS[repo]


def _read_commit(repo: Path) -> str:
    try:
        head = _git(repo, "rev-parse", "--short", "HEAD")
        changed = _git(repo, "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+modified" if changed else head


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30,
                          check=True).stdout.strip()
