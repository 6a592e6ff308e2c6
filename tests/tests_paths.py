"""Paths and the in-process CLI runner the tests share."""

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
