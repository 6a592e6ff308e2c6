"""MLflow calls that wait out a busy SQLite store instead of failing.

SQLite lets one process at a time write its database: while another holds the write lock (a long
transaction, `BEGIN EXCLUSIVE`, a backup tool), MLflow's calls fail with "database is locked" after
its own busy timeout (20 s a call, 5 s when a process first opens the store). Every MLflow call the
project makes goes through `retrying_client(uri)`, an MlflowClient whose methods retry busy errors
with backoff for `window_s()` seconds (WINDOW_S, or $ORCHESTRATOR_STORE_WAIT_S), printing one line
when they start waiting; past the window they raise StoreBusyError naming the store and the fix.
Any other error propagates at once. `store_busy_now(uri)` asks, without waiting, whether another
process holds the write lock (the training loop then keeps its metrics for a later flush).

This module imports only the standard library, mlflow, sqlalchemy's exception types and
orchestrator.errors: the training loop (trainers/, inside Ray Train workers) uses it without
importing the driver side.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Callable, TypeVar

import sqlalchemy.exc

from orchestrator.errors import StoreBusyError

WINDOW_S = 180.0  # how long a call waits for a busy store before StoreBusyError
WINDOW_ENV = "ORCHESTRATOR_STORE_WAIT_S"  # overrides WINDOW_S (tests use a few seconds)
FIRST_DELAY_S, MAX_DELAY_S = 0.5, 10.0  # backoff between attempts (each attempt also waits MLflow's timeout)
BUSY_MESSAGES = ("database is locked", "database table is locked", "database is busy")
T = TypeVar("T")


def window_s() -> float:
    return float(os.environ.get(WINDOW_ENV) or WINDOW_S)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def store_name(uri: str) -> str:
    return str(sqlite_path(uri) or uri)


def is_busy(exc: BaseException | None) -> bool:
    """A SQLite busy/locked error, raw or as MLflow wraps it (its cause chain is searched)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (sqlite3.OperationalError, sqlalchemy.exc.OperationalError)) and \
                any(message in str(exc).lower() for message in BUSY_MESSAGES):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def busy_error(store: str, waited: float, window: float) -> StoreBusyError:
    return StoreBusyError(
        f"MLflow store {store} stayed locked by another process for {waited:.0f} s: find the process "
        f"holding it (`fuser {store}` or `lsof {store}`) and let it finish, then rerun the same command "
        f"(finished epochs resume from their checkpoint); for many writers run `mlflow server "
        f"--backend-store-uri sqlite:///{store}` and set MLFLOW_TRACKING_URI to its http:// address "
        f"(the wait is {WINDOW_ENV}, now {window:.0f} s)")


def retry_busy(call: Callable[[], T], *, store: str, what: str, window: float | None = None) -> T:
    """`call()`, retried while the store is busy, for `window` seconds (default `window_s()`).

    One line says when it starts waiting and one when the store is free again; window 0 raises
    StoreBusyError at the first busy error, silently (the caller decides what a busy store means).
    """
    window = window_s() if window is None else window
    started, delay = None, FIRST_DELAY_S
    while True:
        try:
            result = call()
        except Exception as exc:
            if not is_busy(exc):
                raise
            now = time.monotonic()
            if started is None:
                started = now
                if window > 0:
                    print(f"MLflow store {store} is locked by another process: waiting up to {window:.0f} s "
                          f"({what})", flush=True)
            if now - started >= window:
                raise busy_error(store, now - started, window) from None
            time.sleep(min(delay, started + window - now))
            delay = min(delay * 2, MAX_DELAY_S)
            continue
        if started is not None:
            print(f"MLflow store {store} is free again after {time.monotonic() - started:.0f} s ({what})",
                  flush=True)
        return result


class RetryingClient:
    """An MlflowClient (opened on first use) whose every method waits out a busy store."""

    def __init__(self, uri: str, window: float | None = None):
        self.uri, self.store, self.window = uri, store_name(uri), window
        self._client = None

    @property
    def client(self):
        """The plain MlflowClient; opening it reads the store's schema, so it waits too."""
        if self._client is None:
            from mlflow import MlflowClient

            self._client = retry_busy(lambda: MlflowClient(self.uri), store=self.store, what="opening it",
                                      window=self.window)
        return self._client

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        method = getattr(self.client, name)
        if not callable(method):
            return method

        @functools.wraps(method)
        def retrying(*args, **kwargs):
            return retry_busy(lambda: method(*args, **kwargs), store=self.store, what=name, window=self.window)

        return retrying


def retrying_client(uri: str, window: float | None = None) -> RetryingClient:
    """The project's MLflow client for `uri` (window: seconds to wait for a busy store; default `window_s()`)."""
    return RetryingClient(uri, window)


def store_busy_now(uri: str) -> bool:
    """Whether another connection holds a SQLite store's write lock right now (asked without waiting).

    False for stores that are not SQLite files, or not created yet.
    """
    path = sqlite_path(uri)
    if path is None or not path.is_file():
        return False
    try:
        connection = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=0, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
        finally:
            connection.close()
    except sqlite3.OperationalError as exc:
        return is_busy(exc)
    return False


class QuietBusyErrors(logging.Filter):
    """Drop MLflow's logged traceback of each busy error: the retry prints its own line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        errors = [record.exc_info[1] if record.exc_info else None, *(
            arg for arg in (record.args if isinstance(record.args, tuple) else ()) if isinstance(arg, BaseException))]
        return not any(is_busy(error) for error in errors)


def quiet_mlflow_busy_logs() -> None:
    logger = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, QuietBusyErrors) for f in logger.filters):
        logger.addFilter(QuietBusyErrors())


quiet_mlflow_busy_logs()
