"""`orchestrator sweep`: run a grid of benchmark cells as Ray Tune trials, tracked under one MLflow parent run.

Each cell is one Tune trial whose function calls `run_cell` (which launches the cell's Ray Train run).
Re-running the same command resumes: finished cells are skipped (their MLflow run is FINISHED),
unfinished ones continue from their last Ray Train checkpoint. With a `search:` section each cell
becomes a Tune search (grid/random/Optuna, optional ASHA) whose trials are nested under the cell's run.
The console shows the cells' states with an ETA (`progress.SweepProgress`) and the cells' epoch lines.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from orchestrator import tracking
from orchestrator.config import Config, apply_overrides, cell_name, config_from_dict, to_dict
from orchestrator.errors import OrchestratorError, disk_full_cause, disk_full_error, original_error
from orchestrator.progress import SweepProgress, tune_callback
from orchestrator.runtime import console_verbose, init_ray, use_gpu, worker_lines_to
from orchestrator.sweep_config import Search, Sweep, describe, trial_resources


def run_sweep(sweep: Sweep, *, address: str | None = None, dry_run: bool = False) -> list[dict]:
    print(describe(sweep), flush=True)
    if dry_run or not sweep.cells:
        return []
    first = sweep.cells[0]
    uri = tracking.tracking_uri(first)  # checks the output folder before Ray starts
    init_ray(address, dashboard=needs_dashboard(sweep))
    experiment_id = tracking.ensure_experiment(uri, sweep.experiment, first.out)
    parent_id = sweep_parent_run(uri, experiment_id, sweep)
    status = "FAILED"  # whatever ends the driver, the parent run is not left RUNNING
    try:
        results = run_cells(sweep, parent_id, sweep_progress(sweep))
        done = cells_done(results)
        tracking.log_metrics(uri, parent_id, {"sweep/cells_done": done, "sweep/cells": len(sweep.cells)})
        status = sweep_status(results, done, len(sweep.cells))
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM (Ray's handler exits)
        status = "KILLED"
        raise
    finally:
        tracking.terminate(uri, parent_id, status)
    print(f"sweep {sweep.name}: {done}/{len(sweep.cells)} cells finished; "
          f"report: python -m orchestrator report --experiment {sweep.experiment} --output-dir {first.output_dir}")
    return results


def cells_done(results: list[dict]) -> int:
    return sum(1 for r in results if r.get("top1_final") is not None)


def sweep_status(results: list[dict], done: int, total: int) -> str:
    """The sweep's parent run status: FINISHED when every cell finished, FAILED when a cell failed,
    KILLED when it stopped before the rest ran and none failed (Ctrl-C / SIGINT: Tune ends gracefully)."""
    if done == total:
        return "FINISHED"
    return "FAILED" if any(r.get("error") for r in results) else "KILLED"


def needs_dashboard(sweep: Sweep) -> bool:
    """ASHA stops trials by killing them; Ray Train's placement group cleaner frees what their cells held
    only through the dashboard's State API, so a local Ray started for such a sweep runs the dashboard."""
    return sweep.search is not None and bool(sweep.search.scheduler)


def sweep_progress(sweep: Sweep) -> SweepProgress:
    """A live table on a terminal, unless `--verbose` lets Ray's own lines (which would break it) through;
    per-epoch lines only with `--verbose`."""
    verbose = console_verbose()
    return SweepProgress(sweep.name, len(sweep.cells), sweep.max_concurrent, live=False if verbose else None,
                         verbose=verbose)


def run_cells(sweep: Sweep, parent_id: str, progress: SweepProgress) -> list[dict]:
    prepare_prerequisites(sweep, parent_id)
    try:
        with worker_lines_to(progress.line):
            if sweep.search is None:
                return run_grid(sweep, parent_id, progress)
            return [search_with_progress(cell, parent_id, sweep, progress) for cell in sweep.cells]
    finally:
        progress.close()


def search_with_progress(cell: Config, parent_id: str, sweep: Sweep, progress: SweepProgress) -> dict:
    name = cell_name(cell)
    progress.start(name)
    try:
        outcome = run_search(cell, sweep.search, parent_id, sweep)
    except Exception:
        progress.fail(name)
        raise
    progress.finish(name, skipped=bool(outcome.get("skipped")))
    return outcome


def sweep_parent_run(uri: str, experiment_id: str, sweep: Sweep) -> str:
    """The sweep's parent run (reused, RUNNING again, when the same sweep is run again), with its grid."""
    previous = tracking.find_run(uri, experiment_id, cell=sweep.name, role="sweep")
    if previous is not None:
        tracking.reopen_run(uri, previous.info.run_id)
        return previous.info.run_id
    run_id = tracking.create_run(uri, experiment_id, run_name=f"sweep-{sweep.name}",
                                 tags={"role": "sweep", "cell": sweep.name})
    grid = [{"cell": cell_name(c), "protocol": c.name, "method": c.data.method, "ipc": c.data.ipc,
             "label_mode": c.label_mode, "model": c.model.name, "seed": c.seed} for c in sweep.cells]
    tracking.log_text_artifacts(uri, run_id, {"sweep.yaml": yaml.safe_dump(sweep.source, sort_keys=False),
                                              "grid.json": json.dumps(grid, indent=2)})
    return run_id


def prepare_prerequisites(sweep: Sweep, parent_id: str) -> None:
    """Train what cells share before they start (the soft-label teacher, pruning dynamics, distillation
    teachers), their runs nested under the sweep's."""
    from orchestrator.teacher_job import ensure_prerequisites

    for config in sweep.cells:
        if not finished(config):  # a finished cell (an archived one too) needs nothing trained again
            ensure_prerequisites(config, parent_run_id=parent_id)


def finished(config: Config) -> bool:
    """The cell finished in this experiment or another of the store (`run_cell` then copies its run)."""
    return tracking.find_finished_anywhere(tracking.tracking_uri(config), cell=cell_name(config)) is not None


def cell_trial(params: dict) -> None:
    """One Tune trial = one cell (grid sweeps)."""
    from ray import tune

    from orchestrator.cell import run_cell

    config = config_from_dict(params["cell"])
    result = run_cell(config, parent_run_id=params["parent_run_id"])
    tune.report({"top1_final": result.summary["top1_final"], "top1_best": result.summary["top1_best"],
                 "skipped": result.skipped, "cell": result.name})


NOT_STARTED = "(a cell that had not started)"


def trial_cell(trial_config: dict | None) -> str:
    """The trial's cell name; a trial stopped before it began (Ctrl-C as the grid starts) has no config."""
    return cell_name(config_from_dict(trial_config["cell"])) if trial_config else NOT_STARTED


def run_grid(sweep: Sweep, parent_id: str, progress: SweepProgress) -> list[dict]:
    from ray import tune

    first = sweep.cells[0]
    trainable = tune.with_resources(cell_trial, lambda spec: trial_resources(
        config_from_dict(spec["cell"]), sweep.trial_cpus, use_gpu(first.train.use_gpu)))
    tuner = tune.Tuner(
        trainable,
        param_space={"cell": tune.grid_search([to_dict(c) for c in sweep.cells]), "parent_run_id": parent_id},
        # reuse_actors: the next cell starts in a process that has torch, timm and MLflow imported
        tune_config=tune.TuneConfig(max_concurrent_trials=sweep.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=f"sweep-{sweep.name}", storage_path=str(first.out / "tune"),
                                  failure_config=tune.FailureConfig(max_failures=0), verbose=0,
                                  callbacks=[tune_callback(progress, trial_cell)]),
    )
    grid = tuner.fit()
    return [trial_outcome(result, first.out) for result in grid]


def trial_outcome(result, out: Path) -> dict:
    """A grid trial's metrics, named by its cell even when it failed before reporting any."""
    outcome = dict(result.metrics or {})
    outcome.setdefault("cell", trial_cell(result.config))
    outcome["error"] = None
    if result.error is not None:
        outcome["error"] = f"{one_line(result.error)} (trial logs under {out / 'tune'})"
    return outcome


def one_line(error: BaseException) -> str:
    """A failed trial's error in one line: a project error's own message (out of Tune's and Ray Train's
    wrappers), a full disk as such, else the last line of what Ray recorded."""
    cause = original_error(error)
    if isinstance(cause, OrchestratorError):
        return str(cause)
    full = disk_full_cause(error)
    if full is not None:
        return str(disk_full_error(full, None))
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


# ---------------------------------------------------------------- hyperparameter search inside a cell


def search_space(search: Search) -> dict:
    from ray import tune

    builders = {"choice": tune.choice, "grid": tune.grid_search, "uniform": lambda a: tune.uniform(*a),
                "loguniform": lambda a: tune.loguniform(*a), "randint": lambda a: tune.randint(*a)}
    return {key: builders[kind](arg) for key, spec in search.space.items() for kind, arg in spec.items()}


def trial_config(params: dict) -> Config:
    """The cell's config with one trial's sampled values applied."""
    overrides = {key: value for key, value in params.items() if key not in ("cell", "parent_run_id")}
    return config_from_dict(apply_overrides(params["cell"], overrides))


def search_trial(params: dict) -> None:
    """One tuning trial: the cell's config plus the sampled values, reporting every epoch to Tune."""
    from orchestrator.cell import run_cell

    run_cell(trial_config(params), parent_run_id=params["parent_run_id"], role="trial", tune_report=True)


def run_search(cell: Config, search: Search, sweep_parent: str, sweep: Sweep) -> dict:
    """Tune one cell's hyperparameters; trials are nested under the cell's MLflow run."""
    from ray import tune

    from orchestrator.methods import method_label

    uri = tracking.tracking_uri(cell)
    experiment_id = tracking.ensure_experiment(uri, cell.experiment_name, cell.out)
    name = cell_name(cell)
    previous = tracking.find_run(uri, experiment_id, cell=name, role="search")
    if previous is not None and previous.info.status == "FINISHED":
        return {"top1_final": previous.data.metrics.get("val/top1_best"), "cell": name, "skipped": True}
    cell_run = previous.info.run_id if previous else tracking.start_run(
        uri, experiment_id, cell, cell=name, method_label=method_label(cell), role="search",
        parent_run_id=sweep_parent)
    tuner = tune.Tuner(
        tune.with_resources(search_trial, trial_resources(cell, sweep.trial_cpus, use_gpu(cell.train.use_gpu))),
        param_space={**search_space(search), "cell": to_dict(cell), "parent_run_id": cell_run},
        tune_config=tune.TuneConfig(metric=search.metric, mode=search.mode, num_samples=search.num_samples,
                                    search_alg=search_algorithm(search), scheduler=scheduler(search, cell),
                                    max_concurrent_trials=sweep.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=f"search-{name}", storage_path=str(cell.out / "tune"), verbose=0),
    )
    grid = tuner.fit()
    best = grid.get_best_result(metric=search.metric, mode=search.mode)
    close_stopped_trials(uri, experiment_id, grid)
    summary = {"val/top1_best": best.metrics.get(search.metric), "search/trials": len(grid),
               "search/total_epochs": sum((r.metrics or {}).get("epoch", 0) for r in grid)}
    tracking.log_metrics(uri, cell_run, summary)
    tracking.set_tags(uri, cell_run, {"best_config": json.dumps({k: best.config[k] for k in search.space})})
    tracking.terminate(uri, cell_run, "FINISHED")
    return {"top1_final": summary["val/top1_best"], "cell": name, **summary}


def search_algorithm(search: Search):
    if search.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch()
    return None  # grid / random: Tune's BasicVariantGenerator


def scheduler(search: Search, cell: Config):
    if not search.scheduler:
        return None
    from ray.tune.schedulers import ASHAScheduler

    options = {k: v for k, v in search.scheduler.items() if k != "type"}
    options.setdefault("max_t", cell.schedule.epochs)
    return ASHAScheduler(time_attr="training_iteration", **options)


def close_stopped_trials(uri: str, experiment_id: str, grid) -> None:
    """Mark trials the scheduler stopped early KILLED (tag `stopped_early`).

    Tune's verdict decides: a trial without an error that did not finish was stopped by the scheduler,
    whatever state the interruption left its MLflow run in (RUNNING, or FAILED when the stop reached
    the training loop as an exception).
    """
    for result in grid:
        run = tracking.find_run(uri, experiment_id, cell=cell_name(trial_config(result.config)), role="trial")
        if run is None or run.info.status == "FINISHED":
            continue
        if result.error is None:
            tracking.set_tags(uri, run.info.run_id, {"stopped_early": "true"})
            tracking.terminate(uri, run.info.run_id, "KILLED")
        elif run.info.status == "RUNNING":
            tracking.terminate(uri, run.info.run_id, "FAILED")


def load_and_run(path: Path, overrides: dict, address: str | None, dry_run: bool) -> list[dict]:
    from orchestrator.sweep_config import load_sweep

    return run_sweep(load_sweep(path, overrides), address=address, dry_run=dry_run)
