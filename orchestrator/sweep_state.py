"""`sweep --status`: what a sweep's store holds for each of its cells, read without starting Ray.

A study's sweeps run for days, stopped and resumed across sessions; before resuming one (or while it
runs, from another terminal) a researcher asks what is done and what is left. Each cell is one of:

    finished   its MLflow run is FINISHED (top-1 after the last epoch, and when it ended)
    to copy    not in this experiment, but FINISHED in another one of the store: the sweep copies it
    training   a process holds the cell's lock now (who, since when; the epoch of its last checkpoint)
    stopped    started, not finished, nobody trains it: the sweep resumes it from its last checkpoint
    to run     nothing of it in the store yet

followed by one line of counts. The same store (`--output-dir`, or each cell's `output_dir`) the sweep
writes; nothing is written there, not even an empty store.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from orchestrator import tracking
from orchestrator.config import Config, cell_name
from orchestrator.locks import cell_lock_path, held_by

STATES = ("finished", "to copy", "training", "stopped", "to run")
CHECKPOINT_EPOCH = re.compile(r"checkpoint_epoch0*(\d+)$")


@dataclass(frozen=True)
class CellState:
    name: str
    state: str
    detail: str = ""


def cell_states(cells: list[Config], experiment: str) -> list[CellState]:
    """Each cell's state in its store (every cell of a sweep shares one output folder and tracking URI)."""
    if not cells:
        return []
    uri = tracking.store_uri(cells[0].out)
    if _missing_sqlite_store(uri):  # opening it would create it: nothing has run there
        return [_state(config, None, None, {}) for config in cells]
    client = tracking.retrying_client(uri)
    found = client.get_experiment_by_name(experiment)
    runs = _newest_cell_runs(client, [found.experiment_id]) if found else {}
    others = {e.experiment_id: e.name for e in client.search_experiments() if e.name != experiment}
    elsewhere = _newest_cell_runs(client, list(others), finished=True) if others else {}
    return [_state(config, runs.get(cell_name(config)), elsewhere.get(cell_name(config)), others)
            for config in cells]


def _missing_sqlite_store(uri: str) -> bool:
    return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///").split("?", 1)[0]).is_file()


def _newest_cell_runs(client, experiment_ids: list[str], finished: bool = False) -> dict:
    """cell name -> its newest run (FINISHED first: an imported finished run may be older than a killed one)."""
    condition = "tags.role = 'cell'" + (" and attributes.status = 'FINISHED'" if finished else "")
    runs = client.search_runs(experiment_ids, filter_string=condition, max_results=50000,
                              order_by=["attributes.start_time DESC"])
    newest: dict = {}
    for run in sorted(runs, key=lambda r: r.info.status != "FINISHED"):  # stable: newest first within each
        newest.setdefault(run.data.tags.get("cell"), run)
    return newest


def _state(config: Config, run, elsewhere, experiment_names: dict[str, str]) -> CellState:
    name = cell_name(config)
    if run is not None and run.info.status == "FINISHED":
        return CellState(name, "finished", _finished_detail(run))
    holder = held_by(cell_lock_path(config.out, name))
    epochs = _checkpoint_epoch(config.out / "ray_results" / name)
    progress = f"epoch {epochs}/{config.schedule.epochs}" if epochs else "no checkpoint yet"
    if holder:
        return CellState(name, "training", f"{progress}; {holder}")
    if run is None and elsewhere is not None:
        return CellState(name, "to copy", f"finished in experiment {experiment_names[elsewhere.info.experiment_id]!r}: "
                                         f"{_finished_detail(elsewhere)}")
    if run is not None or epochs:
        return CellState(name, "stopped", f"{progress}: resumes there")
    return CellState(name, "to run")


def _finished_detail(run) -> str:
    from datetime import datetime, timezone

    top1 = run.data.metrics.get("val/top1_final")
    ended = datetime.fromtimestamp(run.info.end_time / 1000, timezone.utc) if run.info.end_time else None
    return (f"top-1 {top1:.2f}" if top1 is not None else "top-1 ?") + (f", {ended:%Y-%m-%d %H:%M} UTC" if ended else "")


def _checkpoint_epoch(run_dir: Path) -> int:
    """Epochs done at the cell's newest checkpoint (its summary, else the folder's name); 0 without one."""
    from trainers.loop import SUMMARY_FILE
    from trainers.reporting import latest_checkpoint

    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        return 0
    try:
        return int(json.loads((checkpoint / SUMMARY_FILE).read_text())["epochs_done"])
    except (OSError, ValueError, KeyError, TypeError):
        match = CHECKPOINT_EPOCH.search(checkpoint.name)
        return int(match.group(1)) if match else 0


def render_states(states: list[CellState], header: str) -> str:
    width = max((len(s.name) for s in states), default=0)
    lines = [header, *(f"  {s.name:{width}s}  {s.state:8s}  {s.detail}".rstrip() for s in states)]
    counts = Counter(s.state for s in states)
    lines.append("  " + ", ".join(f"{counts[state]} {state}" for state in STATES if counts[state]) +
                 f" of {len(states)} cells")
    return "\n".join(lines)
