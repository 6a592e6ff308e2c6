"""Headless Chromium (Debian's `chromium`, installed by scripts/install.sh) for tests that check a page
as a person's browser renders it: the DOM after scripts ran, and a screenshot."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1600,1000",
         "--virtual-time-budget=20000"]


def dump_dom(url: str, timeout: float = 120) -> str:
    """The page's DOM after its scripts ran (Chromium's --dump-dom)."""
    done = subprocess.run([CHROMIUM, *FLAGS, "--dump-dom", url], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def screenshot(url: str, path: Path, timeout: float = 120) -> Path:
    done = subprocess.run([CHROMIUM, *FLAGS, f"--screenshot={path}", url], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0 and Path(path).is_file(), done.stderr[-2000:]
    return Path(path)
