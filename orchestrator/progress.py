"""A sweep's live console: how many cells are done, running, failed and pending, with an ETA.

On a terminal the table is redrawn in place and the workers' progress lines print above it; anywhere
else (CI logs, a file) one compact status line is printed whenever a cell changes state. The ETA
assumes each remaining cell takes the mean wall time of the cells trained so far (cells skipped as
already finished are not counted), `slots` at a time.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, TextIO

REDRAW_EVERY_S = 1.0
# ANSI: cursor to the start of the line n lines up, then clear to the end of the screen.
ERASE_LINES_UP = "\x1b[{n}F\x1b[J"


@dataclass
class CellState:
    state: str  # running | done | skipped | failed
    started: float
    ended: float | None = None


def eta_seconds(durations: list[float], running_elapsed: list[float], pending: int, slots: int) -> float | None:
    """Remaining wall time, or None before any cell has trained."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    work = pending * mean + sum(max(mean - elapsed, 0.0) for elapsed in running_elapsed)
    return work / max(slots, 1)


def clock(seconds: float | None) -> str:
    """`m:ss`, or `h:mm:ss` from an hour; `?` when unknown."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render(name: str, total: int, cells: dict[str, CellState], *, now: float, started: float,
           slots: int) -> list[str]:
    """The table: a header with the counts, elapsed time and ETA, then one row per running or failed cell."""
    by_state = {state: [cell for cell, s in cells.items() if s.state == state]
                for state in ("running", "done", "skipped", "failed")}
    done = len(by_state["done"]) + len(by_state["skipped"])
    pending = total - len(cells)
    trained = [s.ended - s.started for s in cells.values() if s.state == "done" and s.ended is not None]
    eta = eta_seconds(trained, [now - cells[c].started for c in by_state["running"]], pending, slots)
    skipped = f" ({len(by_state['skipped'])} already)" if by_state["skipped"] else ""
    header = (f"sweep {name}: {done}/{total} done{skipped}, {len(by_state['running'])} running, "
              f"{len(by_state['failed'])} failed, {pending} pending  elapsed {clock(now - started)}  ETA {clock(eta)}")
    rows = [f"  running  {cell}  {clock(now - cells[cell].started)}" for cell in by_state["running"]]
    rows += [f"  failed   {cell}" for cell in by_state["failed"]]
    return [header, *rows]


class SweepProgress:
    """Cells' states as the sweep reports them (thread-safe: Ray's log thread prints worker lines)."""

    def __init__(self, name: str, total: int, slots: int, *, stream: TextIO | None = None,
                 live: bool | None = None, now: Callable[[], float] = time.monotonic) -> None:
        """live: redraw in place (default: when `stream` is a terminal)."""
        self.name, self.total, self.slots = name, total, slots
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.now = now
        self.started = now()
        self.cells: dict[str, CellState] = {}
        self.drawn = 0  # table lines now on screen (live mode)
        self.last_draw = 0.0
        self.lock = threading.Lock()

    def start(self, cell: str) -> None:
        self.change(cell, "running")

    def finish(self, cell: str, *, skipped: bool = False) -> None:
        self.change(cell, "skipped" if skipped else "done")

    def fail(self, cell: str) -> None:
        self.change(cell, "failed")

    def change(self, cell: str, state: str) -> None:
        with self.lock:
            now = self.now()
            if state == "running":
                self.cells[cell] = CellState("running", now)
            else:
                self.cells.setdefault(cell, CellState(state, now)).state = state
                self.cells[cell].ended = now
            if self.live:
                self.redraw()
            else:
                self.write([f"{self.table()[0]}  [{state}: {cell}]"])

    def line(self, text: str) -> None:
        """A worker's line (an epoch's progress): above the table, which is drawn again below it."""
        with self.lock:
            self.erase()
            self.write([text])
            if self.live:
                self.draw()

    def tick(self) -> None:
        """Redraw the live table (elapsed times, ETA) at most once a second."""
        with self.lock:
            if self.live and self.now() - self.last_draw >= REDRAW_EVERY_S:
                self.redraw()

    def table(self) -> list[str]:
        return render(self.name, self.total, self.cells, now=self.now(), started=self.started, slots=self.slots)

    def redraw(self) -> None:
        self.erase()
        self.draw()

    def draw(self) -> None:
        lines = self.table()
        self.write(lines)
        self.drawn = len(lines)
        self.last_draw = self.now()

    def erase(self) -> None:
        if self.drawn:
            self.stream.write(ERASE_LINES_UP.format(n=self.drawn))
            self.drawn = 0

    def write(self, lines: list[str]) -> None:
        self.stream.write("".join(f"{line}\n" for line in lines))
        self.stream.flush()


def tune_callback(progress: SweepProgress, cell_of: Callable[[dict], str]):
    """A Ray Tune callback telling `progress` when a trial (one cell, named by `cell_of(config)`) changes state."""
    from ray.tune import Callback

    class CellProgress(Callback):
        def on_step_begin(self, iteration, trials, **info):
            progress.tick()

        def on_trial_start(self, iteration, trials, trial, **info):
            progress.start(cell_of(trial.config))

        def on_trial_complete(self, iteration, trials, trial, **info):
            progress.finish(cell_of(trial.config), skipped=bool((trial.last_result or {}).get("skipped")))

        def on_trial_error(self, iteration, trials, trial, **info):
            progress.fail(cell_of(trial.config))

        def __reduce__(self):  # the Tuner pickles its settings (for Tuner.restore): the table stays here
            return Callback, ()

    return CellProgress()
