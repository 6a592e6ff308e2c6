"""`orchestrator submit`: run a sweep (or one cell) on a Ray cluster as a Ray job.

    python -m orchestrator submit --config configs/sweeps/quickstart.yaml --address http://HEAD:8265 \
        --storage /shared/rethinkdc --tracking-uri http://HEAD:5000 [--set k=v] [--dry-run] [--no-wait]

builds and runs

    ray job submit --address http://HEAD:8265 --runtime-env-json '{"working_dir": ..., "env_vars": ...,
        "excludes": [...]}' -- python -u -m orchestrator sweep --config configs/sweeps/quickstart.yaml
        --output-dir /shared/rethinkdc

The repository is uploaded as the job's working directory (so every node imports the same code),
`--storage` (a path every node mounts) becomes `output_dir`: checkpoints, Tune state, the prepared
data cache and, without `--tracking-uri`, the SQLite MLflow store. Re-submitting the same command
resumes: finished cells are skipped, unfinished ones continue from their checkpoints on the storage.
See docs/cluster.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from urllib.parse import urlparse

from orchestrator.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
VERBS = ("sweep", "run", "teacher")
# gitignore patterns, relative to the working dir; a leading "/" anchors at its root (so `/data`
# excludes the data cache but not the `orchestrator/data` package).
EXCLUDES = [".git", "/outputs", "/data", "/ray_results", "mlruns", "mlartifacts", "*.db", "__pycache__",
            ".pytest_cache", ".hypothesis", ".benchmarks", "*.egg-info", "/.whl", "/.gl", ".venv", "venv"]
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", ""}
GCS_PORTS = {6379, 10001}


class ClusterWarning(UserWarning):
    """A submission that will run but probably not the way the user wants on several nodes."""


def is_remote(address: str) -> bool:
    """True unless the address names this machine (loopback)."""
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    return not (host in LOOPBACK_HOSTS or host.startswith("127."))


def dashboard_address(address: str) -> str:
    """`ray job submit` talks to the dashboard's HTTP server (port 8265), not to the GCS (6379)."""
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
    variables = {"PYTHONUNBUFFERED": "1", "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}
    if tracking_uri:
        variables["MLFLOW_TRACKING_URI"] = tracking_uri
    variables.update(env_vars or {})
    runtime_env: dict = {"working_dir": str(working_dir), "env_vars": variables, "excludes": list(EXCLUDES)}
    if extra_pip:
        runtime_env["pip"] = list(extra_pip)
    return runtime_env


def build_submit_command(*, config: Path, address: str, storage: str | None, tracking_uri: str | None,
                         working_dir: Path, extra_pip: list[str], verb: str = "sweep",
                         extra_args: list[str], env_vars: dict[str, str] | None = None, no_wait: bool = False,
                         submission_id: str | None = None) -> list[str]:
    """The `ray job submit ... -- python -u -m orchestrator <verb> ...` argv (warns: ClusterWarning)."""
    if verb not in VERBS:
        raise ConfigError(f"verb '{verb}': choose one of {', '.join(VERBS)}")
    working_dir = Path(working_dir).resolve()
    remote = is_remote(address)
    storage = check_storage(storage, remote)
    check_tracking(tracking_uri, storage, remote)
    runtime_env = build_runtime_env(working_dir=working_dir, tracking_uri=tracking_uri, extra_pip=extra_pip,
                                    env_vars=env_vars)
    command = ["ray", "job", "submit", "--address", dashboard_address(address),
               "--runtime-env-json", json.dumps(runtime_env, sort_keys=True)]
    if submission_id:
        command += ["--submission-id", submission_id]
    if no_wait:
        command.append("--no-wait")
    command += ["--", "python", "-u", "-m", "orchestrator", verb, "--config", remote_config_path(config, working_dir)]
    if storage:
        command += ["--output-dir", storage]
    return command + list(extra_args)


def submit_environment(base: dict[str, str] | None = None, auth_token_path: str | None = None) -> dict[str, str]:
    """The environment for the `ray job submit` client, with Ray's token auth passed through.

    Ray >= 2.59 turns token auth on for clusters started on a machine that has a token
    (`~/.ray/auth_token`, `ray get-auth-token --generate`); the job client only sends it when
    RAY_AUTH_MODE=token. An explicit RAY_AUTH_MODE is kept; else a token given here, in
    RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH or in ~/.ray/auth_token turns it on (harmless for a
    cluster without auth).
    """
    env = dict(os.environ if base is None else base)
    if auth_token_path:
        env["RAY_AUTH_TOKEN_PATH"] = str(Path(auth_token_path).expanduser().resolve())
        env["RAY_AUTH_MODE"] = "token"
    elif "RAY_AUTH_MODE" not in env:
        home = Path(env.get("HOME") or Path.home())
        if env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH") or (home / ".ray" / "auth_token").is_file():
            env["RAY_AUTH_MODE"] = "token"
    return env


def ray_executable() -> list[str]:
    """`ray` from PATH, else the one next to this Python."""
    found = shutil.which("ray") or shutil.which("ray", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]


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
    """Build the command, print it, and run it (unless --dry-run); returns its exit status."""
    address = args.address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ConfigError("no cluster: pass --address http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS)")
    extra_args = [item for text in args.overrides for item in ("--set", text)]
    check_config(args, args.overrides)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ClusterWarning)
        command = build_submit_command(config=Path(args.config), address=address, storage=args.storage,
                                       tracking_uri=args.tracking_uri, working_dir=Path(args.working_dir),
                                       extra_pip=args.pip, verb=args.verb, extra_args=extra_args,
                                       env_vars=parse_env(args.env), no_wait=args.no_wait,
                                       submission_id=args.submission_id)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    print(shlex.join(command), flush=True)
    if args.dry_run:
        return 0
    env = submit_environment(auth_token_path=args.auth_token_path)
    status = subprocess.call(ray_executable() + command[1:], env=env)
    if args.no_wait and status == 0:
        print(f"follow it: ray job logs --follow <submission id> --address {dashboard_address(address)}; "
              f"re-submit the same command to resume", flush=True)
    return status


def cmd_submit(args: argparse.Namespace) -> int:
    return submit(args)


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
    parser.add_argument("--dry-run", action="store_true", help="print the ray job submit command only")
    parser.set_defaults(func=cmd_submit)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m orchestrator.cluster ...`: the submit verb on its own (same flags)."""
    parser = argparse.ArgumentParser(prog="python -m orchestrator.cluster")
    from orchestrator.cli import run_parsed

    return run_parsed(add_submit_parser(parser.add_subparsers(dest="verb_name")).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
