"""`orchestrator submit` (Ray job submission) and a real sweep on a local 2-node Ray cluster."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from orchestrator.cluster import EXCLUDES, ClusterWarning, Submission, add_submit_parser, auth_headers, \
    build_submission, submit
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.provenance import code_commit
from tests_paths import REPO

QUICKSTART = REPO / "configs" / "sweeps" / "quickstart.yaml"


def command(**overrides) -> Submission:
    kwargs = {"config": QUICKSTART, "address": "http://10.0.0.1:8265", "storage": "/shared/rethinkdc",
              "tracking_uri": "http://10.0.0.1:5000", "working_dir": REPO, "extra_pip": [], "extra_args": []}
    kwargs.update(overrides)
    return build_submission(**kwargs)


def runtime_env(submission: Submission) -> dict:
    return submission.job()["runtime_env"]


def entrypoint(submission: Submission) -> list[str]:
    return shlex.split(submission.job()["entrypoint"])


# ---------------------------------------------------------------- the job


def test_job_runs_the_sweep_with_storage_as_output_dir():
    job = command(extra_args=["--set", "schedule.epochs=5"])
    assert job.address == "http://10.0.0.1:8265"
    assert entrypoint(job) == ["python", "-u", "-m", "orchestrator", "sweep",
                               "--config", "configs/sweeps/quickstart.yaml",  # relative to the working dir
                               "--output-dir", "/shared/rethinkdc", "--set", "schedule.epochs=5"]
    assert job.job()["submission_id"] is None


def test_runtime_env_carries_code_tracking_and_excludes():
    env = runtime_env(command())
    assert env["working_dir"] == str(REPO)
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://10.0.0.1:5000"
    assert env["env_vars"]["PYTHONUNBUFFERED"] == "1"
    # the job's driver calls ray.init(runtime_env=...) too: Ray must merge, not refuse
    assert env["env_vars"]["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"
    assert {".git", "/outputs", "/data", "*.db", "__pycache__"} <= set(env["excludes"])
    assert env["env_vars"]["ORCHESTRATOR_COMMIT"] == code_commit(REPO)  # .git stays behind: its commit travels
    assert "pip" not in env  # the cluster image has the project's dependencies


def test_runtime_env_extras_no_tracking_and_job_flags():
    argv = command(tracking_uri=None, address="http://127.0.0.1:8265", extra_pip=["timm==1.0.31"],
                   env_vars={"HF_HUB_OFFLINE": "1"}, submission_id="quickstart-1", verb="run",
                   config=REPO / "configs" / "fmnist-hard.yaml")
    env = runtime_env(argv)
    assert env["pip"] == ["timm==1.0.31"] and env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert "MLFLOW_TRACKING_URI" not in env["env_vars"]
    assert argv.job()["submission_id"] == "quickstart-1"
    assert entrypoint(argv)[4:7] == ["run", "--config", "configs/fmnist-hard.yaml"]


def test_excludes_skip_caches_but_not_the_code():
    pathspec = pytest.importorskip("ray._private.thirdparty.pathspec")
    spec = pathspec.PathSpec.from_lines("gitwildmatch", EXCLUDES)
    for path in ["outputs/quickstart/mlflow.db", "data/sets/x.parquet", ".git/HEAD", "x/__pycache__/a.pyc",
                 "rethinkdc_orchestrator.egg-info"]:
        assert spec.match_file(path), path
    for path in ["orchestrator/data/pipeline.py", "orchestrator/cluster.py", "configs/sweeps/quickstart.yaml",
                 "trainers/loop.py", "pca/combine.py"]:
        assert not spec.match_file(path), path


@pytest.mark.parametrize("uri", ["sqlite:////shared/mlflow.db", "/shared/mlruns", "file:///shared/mlruns", None,
                                 "http://localhost:5000"])
def test_remote_cluster_with_a_local_tracking_store_warns(uri):
    with pytest.warns(ClusterWarning, match="mlflow server|MLflow|loopback"):
        command(tracking_uri=uri)


@pytest.mark.parametrize("address,uri", [("http://10.0.0.1:8265", "http://10.0.0.1:5000"),
                                         ("http://127.0.0.1:8265", "sqlite:////tmp/x/mlflow.db"),
                                         ("localhost:8265", None),
                                         ("http://10.0.0.1:8265", "postgresql://db.internal/mlflow")])
def test_no_warning_for_a_server_or_a_local_cluster(address, uri):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClusterWarning)
        command(address=address, tracking_uri=uri)


def test_missing_storage_on_a_remote_cluster_warns():
    with pytest.warns(ClusterWarning, match="--storage"):
        argv = command(storage=None)
    assert "--output-dir" not in entrypoint(argv)


@pytest.mark.parametrize("bad,match", [({"storage": "s3://bucket/rethinkdc"}, "POSIX path"),
                                       ({"storage": "shared/rethinkdc"}, "absolute"),
                                       ({"config": Path("/etc/hosts")}, "outside the working dir"),
                                       ({"address": "10.0.0.1:6379"}, "dashboard"),
                                       ({"verb": "report"}, "verb")])
def test_rejects_what_cannot_work_on_a_cluster(bad, match):
    with pytest.raises(ConfigError, match=match):
        command(**bad)


def test_address_without_scheme_is_the_dashboard_url():
    assert command(address="10.0.0.1:8265").address == "http://10.0.0.1:8265"


# ---------------------------------------------------------------- token auth and the verb


def test_token_auth_is_sent_by_the_job_client(tmp_path):
    home = tmp_path / "home"
    assert auth_headers({"HOME": str(home)}) == {}
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("secret\n")
    assert auth_headers({"HOME": str(home)}) == {"Authorization": "Bearer secret"}
    assert auth_headers({"HOME": str(home), "RAY_AUTH_MODE": "disabled"}) == {}
    assert auth_headers({"HOME": str(home), "RAY_AUTH_TOKEN": "t"}) == {"Authorization": "Bearer t"}
    (tmp_path / "token").write_text("from-file")
    assert auth_headers({"HOME": str(tmp_path), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")}) == \
        {"Authorization": "Bearer from-file"}
    assert auth_headers({"HOME": str(home), "RAY_AUTH_MODE": "disabled"}, auth_token_path=str(tmp_path / "token")) \
        == {"Authorization": "Bearer from-file"}  # an explicit --auth-token-path always counts
    with pytest.raises(ConfigError, match="no such file"):
        auth_headers({}, auth_token_path=str(tmp_path / "absent"))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_submit_parser(parser.add_subparsers(dest="verb_name"))
    return parser.parse_args(["submit", *argv])


def test_submit_verb_dry_run_prints_the_job(capsys):
    args = parse(["--config", str(QUICKSTART), "--address", "http://10.0.0.1:8265", "--storage", "/shared/r",
                  "--tracking-uri", "http://10.0.0.1:5000", "--set", "schedule.epochs=2", "--dry-run"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "address: http://10.0.0.1:8265"
    assert lines[1].startswith("entrypoint: python -u -m orchestrator sweep --config configs/sweeps/quickstart.yaml")
    assert lines[1].endswith("--output-dir /shared/r --set schedule.epochs=2")
    assert json.loads(lines[2].removeprefix("runtime_env: "))["env_vars"]["MLFLOW_TRACKING_URI"] == \
        "http://10.0.0.1:5000"


def test_submit_to_an_unreachable_dashboard_is_one_error(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:7")  # Ray's client would prefer it to its argument
    args = parse(["--config", str(QUICKSTART), "--address", "http://127.0.0.1:9", "--storage", "/shared/r"])
    with pytest.raises(OrchestratorError, match="dashboard at http://127.0.0.1:9: .*address: http://127.0.0.1:9"):
        submit(args)
    assert os.environ["RAY_ADDRESS"] == "http://127.0.0.1:7"


def test_submit_checks_the_sweep_before_uploading():
    args = parse(["--config", str(QUICKSTART), "--address", "http://10.0.0.1:8265", "--storage", "/shared/r",
                  "--set", "schedule.epochz=2", "--dry-run"])
    with pytest.raises(ConfigError):
        submit(args)


# ---------------------------------------------------------------- a real 2-node cluster

# Runs in its own process so the test session's Ray (conftest's `ray_cluster`) is never touched:
# starts a head and a worker node (ray.cluster_utils.Cluster, 2 logical CPUs each), runs the sweep
# through the CLI with --address, reads where each Ray Train worker ran from the State API, then
# re-submits the same sweep with `orchestrator submit` (a real Ray job) to check that it resumes
# (every cell skipped) from the same storage, and shuts its cluster down.
HELPER = textwrap.dedent("""
    import json, os, socket, subprocess, sys, time
    from pathlib import Path

    import ray
    from ray.cluster_utils import Cluster

    out, sweep, data_root, result_file = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
    work = Path(sys.argv[5])
    MB = 1024 ** 2

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def run(argv, timeout):
        started = time.time()
        proc = subprocess.run(argv, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)
        return {"rc": proc.returncode, "tail": proc.stdout[-6000:], "seconds": round(time.time() - started)}

    def train_workers():
        from ray.util.state import list_actors
        actors = list_actors(filters=[("class_name", "=", "RayTrainWorker")], detail=True, limit=1000)
        return [a.node_id for a in actors]

    dashboard = free_port()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "object_store_memory": 200 * MB, "include_dashboard": True, "dashboard_port": dashboard,
        "dashboard_agent_listen_port": free_port()})
    result = {}
    try:
        # its own runtime_env folder, as on a separate machine: sharing the head's, its agent would
        # re-extract the job's working_dir under the running driver (a one-machine artefact)
        worker = cluster.add_node(num_cpus=2, object_store_memory=200 * MB,
                                  runtime_env_dir_name="runtime_resources_node2")
        cluster.wait_for_nodes(timeout=60)
        result["nodes"] = {"head": cluster.head_node.node_id, "worker": worker.node_id}
        settings = ["schedule.epochs=1", "data.ipc=2", "train.batch_size=8", "train.threads=1", "eval.every=1",
                    "train.checkpoint_every=1", "train.workers=1", "train.cpus_per_worker=1.5",
                    f"data.root={data_root}"]
        sets = [arg for s in settings for arg in ("--set", s)]
        result["sweep"] = run([sys.executable, "-m", "orchestrator", "sweep", "--config", sweep,
                               "--address", cluster.address, "--output-dir", str(out), *sets], timeout=600)
        ray.init(address=cluster.address)
        result["train_workers"] = train_workers()
        result["submit"] = run([sys.executable, "-m", "orchestrator", "submit", "--config", sweep, "--env",
                                "RAY_DEDUP_LOGS=0", "--address", f"http://127.0.0.1:{dashboard}",
                                "--storage", str(out), "--working-dir", str(work), *sets], timeout=400)
        result["train_workers_after_submit"] = train_workers()
    finally:
        result_file.write_text(json.dumps(result, indent=1))
        ray.shutdown()
        cluster.shutdown()
""")

SWEEP = """\
name: two-node
protocol: ../fmnist-hard.yaml
axes:
  method: [random]
  ipc: [2]
  label_mode: [hard]
  seed: [0, 1]
resources:
  max_concurrent: 2
"""


def copy_code(work: Path) -> None:
    """The code the job uploads: a copy of the repo's packages and configs plus the test sweep."""
    import shutil

    for name in ("orchestrator", "trainers", "pca", "configs"):
        shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    (work / "configs" / "sweeps" / "two-node.yaml").write_text(SWEEP)


@pytest.mark.slow
def test_sweep_cells_run_on_both_nodes_of_a_two_node_cluster(tmp_path, data_root):
    work, out = tmp_path / "work", tmp_path / "shared"
    copy_code(work)
    (tmp_path / "helper.py").write_text(HELPER)
    token = tmp_path / "auth_token"  # token auth, the default for local clusters since Ray 2.59
    token.write_text(os.urandom(32).hex())
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1", RAY_DEDUP_LOGS="0",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER: the tests' own local Ray is loopback-only; this cluster's nodes use
    # the machine's address, as on separate machines
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_AUTH_TOKEN",
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(key, None)
    result_file = tmp_path / "result.json"
    helper = subprocess.Popen([sys.executable, str(tmp_path / "helper.py"), str(out),
                               "configs/sweeps/two-node.yaml", str(data_root), str(result_file), str(work)],
                              cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        log, _ = helper.communicate(timeout=1200)
    except subprocess.TimeoutExpired:
        os.killpg(helper.pid, signal.SIGKILL)  # the helper's session: its Ray nodes and the sweep
        log, _ = helper.communicate()
    assert result_file.exists(), log[-6000:]
    result = json.loads(result_file.read_text())
    sweep = result.get("sweep", {})
    assert sweep.get("rc") == 0, sweep.get("tail", log[-6000:])
    assert "2/2 cells finished" in sweep["tail"], sweep["tail"]

    nodes = result["nodes"]
    assert nodes["head"] != nodes["worker"]
    # one Train worker per cell (1.5 of a node's 2 CPUs: two cannot share a node), one on each node
    assert sorted(result["train_workers"]) == sorted([nodes["head"], nodes["worker"]]), result

    submitted = result["submit"]
    assert submitted["rc"] == 0, submitted["tail"]
    assert "submitted job" in submitted["tail"] and "succeeded" in submitted["tail"], submitted["tail"]
    assert submitted["tail"].count("already finished") == 2, submitted["tail"]  # resumed from the storage
    assert sorted(result["train_workers_after_submit"]) == sorted(result["train_workers"])  # nothing retrained


class HeadStillStarting:
    """Answers submit_job as Ray's job server does while a just-started head has no job agent yet (a state
    the real cluster reaches only by timing), then accepts; or refuses with another error."""

    def __init__(self, refusals: int, message: str = "Request failed with status code 500: No available agent "
                                                     "to submit job, please try again later.."):
        self.refusals, self.message, self.calls = refusals, message, 0

    def submit_job(self, **job) -> str:
        self.calls += 1
        if self.calls <= self.refusals:
            raise RuntimeError(self.message)
        return "raysubmit_1"


def test_submit_waits_for_the_heads_job_agent_and_fails_at_once_on_other_refusals(capsys, monkeypatch):
    import orchestrator.cluster as cluster

    monkeypatch.setattr(cluster.time, "sleep", lambda seconds: None)
    waiting = HeadStillStarting(refusals=2)
    assert cluster.submit_when_ready(waiting, command()) == "raysubmit_1" and waiting.calls == 3
    assert capsys.readouterr().out.count("job agent is not ready yet") == 1
    refused = HeadStillStarting(refusals=1, message="Request failed with status code 400: bad runtime_env")
    with pytest.raises(OrchestratorError, match="not accepted by .*bad runtime_env"):
        cluster.submit_when_ready(refused, command())
    assert refused.calls == 1
