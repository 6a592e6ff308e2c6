"""`orchestrator archive`: finished cells' MLflow runs as small JSON files, and back into a store.

A results store (`<output_dir>/mlflow.db`) lives on one machine; a study's sweeps run for days across
machines and sessions. `archive export` writes each FINISHED cell run of an experiment as one JSON file
(`<folder>/<experiment>/<cell>.json`: run name, status, times, tags, params, every metric's history),
deterministic so that a file changes only when its run does: the files are kept in git
(`results/runs/`). `archive import` recreates those runs in any store, through MLflow's own client; a
sweep then skips the cells they hold (their runs are FINISHED) and `report` reads them like any run.
`export-artifacts` / `import-artifacts` do the same for the store's teachers and training dynamics
(`orchestrator.artifact_archive`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from orchestrator import tracking
from orchestrator.errors import OrchestratorError
from orchestrator.files import write_text

FORMAT = 1
DEFAULT_FOLDER = Path("results/runs")
#: tags a store sets per run (the parent sweep run exists only in the store it came from) or the archive
#: sets itself: not written, so a run exported, imported and exported again gives the same file
DROPPED_TAGS = ("mlflow.parentRunId", "archive.")
IMPORTED_FROM = "archive.imported_from"
COPIED_FROM = "archive.copied_from"


def export_experiment(uri: str, experiment: str, folder: Path) -> list[Path]:
    """Write every finished cell of `experiment` to `folder/<experiment>/<cell>.json`; the files written."""
    written = []
    for run in tracking.finished_cell_runs(uri, experiment):
        path = folder / experiment / f"{run.data.tags['cell']}.json"
        text = json.dumps(run_record(uri, experiment, run), separators=(",", ":")) + "\n"
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, text)
        written.append(path)
    return written


def run_record(uri: str, experiment: str, run) -> dict:
    """One run as plain data: what `tracking.recreate_run` needs to make it again."""
    tags = {key: value for key, value in run.data.tags.items() if not key.startswith(DROPPED_TAGS)}
    return {"format": FORMAT, "experiment": experiment, "run_name": run.info.run_name,
            "status": run.info.status, "start_time": run.info.start_time, "end_time": run.info.end_time,
            "tags": dict(sorted(tags.items())), "params": dict(sorted(run.data.params.items())),
            "metrics": tracking.metric_histories(uri, run)}


def import_record(uri: str, record: dict, artifact_root: Path, source: str) -> str | None:
    """Recreate the run of `record` in the store; None if its cell already has a FINISHED run there."""
    experiment_id = tracking.ensure_experiment(uri, record["experiment"], artifact_root)
    tags = record["tags"]
    previous = tracking.find_run(uri, experiment_id, cell=tags["cell"], role=tags.get("role", "cell"))
    if previous is not None and previous.info.status == "FINISHED":
        return None
    return tracking.recreate_run(uri, experiment_id, {**record, "tags": {**tags, IMPORTED_FROM: source}})


def copy_run(uri: str, run, experiment_id: str, parent_run_id: str | None = None) -> str:
    """A copy of a finished run in another experiment of the same store (under `parent_run_id`, a sweep's run)."""
    record = run_record(uri, "", run)
    tags = {**record["tags"], COPIED_FROM: f"experiment {run.info.experiment_id}, run {run.info.run_id}"}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return tracking.recreate_run(uri, experiment_id, {**record, "tags": tags})


def archive_files(paths: Iterable[Path]) -> Iterator[Path]:
    """The JSON files under each path (a file, or a folder searched recursively), sorted."""
    for path in paths:
        if path.is_dir():
            yield from sorted(path.rglob("*.json"))
        elif path.is_file():
            yield path
        else:
            raise OrchestratorError(f"{path}: no such archive file or folder (archive export writes them, "
                                    f"under {DEFAULT_FOLDER}/<experiment>/ by default)")


def read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise OrchestratorError(f"{path}: not a readable archive file ({error}); export it again with "
                                f"`python -m orchestrator archive export`") from error
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise OrchestratorError(f"{path}: not an archive file of format {FORMAT} (written by `archive export`)")
    return record


def import_archive(uri: str, paths: Iterable[Path], artifact_root: Path) -> tuple[int, int]:
    """Import every archive file under `paths`; (runs created, cells already finished in the store)."""
    created = skipped = 0
    for path in archive_files(paths):
        if import_record(uri, read_record(path), artifact_root, str(path)) is None:
            skipped += 1
        else:
            created += 1
    return created, skipped


def cmd_archive(args: argparse.Namespace) -> int:
    if args.archive_verb == "export":
        uri, _ = tracking.experiment_store(args.experiment, args.output_dir, args.tracking_uri)
        written = export_experiment(uri, args.experiment, Path(args.to))
        print(f"{len(written)} finished cells of {args.experiment} in {Path(args.to) / args.experiment}")
        return 0
    output_dir = Path(args.output_dir).resolve()
    uri = args.tracking_uri or tracking.default_uri(output_dir)
    created, skipped = import_archive(uri, [Path(p) for p in args.paths], output_dir)
    print(f"imported {created} runs into {uri}; {skipped} cells were already finished there")
    return 0


def add_archive_parser(subparsers, more_verbs: Iterable[Callable] = ()) -> argparse.ArgumentParser:
    """Add the `archive` verb (export / import) to the CLI's sub-parsers."""
    parser = subparsers.add_parser("archive", help="finished cells as JSON files (kept in git) and back into "
                                                   "an MLflow store")
    verbs = parser.add_subparsers(dest="archive_verb", required=True)
    export = verbs.add_parser("export", help="write an experiment's finished cells, one JSON file each")
    export.add_argument("--experiment", required=True)
    export.add_argument("--output-dir", help="where the sweep wrote (default: as `report` finds it)")
    export.add_argument("--tracking-uri")
    export.add_argument("--to", default=str(DEFAULT_FOLDER), help=f"archive folder (default {DEFAULT_FOLDER})")
    imports = verbs.add_parser("import", help="recreate archived runs in a store (finished cells are skipped)")
    imports.add_argument("paths", nargs="*", default=[str(DEFAULT_FOLDER)],
                         help=f"archive files or folders (default {DEFAULT_FOLDER})")
    imports.add_argument("--output-dir", default="outputs", help="the store's folder (default ./outputs)")
    imports.add_argument("--tracking-uri")
    for add_verbs in more_verbs:  # verbs defined where archive cannot import (artifact_archive)
        add_verbs(verbs)
    parser.set_defaults(func=cmd_archive)
    return parser
