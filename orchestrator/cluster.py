"""`orchestrator submit`: run a sweep (or one cell) on a Ray cluster as a Ray job.

    python -m orchestrator submit --config configs/sweeps/quickstart.yaml --address http://HEAD:8265 \
        --storage /shared/rethinkdc --tracking-uri http://HEAD:5000 [--set k=v] [--dry-run] [--no-wait]

submits, through `ray.job_submission.JobSubmissionClient`, the job

    entrypoint:  python -u -m orchestrator sweep --config configs/sweeps/quickstart.yaml
                     --output-dir /shared/rethinkdc
    runtime_env: {"working_dir": <repo>, "env_vars": {...}, "excludes": [...]}

and streams its logs until it ends (unless --no-wait). The repository is uploaded as the job's
working directory (so every node imports the same code), `--storage` (a path every node mounts)
becomes `output_dir`: checkpoints, Tune state, the prepared data cache and, without
`--tracking-uri`, the SQLite MLflow store. Re-submitting the same command resumes: finished cells are
skipped, unfinished ones continue from their checkpoints on the storage. See docs/cluster.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shlex
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.provenance import COMMIT_ENV, code_commit

REPO = Path(__file__).resolve().parents[1]
VERBS = ("sweep", "run", "teacher")
# gitignore patterns, relative to the working dir; a leading "/" anchors at its root (so `/data`
# excludes the data cache but not the `orchestrator/data` package).
EXCLUDES = [".git", "/outputs", "/data", "/ray_results", "mlruns", "mlartifacts", "*.db", "__pycache__",
            ".pytest_cache", ".hypothesis", ".benchmarks", "*.egg-info", "/.whl", "/.gl", ".venv", "venv"]
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", ""}
GCS_PORTS = {6379, 10001}
ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")  # the job client's fallbacks, in Ray's order


class ClusterWarning(UserWarning):
    """A submission that will run but probably not the way the user wants on several nodes."""


def is_remote(address: str) -> bool:
    """True unless the address names this machine (loopback)."""
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    return not (host in LOOPBACK_HOSTS or host.startswith("127."))


def dashboard_address(address: str) -> str:
    """The job client talks to the dashboard's HTTP server (port 8265), not to the GCS (6379)."""
    if "://" in address:
        return address
    parsed = urlparse(f"http://{address}")
    if parsed.port in GCS_PORTS:
        raise ConfigError(f"--address {address} is the Ray GCS / client port; jobs are submitted to the "
                          f"dashboard: --address http://{parsed.hostname}:8265")
    return f"http://{address}"


def check_storage(storage: str | None, remote: bool) -> str | None:
    if storage is None:
        if remote:
            warnings.warn("no --storage: cells write checkpoints, Tune state, the data cache and the MLflow "
                          "store under the sweep's output_dir on each node's local disk, which the other "
                          "nodes cannot read; pass --storage /a/path/every/node/mounts", ClusterWarning,
                          stacklevel=3)
        return None
    if "://" in storage:
        raise ConfigError(f"--storage {storage}: output_dir must be a POSIX path every node mounts (NFS, a "
                          f"mounted bucket such as mountpoint-s3 or gcsfuse); URIs are not supported")
    if not Path(storage).is_absolute():
        raise ConfigError(f"--storage {storage} must be absolute: the job runs in a copy of the working dir, "
                          f"so a relative path would point inside that temporary copy")
    return storage


def check_tracking(tracking_uri: str | None, storage: str | None, remote: bool) -> None:
    """Several nodes log to MLflow at once: that needs an `mlflow server`, not a SQLite file."""
    if not remote:
        return
    if tracking_uri is None:
        where = f"{storage}/mlflow.db" if storage else "each node's output_dir"
        warnings.warn(f"no --tracking-uri: MLflow falls back to SQLite at {where}; SQLite on shared storage "
                      f"breaks with writers on several nodes. Run `mlflow server ... --host 0.0.0.0` on the head "
                      f"and pass --tracking-uri http://HEAD:5000", ClusterWarning, stacklevel=3)
        return
    scheme = urlparse(tracking_uri).scheme
    if tracking_uri == "databricks":
        return
    if scheme in ("sqlite", "file", "") or len(scheme) == 1:  # "" / "c": a path, i.e. the file store
        warnings.warn(f"--tracking-uri {tracking_uri} is a local store but --address is a remote cluster: "
                      f"trials on several nodes writing one SQLite file (or file store) lose runs and hit "
                      f"'database is locked'. Run `mlflow server` and pass its http:// URI", ClusterWarning,
                      stacklevel=3)
    elif scheme in ("http", "https") and not is_remote(tracking_uri):
        warnings.warn(f"--tracking-uri {tracking_uri} is a loopback address: on a remote cluster each node "
                      f"would look for the MLflow server on itself; use the server's cluster-visible host",
                      ClusterWarning, stacklevel=3)


def remote_config_path(config: Path, working_dir: Path) -> str:
    """The config path as the job sees it: relative to the uploaded working dir."""
    path = Path(config)
    absolute = (path if path.is_absolute() else Path.cwd() / path).resolve()
    try:
        return absolute.relative_to(working_dir.resolve()).as_posix()
    except ValueError:
        raise ConfigError(f"--config {config} is outside the working dir {working_dir}, so it would not be "
                          f"uploaded with the job: copy it under {working_dir}/configs/") from None


def build_runtime_env(*, working_dir: Path, tracking_uri: str | None, extra_pip: list[str],
                      env_vars: dict[str, str] | None = None) -> dict:
    """The job's runtime_env: the code, extra packages, environment and what not to upload.

    `RAY_OVERRIDE_JOB_RUNTIME_ENV=1`: the job's driver calls `ray.init(runtime_env=...)` itself
    (`orchestrator.runtime.init_ray`, which sets PYTHONUNBUFFERED too); without it Ray refuses to
    merge the two runtime_envs when they name the same variable.
    """
    variables = {"PYTHONUNBUFFERED": "1", "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1",
                 COMMIT_ENV: code_commit(working_dir)}  # the upload leaves .git out
    if tracking_uri:
        variables["MLFLOW_TRACKING_URI"] = tracking_uri
    variables.update(env_vars or {})
    runtime_env: dict = {"working_dir": str(working_dir), "env_vars": variables, "excludes": list(EXCLUDES)}
    if extra_pip:
        runtime_env["pip"] = list(extra_pip)
    return runtime_env


@dataclass(frozen=True)
class Submission:
    """One Ray job, as `JobSubmissionClient(address).submit_job(**submission.job())` receives it."""

    address: str  # the head's dashboard, http://HEAD:8265
    entrypoint: str  # the job's shell command
    runtime_env: dict
    submission_id: str | None = None

    def job(self) -> dict:
        return {"entrypoint": self.entrypoint, "runtime_env": self.runtime_env,
                "submission_id": self.submission_id}

    def describe(self) -> str:
        """What --dry-run prints: the address, the entrypoint and the runtime_env as JSON."""
        lines = [f"address: {self.address}", f"entrypoint: {self.entrypoint}"]
        if self.submission_id:
            lines.append(f"submission_id: {self.submission_id}")
        return "\n".join([*lines, f"runtime_env: {json.dumps(self.runtime_env, sort_keys=True)}"])


def build_submission(*, config: Path, address: str, storage: str | None, tracking_uri: str | None,
                     working_dir: Path, extra_pip: list[str], verb: str = "sweep", extra_args: list[str],
                     env_vars: dict[str, str] | None = None, submission_id: str | None = None) -> Submission:
    """The job running `python -u -m orchestrator <verb> ...` in the uploaded repo (warns: ClusterWarning)."""
    if verb not in VERBS:
        raise ConfigError(f"verb '{verb}': choose one of {', '.join(VERBS)}")
    working_dir = Path(working_dir).resolve()
    remote = is_remote(address)
    storage = check_storage(storage, remote)
    check_tracking(tracking_uri, storage, remote)
    runtime_env = build_runtime_env(working_dir=working_dir, tracking_uri=tracking_uri, extra_pip=extra_pip,
                                    env_vars=env_vars)
    command = ["python", "-u", "-m", "orchestrator", verb, "--config", remote_config_path(config, working_dir)]
    if storage:
        command += ["--output-dir", storage]
    return Submission(address=dashboard_address(address), entrypoint=shlex.join(command + list(extra_args)),
                      runtime_env=runtime_env, submission_id=submission_id)


def auth_headers(environ: dict[str, str] | None = None, auth_token_path: str | None = None) -> dict[str, str]:
    """The `Authorization: Bearer <token>` header for Ray's token auth, or {} without a token.

    Ray >= 2.59 turns token auth on for clusters started on a machine that has a token
    (`~/.ray/auth_token`, `ray get-auth-token --generate`). The token is taken from
    `auth_token_path`, else RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (Ray's own
    order); an explicit RAY_AUTH_MODE other than `token` (e.g. `disabled`) sends none. Sending a
    token to a cluster without auth is harmless.
    """
    env = dict(os.environ if environ is None else environ)
    if auth_token_path:
        path = Path(auth_token_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"--auth-token-path {path}: no such file")
        token = path.read_text()
    elif env.get("RAY_AUTH_MODE", "token") != "token":
        return {}
    elif env.get("RAY_AUTH_TOKEN"):
        token = env["RAY_AUTH_TOKEN"]
    else:
        home = Path(env.get("HOME") or Path.home())
        path = Path(env.get("RAY_AUTH_TOKEN_PATH") or home / ".ray" / "auth_token").expanduser()
        token = path.read_text() if path.is_file() else ""
    return {"Authorization": f"Bearer {token.strip()}"} if token.strip() else {}


def job_client(address: str, headers: dict[str, str]):
    """A `JobSubmissionClient` on the dashboard; an unreachable cluster is one OrchestratorError.

    Ray's client prefers RAY_API_SERVER_ADDRESS / RAY_ADDRESS to its argument: they are hidden while
    it connects, so `--address` wins (`submit` already fell back to them when it was not given).
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    hidden = {name: os.environ.pop(name) for name in ADDRESS_VARIABLES if name in os.environ}
    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError as exc:
        raise OrchestratorError(f"the Ray dashboard at {address} refused the request: {exc}") from exc
    except (ConnectionError, RuntimeError) as exc:
        raise OrchestratorError(f"cannot reach the Ray dashboard at {address}: {exc}") from exc
    finally:
        os.environ.update(hidden)


def follow(client, submission_id: str) -> int:
    """Stream the job's logs until it ends; 0 if it succeeded, else 1 (as `ray job submit` does)."""
    from ray.job_submission import JobStatus

    async def print_logs() -> None:
        async for lines in client.tail_job_logs(submission_id):
            print(lines, end="", flush=True)

    asyncio.run(print_logs())
    status = client.get_job_status(submission_id)
    while not status.is_terminal():
        time.sleep(1.0)
        status = client.get_job_status(submission_id)
    print(f"job {submission_id} {status.value.lower()}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1


def check_config(args: argparse.Namespace, overrides: list[str]) -> None:
    """Fail here, not after the upload, on a config the job would reject."""
    from orchestrator.config import load_config, parse_override

    values = dict(parse_override(text) for text in overrides)
    if args.storage:
        values["output_dir"] = args.storage
    if args.verb == "sweep":
        from orchestrator.sweep_config import load_sweep

        load_sweep(Path(args.config), values)
    else:
        load_config(args.config, values)


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env {pair}: expected KEY=VALUE")
        env[key] = value
    return env


def submit(args: argparse.Namespace) -> int:
    """Build the job, print it, and submit it (unless --dry-run); returns 0 once it succeeded (or, with
    --no-wait, was accepted)."""
    address = args.address or next((os.environ[v] for v in ADDRESS_VARIABLES if os.environ.get(v)), None)
    if not address:
        raise ConfigError("no cluster: pass --address http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS)")
    extra_args = [item for text in args.overrides for item in ("--set", text)]
    check_config(args, args.overrides)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ClusterWarning)
        submission = build_submission(config=Path(args.config), address=address, storage=args.storage,
                                      tracking_uri=args.tracking_uri, working_dir=Path(args.working_dir),
                                      extra_pip=args.pip, verb=args.verb, extra_args=extra_args,
                                      env_vars=parse_env(args.env), submission_id=args.submission_id)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    print(submission.describe(), flush=True)
    if args.dry_run:
        return 0
    client = job_client(submission.address, auth_headers(auth_token_path=args.auth_token_path))
    submission_id = submit_when_ready(client, submission)
    print(f"submitted job {submission_id}", flush=True)
    if args.no_wait:
        print(f"follow it: ray job logs --follow {submission_id} --address {submission.address}; "
              f"re-submit the same command to resume", flush=True)
        return 0
    return follow(client, submission_id)


AGENT_NOT_READY = "No available agent"  # Ray's answer, "please try again later", while the head's agent starts
AGENT_WAIT_S = 90


def submit_when_ready(client, submission: Submission) -> str:
    """Submit the job; while a just-started head answers that no job agent is available yet, try again
    every 3 s for up to AGENT_WAIT_S (one line says so). Any other refusal is one error line."""
    deadline = time.monotonic() + AGENT_WAIT_S
    for attempt in itertools.count():
        try:
            return client.submit_job(**submission.job())
        except RuntimeError as exc:
            if AGENT_NOT_READY not in str(exc) or time.monotonic() > deadline:
                raise OrchestratorError(f"the job was not accepted by {submission.address}: {exc}") from exc
            if attempt == 0:
                print(f"the cluster's job agent is not ready yet; trying again for up to {AGENT_WAIT_S} s",
                      flush=True)
            time.sleep(3)


def add_submit_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("submit", help="run a sweep on a Ray cluster as a Ray job (docs/cluster.md)")
    parser.add_argument("--config", "-c", required=True, help="sweep YAML (or a protocol YAML for --verb run)")
    parser.add_argument("--address", help="the head's dashboard, http://HEAD:8265 "
                                          "(default: RAY_API_SERVER_ADDRESS, then RAY_ADDRESS)")
    parser.add_argument("--storage", help="absolute path every node mounts (NFS): the cells' output_dir")
    parser.add_argument("--tracking-uri", help="MLflow server every node reaches, e.g. http://HEAD:5000 "
                                               "(default: SQLite under --storage; single node only)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key in every cell (repeatable)")
    parser.add_argument("--verb", choices=VERBS, default="sweep", help="what the job runs (default sweep)")
    parser.add_argument("--pip", action="append", default=[], metavar="REQUIREMENT",
                        help="extra pip package for the job's runtime_env (repeatable; the project's own "
                             "dependencies must already be installed on the cluster)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable for the job and all its workers (repeatable)")
    parser.add_argument("--working-dir", default=str(REPO), help="code uploaded with the job (default: this repo)")
    parser.add_argument("--submission-id", help="job id (default: generated by Ray)")
    parser.add_argument("--auth-token-path", help="Ray auth token file (token auth; default ~/.ray/auth_token)")
    parser.add_argument("--no-wait", action="store_true", help="return once submitted instead of streaming logs")
    parser.add_argument("--dry-run", action="store_true", help="print the job (address, entrypoint, runtime_env) only")
    parser.set_defaults(func=submit)
    return parser
