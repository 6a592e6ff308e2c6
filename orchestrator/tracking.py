"""MLflow tracking: store location, experiments, one run per cell, stable metric and param names.

Everything goes through an explicit client for the URI, `store_retry.retrying_client(uri)` (an
MlflowClient that waits out a store another process holds locked); the global `mlflow.set_experiment`
state is never used (it exports MLFLOW_EXPERIMENT_ID and silently redirects later runs).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from orchestrator.config import Config, flatten, to_yaml
from orchestrator.errors import OrchestratorError
from orchestrator.files import writable_dir, write_text
from orchestrator.locks import file_lock, store_lock
from orchestrator.store_retry import retrying_client, sqlite_path

# Short names users compare in the MLflow UI and the report reads.
CELL_PARAMS = {"method": "data.method", "ipc": "data.ipc", "label_mode": "label_mode",
               "model": "model.name", "seed": "seed"}
KNOWN_LOCATIONS_KEPT = 20  # output folders recorded per experiment, newest first


def default_uri(output_dir: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else a SQLite file in the output dir (absolute 4-slash URI), the
    folder created if missing."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        Path(output_dir).expanduser().resolve().mkdir(parents=True, exist_ok=True)
    return store_uri(output_dir)


def store_uri(output_dir: Path) -> str:
    """`default_uri` without creating anything."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(output_dir).expanduser().resolve() / 'mlflow.db'}"


def tracking_uri(config: Config) -> str:
    """The cell's store, once its output folder is known to be writable (checkpoints go there too)."""
    writable_dir(config.out)
    return default_uri(config.out)


def ensure_experiment(uri: str, name: str, artifact_root: Path | None = None) -> str:
    """Experiment id by name, created when missing (artifacts under `artifact_root` for SQLite).

    On SQLite, one process at a time creates the schema and the experiment (a file lock beside the
    database): two processes migrating a new store at once make MLflow fail. The experiment's folder
    is recorded so that `report` finds it from anywhere (`known_locations`).
    """
    database = sqlite_path(uri)
    if database is None:
        return get_or_create_experiment(uri, name, artifact_root)
    with store_lock(database):
        experiment_id = get_or_create_experiment(uri, name, artifact_root)
    record_location(name, database.parent)
    return experiment_id


# MLflow 3's UI picks an experiment's pages from this tag: model training (runs table, charts), not
# the GenAI overview (traces) it opens on for untagged experiments.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# The comparison the runs table opens on (`ui` prints its link): every run flat, best final top-1 first,
# the headline metric as the first metric column beside the set (Dataset) and what defines a cell. MLflow's
# UI reads a shared view from the experiment tag `mlflow.sharedViewState.<key>` (`?viewStateShareKey=<key>`).
COMPARISON_VIEW = "comparison"
COMPARISON_COLUMNS = ["attributes.`Dataset`", "metrics.`val/top1_final`", "params.`method`", "params.`ipc`",
                      "params.`label_mode`", "params.`model`", "params.`seed`"]  # the only metric: first
EXPERIMENT_TAGS = {**EXPERIMENT_KIND, f"mlflow.sharedViewState.{COMPARISON_VIEW}": json.dumps(
    {"searchFilter": "tags.role = 'cell'", "orderByKey": "metrics.`val/top1_final`", "orderByAsc": False,
     "selectedColumns": COMPARISON_COLUMNS})}


def tag_experiment(client, experiment) -> None:
    """Give an experiment made before them the EXPERIMENT_TAGS (model-training pages, the comparison view)."""
    for key, value in EXPERIMENT_TAGS.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)


def comparison_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table in the comparison view (see COMPARISON_VIEW)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={COMPARISON_VIEW}"


def get_or_create_experiment(uri: str, name: str, artifact_root: Path | None) -> str:
    client = retrying_client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        tag_experiment(client, experiment)
        return experiment.experiment_id
    location = None
    if artifact_root is not None and uri.startswith("sqlite:"):
        location = (Path(artifact_root) / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
    except MlflowException:  # created concurrently by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def has_experiment(uri: str, name: str) -> bool:
    return retrying_client(uri).get_experiment_by_name(name) is not None


def comparison_links(uri: str, base: str) -> list[tuple[str, str]]:
    """(experiment, link to its runs table in the comparison view) for this store's experiments with runs."""
    client = retrying_client(uri)
    links = []
    for experiment in client.search_experiments():
        if experiment.name != "Default":
            tag_experiment(client, experiment)  # the view the link opens, on stores made before it
            links.append((experiment.name, comparison_url(base, experiment.experiment_id)))
    return links


def locations_file() -> Path:
    """Where experiments' output folders are recorded: $ORCHESTRATOR_HOME or ~/.cache/orchestrator."""
    home = os.environ.get("ORCHESTRATOR_HOME") or Path.home() / ".cache" / "orchestrator"
    return Path(home) / "experiments.json"


def known_locations(name: str) -> list[Path]:
    """Output folders whose store holds experiment `name`, newest first (as this machine recorded them)."""
    try:
        recorded = json.loads(locations_file().read_text())
    except (OSError, ValueError):
        return []
    return [Path(folder) for folder in recorded.get(name, [])]


def record_location(name: str, out: Path) -> None:
    """Best effort: a folder that cannot record its location still trains."""
    path = locations_file()
    try:
        with file_lock(path.with_suffix(".lock"), "the experiment index", quiet=True):
            folders = [str(out)] + [str(f) for f in known_locations(name) if f != out and f.is_dir()]
            recorded = json.loads(path.read_text()) if path.is_file() else {}
            recorded[name] = folders[:KNOWN_LOCATIONS_KEPT]
            write_text(path, json.dumps(recorded, indent=1))
    except (OSError, ValueError):
        pass


def experiment_store(experiment: str, output_dir: str | None, tracking_uri: str | None) -> tuple[str, Path]:
    """(store URI, output folder) of an experiment: the flags given, else ./outputs or where it was written."""
    if tracking_uri or output_dir or os.environ.get("MLFLOW_TRACKING_URI"):
        folder = Path(output_dir or "outputs")
        return tracking_uri or default_uri(folder), folder
    places = list(dict.fromkeys([Path("outputs").resolve(), *known_locations(experiment)]))
    for folder in places:
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        if (folder / "mlflow.db").is_file() and has_experiment(uri, experiment):
            return uri, folder
    raise OrchestratorError(f"experiment {experiment!r} not found in {' or '.join(map(str, places))}: "
                            f"pass the --output-dir the sweep or run wrote to")


def newest_run(client, experiment_ids: list[str], *, cell: str, role: str, finished: bool):
    """The newest run of this cell (tags `cell`, `role`) in these experiments, only FINISHED ones if
    `finished`; None if there is none."""
    condition = f"tags.cell = '{cell}' and tags.role = '{role}'"
    if finished:
        condition += " and attributes.status = 'FINISHED'"
    runs = client.search_runs(experiment_ids, filter_string=condition, order_by=["attributes.start_time DESC"],
                              max_results=1) if experiment_ids else []
    return runs[0] if runs else None


def find_run(uri: str, experiment_id: str, *, cell: str, role: str = "cell"):
    """The run of this cell (tag `cell`) to go on from, or None: its newest FINISHED run if it has one (an
    archive import can add a finished run older than an attempt killed here), else its newest run."""
    client = retrying_client(uri)
    return (newest_run(client, [experiment_id], cell=cell, role=role, finished=True)
            or newest_run(client, [experiment_id], cell=cell, role=role, finished=False))


def get_run(uri: str, run_id: str):
    return retrying_client(uri).get_run(run_id)


def find_finished_anywhere(uri: str, *, cell: str, role: str = "cell"):
    """The newest FINISHED run of this cell in any experiment of the store, or None. A cell's name holds the
    hash of every value that changes its result, so two experiments naming one cell trained the same thing."""
    client = retrying_client(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return newest_run(client, experiments, cell=cell, role=role, finished=True)


def sweep_run_id(uri: str, experiment: str) -> str | None:
    """The experiment's sweep parent run, where the report is logged back (None: a new report run)."""
    client = retrying_client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], filter_string="tags.role = 'sweep'", max_results=1)
    return runs[0].info.run_id if runs else None


def create_run(uri: str, experiment_id: str, *, run_name: str, tags: dict[str, str]) -> str:
    """A new RUNNING run with these tags and no params (a sweep's parent run); its id."""
    return retrying_client(uri).create_run(experiment_id, run_name=run_name, tags=tags).info.run_id


def reopen_run(uri: str, run_id: str) -> None:
    """A run ended before is RUNNING again (a sweep run a second time reuses its parent run)."""
    retrying_client(uri).update_run(run_id, status="RUNNING")


def start_run(uri: str, experiment_id: str, config: Config, *, cell: str, method_label: str, role: str = "cell",
              parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> str:
    """Create the run and log the resolved config as params plus the short cell params.

    `method_label` is the `method` param the report groups by (`orchestrator.methods.method_label`: the
    registry knows which methods reverse and how a grid's variant reads).
    """
    client = retrying_client(uri)
    all_tags = {"role": role, "cell": cell, "protocol": config.name, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=cell, tags=all_tags)
    log_params(uri, run.info.run_id, config, method_label)
    return run.info.run_id


def log_params(uri: str, run_id: str, config: Config, method_label: str) -> None:
    flat = flatten(config)
    params = {key: flat[dotted] for key, dotted in CELL_PARAMS.items()}
    params["method"] = method_label
    params.update(flat)
    log_in_batches(retrying_client(uri), run_id,
                   params=[Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                           for k, v in params.items()])


PARAMS_PER_CALL, METRICS_PER_CALL = 100, 1000  # MLflow's log_batch limits


def log_in_batches(client, run_id: str, *, params: list = (), metrics: list = ()) -> None:
    """Params and metrics of any number, in as many `log_batch` calls as MLflow's limits need."""
    for start in range(0, len(params), PARAMS_PER_CALL):
        client.log_batch(run_id, params=params[start:start + PARAMS_PER_CALL])
    for start in range(0, len(metrics), METRICS_PER_CALL):
        client.log_batch(run_id, metrics=metrics[start:start + METRICS_PER_CALL])


class ParamsRefused(Exception):
    """MLflow refused a run's params: the run already holds one of them with another value."""


def log_params_and_tags(uri: str, run_id: str, params: dict[str, str], tags: dict[str, str]) -> None:
    """Params and tags in one call; ParamsRefused (MLflow's words) when a param would change."""
    try:
        retrying_client(uri).log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                                       tags=[RunTag(k, v) for k, v in tags.items()])
    except MlflowException as exc:
        raise ParamsRefused(str(exc)) from exc


def set_tags(uri: str, run_id: str, tags: dict[str, Any]) -> None:
    retrying_client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    import time

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    retrying_client(uri).log_batch(run_id, metrics=batch)


def log_text_artifacts(uri: str, run_id: str, files: dict[str, str], artifact_path: str | None = None) -> None:
    """Write {file name: text} to a temp dir and log them as run artifacts."""
    client = retrying_client(uri)
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
        client.log_artifacts(run_id, tmp, artifact_path)


PREVIEW_ARTIFACT = "set_preview.parquet"  # a few images per class of a cell's set: the report's image grid


def log_table_artifact(uri: str, run_id: str, name: str, table) -> None:
    """Log a pyarrow table as a parquet artifact `name`."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(table, Path(tmp) / name)
        retrying_client(uri).log_artifact(run_id, str(Path(tmp) / name))


def log_training_set(uri: str, run_id: str, *, name: str, fingerprint: str, source: str, images: int,
                     image_bytes: int) -> None:
    """The cell's compressed set as the run's MLflow dataset input (the runs table's Dataset column):
    named method-IPC, digested by its fingerprint, with its source and its images and bytes as profile."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=name, digest=fingerprint[:36], source_type="local", source=json.dumps({"uri": source}),
                      profile=json.dumps({"num_images": int(images), "image_bytes": int(image_bytes)}))
    context = InputTag(key="mlflow.data.context", value="training")
    retrying_client(uri).log_inputs(run_id, datasets=[DatasetInput(dataset=dataset, tags=[context])])


def log_tables(uri: str, run_id: str, tables: dict[str, Any]) -> None:
    """pandas tables as MLflow tables of a run (`{artifact file: frame}`), comparable in the UI."""
    client = retrying_client(uri)
    for artifact_file, frame in tables.items():
        client.log_table(run_id, data=frame, artifact_file=artifact_file)


def log_config_artifact(uri: str, run_id: str, config: Config) -> None:
    log_text_artifacts(uri, run_id, {"config.yaml": to_yaml(config)})


def terminate(uri: str, run_id: str, status: str = "FINISHED") -> None:
    retrying_client(uri).set_terminated(run_id, status=status)


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    return f"{uri}  (experiment {experiment_id}, run {run_id}); browse with `python -m orchestrator ui`"


# ------------------------------------------------------------------ archive (orchestrator/archive.py)
def finished_cell_runs(uri: str, experiment: str) -> list:
    """The newest FINISHED run of each cell of `experiment`, oldest cell first."""
    client = retrying_client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise OrchestratorError(f"experiment {experiment!r} is not in the store {uri}: pass the --output-dir "
                                f"the sweep wrote to")
    runs, token = [], None
    while True:
        page = client.search_runs([found.experiment_id], "tags.role = 'cell' and attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time DESC"], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    newest = {}
    for run in runs:
        newest.setdefault(run.data.tags["cell"], run)
    return sorted(newest.values(), key=lambda run: run.info.start_time)


def metric_histories(uri: str, run) -> dict[str, list]:
    """Every metric of the run as its full history, `[step, timestamp, value]` rows in step order."""
    client = retrying_client(uri)
    return {key: sorted([m.step, m.timestamp, m.value] for m in client.get_metric_history(run.info.run_id, key))
            for key in sorted(run.data.metrics)}


def recreate_run(uri: str, experiment_id: str, record: dict) -> str:
    """A run made from `archive.run_record`'s data: same name, times, tags, params, metric histories, status."""
    client = retrying_client(uri)
    run_id = client.create_run(experiment_id, start_time=record["start_time"], run_name=record["run_name"],
                               tags=record["tags"]).info.run_id
    params = [Param(key, value) for key, value in record["params"].items()]
    metrics = [Metric(key, value, timestamp, step) for key, history in record["metrics"].items()
               for step, timestamp, value in history]
    log_in_batches(client, run_id, params=params, metrics=metrics)
    client.set_terminated(run_id, record["status"], end_time=record["end_time"])
    return run_id
