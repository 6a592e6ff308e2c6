"""scripts/install.sh on a machine that lacks the dataset package or the Python dependencies.

The machine running the tests already has both, so a broken "missing" branch would never run here;
these tests point the script at an empty dataset folder and put stand-in `apt-get` / `python3`
commands first on PATH (they record their arguments), then run the real script.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests_paths import REPO


def stand_in(directory: Path, name: str, body: str) -> None:
    script = directory / name
    script.write_text(f"#!/bin/sh\necho \"{name} $*\" >> {directory}/calls.log\n{body}\n")
    script.chmod(0o755)


def run_install(tmp_path: Path, *, python_ok: bool) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in(bin_dir, "apt-get", 'case "$*" in *install*) echo "DEBIAN_FRONTEND=$DEBIAN_FRONTEND" '
                                 f'>> {bin_dir}/calls.log;; esac\nexit 0')
    # `python -c "import ..."` answers as configured; `python -m pip ...` succeeds.
    stand_in(bin_dir, "python-stand-in", f'[ "$1" = "-c" ] && exit {0 if python_ok else 1}\nexit 0')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "FASHION_MNIST_DIR": str(tmp_path / "no-dataset-here"), "PYTHON": str(bin_dir / "python-stand-in")}
    result = subprocess.run(["bash", str(REPO / "scripts" / "install.sh")], env=env, capture_output=True,
                            text=True, timeout=60)
    calls = (bin_dir / "calls.log").read_text().splitlines() if (bin_dir / "calls.log").exists() else []
    return result, calls


def test_missing_dataset_installs_the_debian_package(tmp_path):
    result, calls = run_install(tmp_path, python_ok=True)
    assert result.returncode == 0, result.stderr
    assert "apt-get update -qq" in calls
    assert "apt-get install -y -qq dataset-fashion-mnist" in calls
    assert "DEBIAN_FRONTEND=noninteractive" in calls


def test_missing_python_packages_run_pip_install(tmp_path):
    result, calls = run_install(tmp_path, python_ok=False)
    assert result.returncode == 0, result.stderr
    assert any(call.startswith("python-stand-in -m pip install") and ".[dev]" in call for call in calls), calls
