"""Sweeps: grid expansion, dry run, resumption after a kill, ASHA search tracked in MLflow."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.errors import ConfigError
from orchestrator.provenance import code_commit
from orchestrator.sweep import run_sweep
from orchestrator.sweep_config import load_sweep
from tests_paths import REPO, cell_runs

TINY = {"schedule.epochs": 2, "data.ipc": 2, "train.batch_size": 8, "train.threads": 1, "eval.every": 2,
        "train.checkpoint_every": 1, "train.cpus_per_worker": 0.5}


def tiny_runs(out: Path, role: str = "cell") -> list:
    """The runs tagged `role` of the sweep `write_sweep` writes (experiment "tiny")."""
    return cell_runs(out, "tiny", role)[1]


def write_sweep(tmp_path: Path, data_root: Path, **sections) -> Path:
    body = {"name": "tiny", "protocols": {"hard": str(REPO / "configs/fmnist-hard.yaml"),
                                          "soft": str(REPO / "configs/fmnist-soft.yaml")},
            "set": {**TINY, "data.root": str(data_root), "output_dir": str(tmp_path / "out")},
            "axes": {"method": ["random"], "ipc": [2], "label_mode": ["hard"], "seed": [0, 1, 2]}}
    body.update(sections)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_grid_expansion_and_dry_run(tmp_path, data_root, capsys):
    path = write_sweep(tmp_path, data_root, axes={"method": ["random", "el2n"], "ipc": [1, 10],
                                                  "label_mode": ["hard", "soft"], "seed": [0, 1]})
    sweep = load_sweep(path)
    assert len(sweep.cells) == 16
    soft = [c for c in sweep.cells if c.label_mode == "soft"]
    assert soft and all(c.name == "fmnist-soft" and c.mix.type == "cutmix" for c in soft)
    assert all(c.schedule.epochs == 2 for c in sweep.cells)  # `set` reaches every cell
    assert run_sweep(sweep, dry_run=True) == []
    printed = capsys.readouterr().out
    assert "16 cells" in printed and "el2n-ipc10-soft-convnet3-s1" in printed
    assert not (tmp_path / "out").exists()  # a dry run creates nothing


def test_sweep_config_errors_name_the_fix(tmp_path, data_root):
    with pytest.raises(ConfigError, match="did you mean 'axes.seed'"):
        load_sweep(write_sweep(tmp_path, data_root, axes={"seeds": [0]}))
    with pytest.raises(ConfigError, match="did you mean 'protocol'"):
        load_sweep(write_sweep(tmp_path, data_root, protocl="x.yaml"))
    with pytest.raises(ConfigError, match="loguniform"):
        load_sweep(write_sweep(tmp_path, data_root, search={"space": {"optim.lr": [0.1, 0.2]}}))


def test_a_grid_may_carry_its_own_overrides(tmp_path, data_root):
    """One rule reversed (easy-first) beside methods that refuse prune.reverse, in one sweep."""
    grids = [{"method": ["random", "pca"], "ipc": [10], "label_mode": ["hard"], "seed": [0]},
             {"method": ["el2n"], "set": {"prune.reverse": True}, "ipc": [10], "label_mode": ["hard"], "seed": [0]}]
    cells = load_sweep(write_sweep(tmp_path, data_root, axes=grids)).cells
    assert {c.data.method: c.prune.reverse for c in cells} == {"random": False, "pca": False, "el2n": True}
    grids[1]["set"] = {"prune.revers": True}
    with pytest.raises(ConfigError, match="prune.revers"):
        load_sweep(write_sweep(tmp_path, data_root, axes=grids))


def test_shipped_sweeps_expand(tmp_path):
    counts = {name: len(load_sweep(REPO / "configs/sweeps" / f"{name}.yaml").cells)
              for name in ("quickstart", "fashion-mnist-benchmark", "fashion-mnist-results", "imagenet-soft",
                           "imagenet-hard")}
    assert counts["quickstart"] == 10
    assert counts["fashion-mnist-results"] == 2 * 3 * (8 * 2 + 1)  # IPC x seeds x (8 methods x 2 labels + hard PCA)
    assert counts["fashion-mnist-benchmark"] == 6 * 3 * 2 * 3 - 3 * 3  # no soft PCA
    assert counts["imagenet-hard"] > 30 and counts["imagenet-soft"] > 30
    asha = load_sweep(REPO / "configs/sweeps/asha-lr-cutmix.yaml")
    assert asha.search.scheduler["type"] == "asha" and set(asha.search.space) == {"optim.lr", "mix.cutmix_alpha"}


def test_relative_paths_are_anchored_where_the_sweep_is_launched(tmp_path, data_root, monkeypatch):
    (tmp_path / "images").mkdir()
    path = write_sweep(tmp_path, data_root, set={**TINY, "data.root": str(data_root), "output_dir": "out"})
    monkeypatch.chdir(tmp_path)
    cells = load_sweep(path, {"data.val": "images"}).cells
    assert {c.output_dir for c in cells} == {str(tmp_path / "out")}  # Tune trials run elsewhere
    assert {c.data.val for c in cells} == {str(tmp_path / "images")}  # an existing relative folder
    assert {c.data.train for c in cells} == {"fashion-mnist"}  # a registered name is left alone


@pytest.mark.slow
def test_sweep_with_relative_output_dir_tracks_cells_there(ray_cluster, tmp_path, data_root, monkeypatch):
    path = write_sweep(tmp_path, data_root, axes={"method": ["random"], "ipc": [2], "label_mode": ["hard"],
                                                  "seed": [0]},
                       set={**TINY, "data.root": str(data_root), "output_dir": "out"})
    monkeypatch.chdir(tmp_path)
    results = run_sweep(load_sweep(path))
    assert results[0]["top1_final"] is not None
    runs = tiny_runs(tmp_path / "out")
    assert [r.info.status for r in runs] == ["FINISHED"]


UNBUFFERED = dict(os.environ, PYTHONUNBUFFERED="1")


def sweep_command(path: Path) -> list[str]:
    return [sys.executable, "-m", "orchestrator", "sweep", "--config", str(path)]


def start_and_wait_for_a_finished_cell(command: list[str], out: Path, **output) -> subprocess.Popen:
    """The sweep started in its own session, returned once its first cell has FINISHED (still running)."""
    sweep = subprocess.Popen(command, cwd=REPO, env=UNBUFFERED, stderr=subprocess.STDOUT, start_new_session=True,
                             **output)
    deadline = time.time() + 600
    while time.time() < deadline and sweep.poll() is None:
        if [r for r in tiny_runs(out) if r.info.status == "FINISHED"]:
            break
        time.sleep(1)
    assert sweep.poll() is None, "the sweep ended before it could be interrupted"
    return sweep


@pytest.mark.slow
def test_interrupted_sweep_ends_its_parent_run_killed_not_failed(tmp_path, data_root):
    """SIGINT (what `pkill -INT` and Ctrl-C send) stops Tune gracefully: no cell failed, so the sweep's
    MLflow run reads KILLED, and FAILED stays for sweeps with a failed cell."""
    out = tmp_path / "out"
    command = sweep_command(write_sweep(tmp_path, data_root))
    sweep = start_and_wait_for_a_finished_cell(command, out, stdout=subprocess.PIPE, text=True)
    sweep.send_signal(signal.SIGINT)
    output, _ = sweep.communicate(timeout=300)
    finished = [r for r in tiny_runs(out) if r.info.status == "FINISHED"]
    assert 1 <= len(finished) < 3, output[-3000:]
    assert {r.data.tags["code.commit"] for r in finished} == {code_commit()}  # a Ray trial knows its code's commit
    assert [r.info.status for r in tiny_runs(out, role="sweep")] == ["KILLED"], output[-3000:]
    assert sweep.returncode == 130 and "the same command resumes it" in output, output[-3000:]


def test_sigint_stops_a_background_sweep_while_the_driver_trains_its_teacher(tmp_path, data_root):
    """A sweep started from a script with `&` inherits SIGINT ignored; `pkill -INT` must still stop it
    before Tune runs (the teacher is trained in the driver), its parent run KILLED, exit 130."""
    path = write_sweep(tmp_path, data_root, axes={"method": ["random"], "ipc": [2], "label_mode": ["soft"],
                                                  "seed": [0]},
                       set={**TINY, "data.root": str(data_root), "output_dir": str(tmp_path / "out"),
                            "teacher.epochs": 50})
    sweep = subprocess.Popen(sweep_command(path), cwd=REPO, env=UNBUFFERED, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    lines = []
    for line in sweep.stdout:
        lines.append(line)
        if "training the teacher" in line:
            break
    time.sleep(5)  # inside the teacher's epochs
    sweep.send_signal(signal.SIGINT)
    output = "".join(lines) + sweep.communicate(timeout=120)[0]
    assert sweep.returncode == 130 and "re-run the same command to resume" in output, output[-3000:]
    assert [r.info.status for r in tiny_runs(tmp_path / "out", role="sweep")] == ["KILLED"], output[-3000:]
    assert tiny_runs(tmp_path / "out") == []  # no cell had started


@pytest.mark.slow
def test_killed_sweep_resumes_without_redoing_finished_cells(tmp_path, data_root):
    out = tmp_path / "out"
    command = sweep_command(write_sweep(tmp_path, data_root))
    first = start_and_wait_for_a_finished_cell(command, out, stdout=subprocess.DEVNULL)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    finished_before = {r.data.tags["cell"]: r.info.run_id for r in tiny_runs(out) if r.info.status == "FINISHED"}
    assert 1 <= len(finished_before) < 3

    second = subprocess.run(command, cwd=REPO, env=UNBUFFERED, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    runs = tiny_runs(out)
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3  # no duplicate runs
    for cell, run_id in finished_before.items():
        assert {r.data.tags["cell"]: r.info.run_id for r in runs}[cell] == run_id
        assert f"[{cell}] already finished" in second.stdout + second.stderr


@pytest.mark.slow
def test_asha_stops_poor_trials_early_and_records_all(ray_cluster, tmp_path, data_root):
    epochs = 4
    path = write_sweep(
        tmp_path, data_root, axes={"method": ["random"], "ipc": [2], "label_mode": ["hard"], "seed": [0]},
        set={**TINY, "schedule.epochs": epochs, "eval.every": 1, "data.root": str(data_root),
             "output_dir": str(tmp_path / "out")},  # ASHA compares trials on every epoch's val/top1
        search={"algorithm": "grid", "num_samples": 1, "metric": "val/top1", "mode": "max",
                "space": {"optim.lr": {"grid": [1.0e-6, 1.0e-5, 3.0e-3, 1.0e-2]},
                          "mix.cutmix_alpha": {"choice": [0.5, 1.0]}},
                "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}})
    results = run_sweep(load_sweep(path))
    assert len(results) == 1 and results[0]["search/trials"] == 4
    assert results[0]["search/total_epochs"] < 4 * epochs  # ASHA stopped someone early
    trials = tiny_runs(tmp_path / "out", role="trial")
    assert len(trials) == 4
    assert {r.info.status for r in trials} <= {"FINISHED", "KILLED"}
    assert any(r.info.status == "KILLED" for r in trials)
    parents = {r.data.tags["mlflow.parentRunId"] for r in trials}
    search_run = tiny_runs(tmp_path / "out", role="search")
    assert len(search_run) == 1 and parents == {search_run[0].info.run_id}


def test_status_says_what_the_store_holds_of_each_cell(tmp_path, data_root, capsys):
    from orchestrator.cell import run_cell
    from orchestrator.cli import main
    from orchestrator.config import cell_name, replace
    from orchestrator.locks import cell_lock

    path = write_sweep(tmp_path, data_root, axes={"method": ["random"], "ipc": [2], "label_mode": ["hard"],
                                                  "seed": [0, 1, 2, 3, 4]})
    finished, training, stopped, copied, to_run = load_sweep(path).cells
    run_cell(finished)
    run_cell(replace(copied, {"experiment": "elsewhere"}))
    checkpoint = stopped.out / "ray_results" / cell_name(stopped) / "checkpoint_epoch000001"
    checkpoint.mkdir(parents=True)
    (checkpoint / "summary.json").write_text('{"epochs_done": 1}')
    capsys.readouterr()
    with cell_lock(training.out, cell_name(training)):
        code = main(["sweep", "--config", str(path), "--status"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = dict((name, (state, detail)) for name, state, detail in
                re.findall(r"^  (\S+)\s+(finished|to copy|training|stopped|to run) *(.*)$", printed, re.M))
    assert rows[cell_name(finished)][0] == "finished" and rows[cell_name(finished)][1].startswith("top-1 ")
    assert rows[cell_name(training)][0] == "training"
    assert rows[cell_name(training)][1].startswith(f"no checkpoint yet; pid {os.getpid()} on host ")
    assert rows[cell_name(stopped)] == ("stopped", "epoch 1/2: resumes there")
    assert rows[cell_name(copied)][0] == "to copy" and "experiment 'elsewhere'" in rows[cell_name(copied)][1]
    assert rows[cell_name(to_run)] == ("to run", "")
    assert printed.splitlines()[-1].strip() == "1 finished, 1 to copy, 1 training, 1 stopped, 1 to run of 5 cells"


def test_a_trial_stopped_before_it_began_is_an_outcome_not_a_crash(tmp_path):
    """Ctrl-C just as the grid starts: Tune's result for a trial that never ran has no metrics, so no config."""
    from ray.tune import Result

    from orchestrator.sweep import NOT_STARTED, cells_done, sweep_status, trial_outcome

    outcome = trial_outcome(Result(metrics={}, checkpoint=None, error=None, path=str(tmp_path)), tmp_path)
    assert outcome == {"cell": NOT_STARTED, "error": None}
    assert sweep_status([outcome], cells_done([outcome]), 1) == "KILLED"


def test_unknown_method_fails_before_any_cell_even_in_a_dry_run(tmp_path, data_root, capsys):
    from orchestrator.cli import main

    path = write_sweep(tmp_path, data_root, axes={"method": ["random", "nosuch"], "ipc": [2], "label_mode": ["hard"],
                                                  "seed": [0]})
    code = main(["sweep", "--config", str(path), "--dry-run"])
    text = capsys.readouterr().err
    assert code == 2 and "cell nosuch-ipc2-hard" in text and "unknown method 'nosuch'" in text
    assert not (tmp_path / "out").exists()


def test_settings_a_method_refuses_fail_before_any_cell(tmp_path, data_root, capsys):
    """A sweep-wide prune.reverse (meant for a pruning rule) reaching PCA cells: refused at load time."""
    from orchestrator.cli import main

    path = write_sweep(tmp_path, data_root, axes={"method": ["el2n", "pca"], "ipc": [2], "label_mode": ["hard"],
                                                  "seed": [0]},
                       set={**TINY, "data.root": str(data_root), "prune.reverse": True})
    code = main(["sweep", "--config", str(path), "--dry-run"])
    text = capsys.readouterr().err
    assert code == 2 and "cell pca-ipc2-hard" in text and "leave prune.reverse false" in text


@pytest.mark.slow
def test_failed_cell_is_named_and_the_parent_run_is_not_left_running(ray_cluster, tmp_path, data_root):
    path = write_sweep(tmp_path, data_root, axes={"method": ["random"], "ipc": [7000], "label_mode": ["hard"],
                                                  "seed": [0]})
    sweep = load_sweep(path)
    results = run_sweep(sweep)
    assert len(results) == 1 and results[0]["cell"].startswith("random-ipc7000-hard")
    assert "IPC 7000" in results[0]["error"] and "Traceback" not in results[0]["error"]
    [parent] = tiny_runs(tmp_path / "out", role="sweep")
    assert parent.info.status == "FAILED"
