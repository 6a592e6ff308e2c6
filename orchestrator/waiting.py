"""A program whose Ray Train workers wait for CPUs that other programs hold says so, one line at a time.

Ray Train V2 starts a cell's workers from a controller actor, which asks for a placement group (one bundle
per worker), waits for it RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (60 s by default), then asks again, as
often as FailureConfig(controller_failure_limit) allows (by default without end). On a Ray whose CPUs other
programs' cells hold, `run --workers 1` would wait there silently; so, while a cell's TorchTrainer runs,
a thread of the program that drives Ray looks every few seconds at its own job's placement groups in the
GCS's table (`ray.util.placement_group_table`; a placement group's ID ends with the ID of the job that made
it; no dashboard needed) and, while one waits, prints one line at most every 30 s:

    waiting for 1 CPU (0 of 2 CPUs free) on the local Ray of pid 1234 (orchestrator sweep --config q.yaml),
    held by 1 other program: waited 40 s

With ORCHESTRATOR_RAY_WAIT_S the controller itself gives up after about that long (its attempts last
min(30 s, the limit) each; `controller_failure_limit`), withdrawing its request; a SIGTERM while it waits
ends the program at once (Ray removes the job's placement group with it). Either way the CLI prints one
`error:` line naming the fix (`RayBusyError`), no traceback or Ray stack. (Ray Train's own Ctrl-C abort
cannot reach a controller while it waits: it is blocked in that wait.) A Tune trial does not watch: the
sweep's table shows its cells.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from orchestrator.errors import ConfigError, RayBusyError

WAIT_LIMIT_ENV = "ORCHESTRATOR_RAY_WAIT_S"
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # one attempt of the controller
POLL_S, FIRST_LINE_S, LINE_EVERY_S, ATTEMPT_S = 5.0, 10.0, 30.0, 30.0
WAITING_STATES = ("PENDING", "RESCHEDULING")
FIX = "run from another checkout (it starts its own Ray), or pass --address of a Ray with free CPUs"


def wait_limit() -> float | None:
    value = os.environ.get(WAIT_LIMIT_ENV, "").strip()
    try:
        return float(value) if value else None
    except ValueError:
        raise ConfigError(f"{WAIT_LIMIT_ENV}={value!r} is not a number of seconds: set it to one, or unset it "
                          "to wait as long as it takes") from None


def controller_failure_limit() -> int:
    """Ray Train's FailureConfig(controller_failure_limit) for a cell: -1 (retry forever) unless
    ORCHESTRATOR_RAY_WAIT_S bounds the wait; then attempts of min(30 s, limit) until the limit is reached."""
    limit = wait_limit()
    if limit is None:
        return -1
    attempt = float(os.environ.setdefault(START_TIMEOUT_ENV, f"{min(ATTEMPT_S, limit):g}"))  # read by the controller
    return max(0, math.ceil(limit / attempt) - 1)


@contextmanager
def say_what_it_waits_for() -> Iterator[None]:
    """Around a TorchTrainer's fit with workers: report waits for their resources; a give-up ends the block
    with RayBusyError."""
    from orchestrator.runtime import describe_ray, in_ray_worker

    if in_ray_worker() or threading.current_thread() is not threading.main_thread():
        yield
        return
    watch = ResourceWait(describe_ray())
    watch.previous_sigterm = signal.signal(signal.SIGTERM, watch.on_sigterm)
    threading.Thread(target=watch.run, name="orchestrator-resource-wait", daemon=True).start()
    try:
        yield
    except BaseException as error:
        if watch.verdict is None and start_timed_out(error):
            watch.verdict = watch.message(f"gave up after waiting {duration(watch.waited())}",
                                          f"wait until they finish (unset {WAIT_LIMIT_ENV} to wait)")
        if watch.verdict is not None:
            raise RayBusyError(watch.verdict) from None
        raise
    finally:
        watch.done.set()
        signal.signal(signal.SIGTERM, watch.previous_sigterm)


def start_timed_out(error: BaseException) -> bool:
    """Ray Train's controller gave up starting the workers: their resources were not granted in time."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    return isinstance(getattr(error, "controller_failure", None), WorkerGroupStartupTimeoutError)


class ResourceWait:
    """Looks at this job's placement groups and says what it waits for."""

    def __init__(self, where: str, clock: Callable[[], float] = time.monotonic):
        import ray

        self.where, self.clock = where, clock
        self.job = ray.get_runtime_context().get_job_id()
        self.since: float | None = None  # when the current wait began
        self.last_line: float | None = None
        self.wanted: dict = {}
        self.verdict: str | None = None  # the error, once it gave up
        self.done = threading.Event()
        self.previous_sigterm = signal.SIG_DFL

    def run(self) -> None:
        while not self.done.wait(POLL_S):
            try:
                self.look()
            except Exception:  # Ray shutting down, a slow GCS reply: the next look tells
                continue

    def look(self) -> None:
        wanted, holding = own_placement_groups(self.job)
        now = self.clock()
        if not wanted:
            self.since = None if holding else self.since  # between two attempts it still waits
            return
        self.wanted, self.since = wanted, self.since if self.since is not None else now
        waited = now - self.since
        if waited >= FIRST_LINE_S and (self.last_line is None or now - self.last_line >= LINE_EVERY_S):
            print(f"waiting for {self.request()}, held by {holders()}: waited {duration(waited)}", flush=True)
            self.last_line = now

    def waited(self) -> float:
        return self.clock() - self.since if self.since is not None else wait_limit() or 0.0

    def request(self) -> str:
        import ray

        free, total = ray.available_resources().get("CPU", 0), ray.cluster_resources().get("CPU", 0)
        wanted = amount(self.wanted) if self.wanted else "its workers' resources"
        return f"{wanted} ({free:g} of {total:g} CPUs free) on {self.where}"

    def message(self, how: str, wait: str) -> str:
        return f"{how} for {self.request()}, held by {holders()}: {wait}, {FIX}"

    def on_sigterm(self, signum, frame) -> None:
        if self.since is None:  # not waiting: what the previous handler (Ray's: exit) does
            if callable(self.previous_sigterm):
                self.previous_sigterm(signum, frame)
            elif self.previous_sigterm != signal.SIG_IGN:
                sys.exit(128 + signum)
            return
        self.verdict = self.message(f"stopped (SIGTERM) after waiting {duration(self.waited())}",
                                    "run it again when they finish")
        raise KeyboardInterrupt  # what interrupts a blocking ray.get (other errors are dropped there)


def own_placement_groups(job: str) -> tuple[dict, bool]:
    """What this job's waiting placement groups ask for, and whether one of its groups holds its resources."""
    from ray.util import placement_group_table

    groups = [group for group_id, group in placement_group_table().items() if group_id.endswith(job)]
    wanted: dict = {}
    for group in groups:
        if group["state"] in WAITING_STATES:
            for bundle in group["bundles"].values():
                for name, value in bundle.items():
                    wanted[name] = wanted.get(name, 0) + value
    return wanted, any(group["state"] == "CREATED" for group in groups)


def holders() -> str:
    from orchestrator.runtime import other_drivers

    count = len(other_drivers())
    return f"{count} other program{'' if count == 1 else 's'}"


def amount(resources: dict) -> str:
    """{"CPU": 2.0, "GPU": 1.0} -> "2 CPUs, 1 GPU"."""
    return ", ".join(f"{value:g} {name}{'s' if value > 1 and name in ('CPU', 'GPU') else ''}"
                     for name, value in sorted(resources.items()))


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
