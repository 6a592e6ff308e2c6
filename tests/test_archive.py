"""`archive export` / `archive import`: a real cell's run survives a trip through JSON files into another
store, the report reads the same table from it, and a cell found there is not trained (or built) again."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from orchestrator.archive import export_experiment, import_archive
from orchestrator.cell import run_cell
from orchestrator.config import cell_name, replace
from orchestrator.errors import OrchestratorError
from orchestrator.report.runs import load_cell_runs
from orchestrator.sweep import finished as sweep_finished
from orchestrator.tracking import tracking_uri
from tests_paths import run_cli

pytestmark = pytest.mark.slow
EXPERIMENT = "fmnist-hard"
SAME = ["method", "ipc", "label_mode", "model", "seed", "protocol", "top1_final", "top1_best", "top5_final",
        "train_s", "images_per_s", "image_bytes", "optimizer_steps", "fingerprint", "end_time", "precision"]


@pytest.fixture(scope="module")
def finished(ray_cluster, tmp_path_factory, data_root):
    """One finished 2-epoch cell in its own store, exported to an archive folder."""
    from orchestrator.config import load_config
    from tests_paths import CONFIGS

    root = tmp_path_factory.mktemp("archive")
    config = load_config(CONFIGS / "fmnist-hard.yaml", {
        "output_dir": str(root / "first"), "data.root": str(data_root), "data.ipc": 2, "schedule.epochs": 2,
        "train.batch_size": 8, "eval.every": 1, "train.cpus_per_worker": 0.5})
    result = run_cell(config)
    files = export_experiment(tracking_uri(config), EXPERIMENT, root / "archive")
    return {"root": root, "config": config, "result": result, "files": files}


def test_export_writes_one_file_per_finished_cell_with_every_metric_history(finished):
    (path,) = finished["files"]
    assert path.name == f"{cell_name(finished['config'])}.json" and path.parent.name == EXPERIMENT
    record = json.loads(path.read_text())
    assert record["status"] == "FINISHED" and record["tags"]["role"] == "cell"
    assert record["params"]["ipc"] == "2" and record["params"]["optim.lr"] == "0.001"
    assert [step for step, _time, _value in record["metrics"]["train/loss"]] == [0, 1]
    assert "mlflow.parentRunId" not in record["tags"]


def test_import_recreates_the_run_and_the_report_reads_the_same_row(finished):
    other = finished["root"] / "second"
    uri = f"sqlite:///{other / 'mlflow.db'}"
    assert import_archive(uri, [finished["root"] / "archive"], other) == (1, 0)
    original = load_cell_runs(tracking_uri(finished["config"]), EXPERIMENT)
    imported = load_cell_runs(uri, EXPERIMENT)
    assert imported[SAME].equals(original[SAME])
    client, source = MlflowClient(uri), MlflowClient(tracking_uri(finished["config"]))
    run_id = imported["run_id"].iloc[0]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val/top1")] == \
        [(m.step, m.value) for m in source.get_metric_history(finished["result"].run_id, "val/top1")]
    assert client.get_run(run_id).data.params == source.get_run(finished["result"].run_id).data.params

    assert import_archive(uri, [finished["root"] / "archive"], other) == (0, 1)  # nothing doubled
    again = export_experiment(uri, EXPERIMENT, finished["root"] / "again")
    assert again[0].read_text() == finished["files"][0].read_text()  # a round trip changes no byte


def test_an_imported_cell_is_skipped_without_building_its_set(finished, tmp_path):
    other = finished["root"] / "third"
    import_archive(f"sqlite:///{other / 'mlflow.db'}", [finished["root"] / "archive"], other)
    empty = tmp_path / "no-data"
    empty.mkdir()
    config = replace(finished["config"], {"output_dir": str(other), "data.root": str(empty)})
    assert cell_name(config) == cell_name(finished["config"])  # where the data lies is not the cell
    result = run_cell(config)
    assert result.skipped and result.summary["top1_final"] == finished["result"].summary["top1_final"]
    assert result.fingerprint == finished["result"].fingerprint
    assert list(empty.iterdir()) == []  # no data prepared for it
    assert sweep_finished(config) and not sweep_finished(replace(config, {"seed": 1}))  # a sweep trains no teacher


def test_cli_exports_and_imports_and_names_a_bad_file(finished, tmp_path, capsys):
    code, text = run_cli(capsys, "archive", "export", "--experiment", EXPERIMENT, "--output-dir",
                         str(finished["config"].out), "--to", str(tmp_path / "runs"))
    assert code == 0 and "1 finished cells of fmnist-hard" in text
    code, text = run_cli(capsys, "archive", "import", str(tmp_path / "runs"), "--output-dir", str(tmp_path / "s"))
    assert code == 0 and "imported 1 runs" in text

    bad = tmp_path / "runs" / EXPERIMENT / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(OrchestratorError, match="broken.json: not a readable archive file"):
        import_archive(f"sqlite:///{tmp_path / 't' / 'mlflow.db'}", [bad], tmp_path / "t")
    with pytest.raises(OrchestratorError, match="no such archive file or folder"):
        import_archive(f"sqlite:///{tmp_path / 't' / 'mlflow.db'}", [tmp_path / "missing"], tmp_path / "t")


def test_a_cell_finished_in_another_experiment_is_copied_not_trained(finished, tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    elsewhere = replace(finished["config"], {"experiment": "another-study", "data.root": str(empty)})
    assert cell_name(elsewhere) == cell_name(finished["config"])  # the experiment is not part of the cell
    assert sweep_finished(elsewhere)  # so a sweep of it trains no prerequisite either
    result = run_cell(elsewhere)
    assert result.skipped and result.run_id != finished["result"].run_id and list(empty.iterdir()) == []
    uri = tracking_uri(finished["config"])
    copied, original = load_cell_runs(uri, "another-study"), load_cell_runs(uri, EXPERIMENT)
    assert copied[SAME].equals(original[SAME])
    tags = MlflowClient(uri).get_run(result.run_id).data.tags
    assert tags["archive.copied_from"].endswith(finished["result"].run_id)
    assert run_cell(elsewhere).run_id == result.run_id  # once copied, found in its own experiment


def test_an_imported_cell_is_skipped_even_beside_a_newer_killed_attempt(finished, tmp_path):
    """A store where this cell's attempt was killed (RUNNING, started after the archived run) and the
    archive is imported: the finished run counts, and the cell is not trained again."""
    other = finished["root"] / "fourth"
    uri = f"sqlite:///{other / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=str(other / "artifacts"))
    killed = client.create_run(experiment_id, tags={"cell": cell_name(finished["config"]), "role": "cell"})
    assert import_archive(uri, [finished["root"] / "archive"], other) == (1, 0)
    empty = tmp_path / "no-data"
    empty.mkdir()
    result = run_cell(replace(finished["config"], {"output_dir": str(other), "data.root": str(empty)}))
    assert result.skipped and result.run_id != killed.info.run_id
    assert result.summary["top1_final"] == finished["result"].summary["top1_final"]
