"""What the tests share besides fixtures: the repository's paths, the CLI run in this process or as a
child process, and the MLflow store such a run leaves."""

from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
HARD = str(CONFIGS / "fmnist-hard.yaml")


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """Run the CLI in this process; return its exit code and what it printed (stderr first)."""
    from orchestrator.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def child_env(tmp_path: Path, **extra: str) -> dict:
    """The environment of a CLI child process: unbuffered output, its own ORCHESTRATOR_HOME."""
    return dict(os.environ, PYTHONUNBUFFERED="1", ORCHESTRATOR_HOME=str(tmp_path / "home"), **extra)


def cell_runs(out: Path, experiment: str = "fmnist-hard", role: str = "cell") -> tuple:
    """(client, the runs tagged `role` of `experiment`) of the store under `out`; no runs if no experiment."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.role = '{role}'") if found else []
    return client, runs


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers_http(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
            return True
    except OSError:
        return False
