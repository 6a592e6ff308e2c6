"""A sweep's console: how many cells are done, running, failed and pending, with an ETA.

On a terminal, a live table drawn by rich and updated in place: one row per running cell (epoch x/y,
loss, images/s, the cell's own ETA, elapsed) and a totals line. The cells' per-epoch lines feed the
table instead of scrolling past it (with `--verbose` they print above it too); every other worker
line (a finished cell's result, a resumed checkpoint) prints above it.

Anywhere else (a pipe, CI logs, a file): plain lines only — one per finished or failed cell and a
status line at most once a minute; per-epoch lines only with `--verbose`.

The sweep's ETA assumes each remaining cell takes the mean wall time of the cells trained so far
(cells skipped as already finished are not counted), `slots` at a time.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO

REDRAW_EVERY_S = 1.0
STATUS_EVERY_S = 60.0  # off a terminal: the status line at most this often
# A cell's per-epoch line, as trainers.loop.progress_line writes it.
EPOCH_LINE = re.compile(r"^\[(?P<cell>[^\]]+)\] epoch (?P<epoch>\d+)/(?P<epochs>\d+)\s+loss (?P<loss>\S+)"
                        r"(?:.*?\s(?P<rate>[\d.]+) img/s)?(?:\s+ETA (?P<eta>[\d:]+))?")


@dataclass
class CellState:
    state: str  # running | done | skipped | failed
    started: float
    ended: float | None = None
    epoch: dict = field(default_factory=dict)  # the cell's last epoch line: epoch, epochs, loss, rate, eta


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
    """Plain text: a header with the counts, elapsed time and ETA, then one row per running or failed cell."""
    by_state = states(cells)
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


def states(cells: dict[str, CellState]) -> dict[str, list[str]]:
    return {state: [cell for cell, s in cells.items() if s.state == state]
            for state in ("running", "done", "skipped", "failed")}


def live_table(header: str, cells: dict[str, CellState], now: float):
    """The rich table of the running cells, titled by the totals line."""
    from rich.table import Table

    table = Table(title=header, title_justify="left", expand=True, show_edge=False, pad_edge=False)
    table.add_column("running cell", no_wrap=True, overflow="ellipsis", ratio=1)
    for column, width in (("epoch", 8), ("loss", 8), ("img/s", 6), ("ETA", 7), ("elapsed", 7)):
        table.add_column(column, justify="right", no_wrap=True, min_width=width)
    for cell, state in cells.items():
        if state.state == "running":
            e = state.epoch
            epoch = f"{e['epoch']}/{e['epochs']}" if e else "starting"
            table.add_row(cell, epoch, e.get("loss") or "", e.get("rate") or "", e.get("eta") or "",
                          clock(now - state.started))
    return table


class SweepProgress:
    """Cells' states as the sweep reports them (thread-safe: Ray's log thread prints worker lines)."""

    def __init__(self, name: str, total: int, slots: int, *, stream: TextIO | None = None,
                 live: bool | None = None, verbose: bool = False, now: Callable[[], float] = time.monotonic) -> None:
        """live: redraw a rich table in place (default: when `stream` is a terminal); verbose: epoch lines too."""
        self.name, self.total, self.slots, self.verbose = name, total, slots, verbose
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.now = now
        self.started = now()
        self.cells: dict[str, CellState] = {}
        self.last_draw = self.last_status = -float("inf")
        self.lock = threading.Lock()
        self.screen = None  # rich.live.Live, started at the first change (live mode)

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
            elif state == "failed":  # a finished cell's own result line comes from its worker
                self.write([f"failed: {cell}"])

    def line(self, text: str) -> None:
        """A worker's line: an epoch's progress updates its cell's row; other lines print above the table."""
        with self.lock:
            match = EPOCH_LINE.match(text)
            if match and match["cell"] in self.cells:
                self.cells[match["cell"]].epoch = match.groupdict()
            if match is None or self.verbose:
                self.write([text])
            if self.live:
                self.redraw(throttle=True)

    def tick(self) -> None:
        """Live: redraw (elapsed times, ETA) at most once a second; else the status line once a minute."""
        with self.lock:
            if self.live:
                self.redraw(throttle=True)
            elif self.now() - self.last_status >= STATUS_EVERY_S:
                self.last_status = self.now()
                self.write([self.table()[0]])

    def table(self) -> list[str]:
        return render(self.name, self.total, self.cells, now=self.now(), started=self.started, slots=self.slots)

    def redraw(self, throttle: bool = False) -> None:
        if throttle and self.now() - self.last_draw < REDRAW_EVERY_S:
            return
        if self.screen is None:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream, force_terminal=True, soft_wrap=True)
            self.screen = Live(console=console, auto_refresh=False, transient=False)
            self.screen.start()
        self.screen.update(live_table(self.table()[0], self.cells, self.now()), refresh=True)
        self.last_draw = self.now()

    def write(self, lines: list[str]) -> None:
        if self.screen is not None:
            for line in lines:
                self.screen.console.print(line, markup=False, highlight=False, soft_wrap=True)
            return
        self.stream.write("".join(f"{line}\n" for line in lines))
        self.stream.flush()

    def close(self) -> None:
        """Leave the last table on screen (live), or print the final status line."""
        with self.lock:
            if self.screen is not None:
                self.screen.update(live_table(self.table()[0], self.cells, self.now()), refresh=True)
                self.screen.stop()
                self.screen = None
            elif not self.live:
                self.write([self.table()[0]])


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
