"""Command line: `python -m orchestrator <verb>`; each verb is a small function over parsed args.

Overrides come in one form, `--set section.key=value` (repeatable), plus a few explicit flags
(`--method`, `--ipc`, ...) that are shorthands for the same keys; both always beat the YAML.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from orchestrator.cli_args import add_config_args, config_from_args, run_parsed, use_address
from orchestrator.errors import OrchestratorError


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.cell import run_cell
    from orchestrator.teacher_job import ensure_prerequisites

    config = config_from_args(args)
    use_address(args.address)
    ensure_prerequisites(config)  # the teacher, training dynamics or distillation teacher it needs, as a sweep does
    run_cell(config, force=args.force)  # prints the cell's result line and where its MLflow run is
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from orchestrator.config import parse_override
    from orchestrator.sweep import cells_done, load_and_run, sweep_status

    overrides = dict(parse_override(text) for text in args.overrides)
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    if args.status:
        return print_sweep_status(Path(args.config), overrides)
    results = load_and_run(Path(args.config), overrides, args.address, args.dry_run)
    failed = [r for r in results if r.get("error")]
    for result in failed:
        print(f"failed cell: {result.get('cell', '?')}: {result['error']}", file=sys.stderr)
    done = cells_done(results)
    if sweep_status(results, done, len(results)) == "KILLED":  # Tune ends gracefully on SIGINT / Ctrl-C
        print(f"sweep interrupted with {len(results) - done} cell(s) not finished: the same command resumes it "
              "(finished cells are skipped, started ones continue from their last checkpoint)", file=sys.stderr)
        return 130
    return 1 if failed else 0


def print_sweep_status(path: Path, overrides: dict) -> int:
    from orchestrator.sweep_config import load_sweep
    from orchestrator.sweep_state import cell_states, render_states

    sweep = load_sweep(path, overrides)
    header = f"sweep {sweep.name}: {len(sweep.cells)} cells in MLflow experiment '{sweep.experiment}'"
    print(render_states(cell_states(sweep.cells, sweep.experiment), header))
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    from orchestrator.teacher_job import ensure_prerequisites, train_teacher

    config = config_from_args(args)
    use_address(args.address)
    path = train_teacher(config, force=args.force)
    ensure_prerequisites(config)  # and any teacher the method makes its set with (distillation)
    print(f"teacher registered at {path}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from orchestrator.distill_job import cmd_distill as distill

    from orchestrator.teacher_job import ensure_prerequisites

    config = config_from_args(args)
    use_address(args.address)
    ensure_prerequisites(config)  # a missing BatchNorm teacher is trained first
    return distill(config)


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from orchestrator.data.prepare import prepare_fashion_mnist

    if args.dataset != "fashion-mnist":
        raise OrchestratorError(f"unknown dataset '{args.dataset}': only fashion-mnist can be prepared here; "
                                f"other sets are read directly (image folder, parquet, save_to_disk, hub key)")
    path = prepare_fashion_mnist(Path(args.output_dir).resolve() / "data", image_size=args.image_size,
                                 mode=args.mode)
    print(f"prepared {args.dataset} at {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator.report import run_report
    from orchestrator.tracking import experiment_store, sweep_run_id

    if args.storage and not args.into:
        raise OrchestratorError("--storage adds the cost tables to the block that --into writes: "
                                "add --into PAGE (e.g. --into docs/results.md)")
    uri, output_dir = experiment_store(args.experiment, args.output_dir, args.tracking_uri)
    out_dir = Path(args.out or output_dir / "reports" / args.experiment)
    paths = run_report(uri, args.experiment, out_dir, log=not args.no_log,
                       parent_run_id=sweep_run_id(uri, args.experiment), html=args.html)
    if args.summary:  # the top-1 tables only: the files hold the rest
        from orchestrator.report.output import page_block
        from orchestrator.report.runs import load_cell_runs

        print(page_block(load_cell_runs(uri, args.experiment), metric="top1_final",
                         origin=f"experiment {args.experiment}"))
    else:
        print(render_terminal_from(paths))
    print(f"report written to {out_dir}" + (f" (page: {paths['report.html']})" if args.html else ""))
    if args.into:
        fill_results_page(uri, args.experiment, Path(args.into), storage=args.storage)
    return 0


def fill_results_page(uri: str, experiment: str, page: Path, *, storage: bool = False) -> None:
    """`report --into PAGE`: the experiment's tables into its `<!-- experiment -->` block of PAGE (with
    `storage`, each group's storage and cost table too)."""
    from datetime import datetime

    from orchestrator.report.output import fill_page_block, page_block
    from orchestrator.report.runs import load_cell_runs

    block = page_block(load_cell_runs(uri, experiment), metric="top1_final",
                       origin=f"`report --into` at {datetime.now().strftime('%Y-%m-%d %H:%M')}", storage=storage)
    fill_page_block(page, experiment, block)
    print(f"tables of {experiment} written into {page}")


def render_terminal_from(paths: dict) -> str:
    return Path(paths["report.md"]).read_text()


def cmd_ui(args: argparse.Namespace) -> int:
    from orchestrator.tracking import comparison_links, default_uri

    uri = args.tracking_uri or default_uri(Path(args.output_dir))
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", args.host, "--port", str(args.port)]
    if args.workers:
        command += ["--workers", str(args.workers)]
    print("starting:", " ".join(command), flush=True)
    for name, url in comparison_links(uri, f"http://{args.host}:{args.port}"):
        print(f"  {name}: {url}", flush=True)
    return serve_until_stopped(command)


UI_GRACE_S = 10.0  # after a SIGTERM/SIGINT, how long the server's processes get before SIGKILL


def serve_until_stopped(command: list[str]) -> int:
    """Run a server in its own session (process group) and stop the whole group with this process.

    `mlflow ui` serves from child processes (gunicorn/uvicorn workers): SIGTERM or SIGINT to this
    process is forwarded to the group, which gets UI_GRACE_S seconds before SIGKILL, so stopping
    this pid frees the port. Returns the server's exit code, or 128 + the signal that stopped it.
    """
    import signal
    import subprocess

    server = subprocess.Popen(command, start_new_session=True)
    stops: list[tuple[int, float]] = []

    def forward(signum, frame) -> None:
        stops.append((signum, time.monotonic()))
        signal_group(server.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = wait_for_server(server, stops)
    finally:
        end_group(server.pid)  # workers the server left behind, or all of it if this process fails
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 + stops[0][0] if stops else code


def wait_for_server(server, stops: list[tuple[int, float]]) -> int:
    import signal
    import subprocess

    while True:
        try:
            return server.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            if stops and time.monotonic() - stops[0][1] > UI_GRACE_S:
                signal_group(server.pid, signal.SIGKILL)


def end_group(group: int) -> None:
    """SIGTERM to what is left of the group, SIGKILL after UI_GRACE_S."""
    import signal

    signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + UI_GRACE_S
    while group_alive(group) and time.monotonic() < deadline:
        time.sleep(0.2)
    signal_group(group, signal.SIGKILL)


def signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone


def group_alive(group: int) -> bool:
    """Whether a process of the group still runs (zombies waiting to be reaped do not count)."""
    if not Path("/proc").is_dir():  # no /proc (macOS): any member, zombies included
        try:
            os.killpg(group, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orchestrator",
                                     description="Benchmark dataset compression on Ray, tracked in MLflow.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    run = verbs.add_parser("run", help="train and evaluate one benchmark cell")
    add_config_args(run)
    run.add_argument("--force", action="store_true",
                     help="train the cell again from scratch, even if it finished or has checkpoints")
    run.set_defaults(func=cmd_run)

    sweep = verbs.add_parser("sweep", help="run a grid of cells with Ray Tune (resumable)")
    sweep.add_argument("--config", "-c", required=True, help="sweep YAML (configs/sweeps/*.yaml)")
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key in every cell, e.g. --set schedule.epochs=5")
    sweep.add_argument("--output-dir", help="output_dir for every cell")
    sweep.add_argument("--dry-run", action="store_true", help="print the expanded grid and resources only")
    sweep.add_argument("--status", action="store_true",
                       help="print each cell's state in the store (finished, training, stopped, to run) and "
                            "stop; starts nothing")
    sweep.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    sweep.set_defaults(func=cmd_sweep)

    teacher = verbs.add_parser("teacher", help="train the soft-label teacher on the full training set")
    add_config_args(teacher)
    teacher.add_argument("--force", action="store_true")
    teacher.set_defaults(func=cmd_teacher)

    distill = verbs.add_parser(
        "distill", help="generate a distilled set (--method sre2l|cda|gvbsm|lpld|rded|dwa, --ipc N, --seed S)",
        description="Generate (or find cached) the distilled set of --method sre2l, cda, gvbsm, lpld, rded or dwa "
                    "at --ipc N and --seed S, with its BatchNorm teacher(s) (docs/protocol.md §Distillation).")
    add_config_args(distill)
    distill.set_defaults(func=cmd_distill)

    from orchestrator.archive import add_archive_parser
    from orchestrator.artifact_archive import add_artifact_verbs
    from orchestrator.bench import add_bench_parser
    from orchestrator.cluster import add_submit_parser
    from orchestrator.prune_job import add_prune_parser
    from orchestrator.rethinkdc_cli import add_rethinkdc_parser

    add_prune_parser(verbs)
    add_bench_parser(verbs)
    add_submit_parser(verbs)
    add_rethinkdc_parser(verbs)
    add_archive_parser(verbs, more_verbs=[add_artifact_verbs])

    data = verbs.add_parser("data", help="dataset utilities").add_subparsers(dest="data_verb", required=True)
    prepare = data.add_parser("prepare", help="convert a dataset into the benchmark schema")
    prepare.add_argument("dataset", help="fashion-mnist")
    prepare.add_argument("--output-dir", default="outputs")
    prepare.add_argument("--image-size", type=int, default=28)
    prepare.add_argument("--mode", choices=["L", "RGB"], default="L")
    prepare.set_defaults(func=cmd_data_prepare)

    report = verbs.add_parser("report", help="paper-style tables and plots from MLflow")
    report.add_argument("--experiment", required=True)
    report.add_argument("--output-dir", help="where the sweep wrote (default: ./outputs, else the folder "
                                             "this machine recorded for the experiment)")
    report.add_argument("--tracking-uri")
    report.add_argument("--out", help="report folder (default outputs/reports/<experiment>)")
    report.add_argument("--no-log", action="store_true", help="do not log the report back to MLflow")
    report.add_argument("--summary", action="store_true", help="print only the top-1 tables (the report's "
                        "files are written whole)")
    report.add_argument("--html", action="store_true", help="also write report.html: one self-contained page "
                        "(sortable tables, accuracy vs IPC and vs storage, the sets' images, commit and date)")
    report.add_argument("--into", metavar="PAGE", help="also write the top-1 tables into the block "
                        "<!-- EXPERIMENT --> ... <!-- /EXPERIMENT --> of a markdown page (docs/results.md)")
    report.add_argument("--storage", action="store_true", help="with --into: each top-1 table followed by its "
                        "storage, training-time and generation-cost table (the headline's block)")
    report.set_defaults(func=cmd_report)

    ui = verbs.add_parser("ui", help="start the MLflow UI on the store (loopback by default)")
    ui.add_argument("--output-dir", default="outputs")
    ui.add_argument("--tracking-uri")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--workers", type=int, help="server worker processes (default: MLflow's, 4)")
    ui.set_defaults(func=cmd_ui)
    add_verbose_flag(parser, verbs)
    return parser


def add_verbose_flag(parser: argparse.ArgumentParser, verbs) -> None:
    """`--verbose`, before or after the verb: Ray's own logs on the console too (see `runtime.set_console`)."""
    help_text = "print Ray's own logs on the console too (default: kept in Ray's session log folder)"
    parser.add_argument("--verbose", "-v", action="store_true", help=help_text)
    for verb in verbs.choices.values():
        verb.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS, help=help_text)


def main(argv: list[str] | None = None) -> int:
    return run_parsed(get_args_parser().parse_args(argv))
