"""The `peer` benchmark: a whole fmnist-hard cell as a user runs it against DD-Ranking 0.2's
hard-label evaluator on the same images (scripts/ddranking_peer.py, in DD-Ranking's own venv)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time

from orchestrator.bench.context import PROTOCOL, REPO, BenchContext, Figure, env_without, protocol_config


PEER_SCRIPT = REPO / "scripts" / "ddranking_peer.py"
PEER_SETUP = ("python -m venv --system-site-packages /tmp/ddr && /tmp/ddr/bin/pip install ddranking==0.2.0, "
              "then pass --peer-python /tmp/ddr/bin/python")


def timed_run(command: list[str]) -> tuple[float, str]:
    """(wall seconds, stdout) of a command run to completion; its failure is an error with its tail."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({done.returncode}): {done.stderr[-800:]}")
    return time.perf_counter() - started, done.stdout


def bench_peer(ctx: BenchContext) -> dict[str, Figure]:
    """A whole fmnist-hard cell (random, IPC 10, seed 0: 300 epochs, --quick 20) as a user runs it
    (`python -m orchestrator run`, a fresh process), then DD-Ranking 0.2's hard-label evaluator on the
    same images for the same epochs (scripts/ddranking_peer.py in its own venv), one after the other."""
    if not ctx.peer_python:
        raise RuntimeError(f"the peer benchmark needs DD-Ranking's python: {PEER_SETUP}")
    from orchestrator.cell import prepare_data

    epochs = 20 if ctx.quick else 300
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp, env_without("MLFLOW_TRACKING_URI"):
        data = prepare_data(protocol_config({"output_dir": tmp, "data.root": str(ctx.data_root), "data.ipc": 10}))
        ours_s, output = timed_run([sys.executable, "-m", "orchestrator", "run", "--config", str(PROTOCOL),
                                    "--method", "random", "--ipc", "10", "--seed", "0", "--epochs", str(epochs),
                                    "--output-dir", tmp, "--set", f"data.root={ctx.data_root}"])
        top1 = float(re.search(r"top-1 final ([0-9.]+)", output).group(1))
        peer_s, line = timed_run([ctx.peer_python, str(PEER_SCRIPT), "--set", str(data.train.path),
                                  "--test", str(data.val.path),
                                  "--epochs", str(epochs)])
    peer = json.loads(line.strip().splitlines()[-1])
    return {"epochs": Figure(epochs, "epochs"), "cell_wall_s": Figure(ours_s, "s"),
            "cell_top1_final": Figure(top1, "%"), "ddranking_wall_s": Figure(peer_s, "s"),
            "ddranking_train_s": Figure(peer["wall_s"], "s"), "ddranking_top1_best": Figure(peer["top1_best"], "%")}

