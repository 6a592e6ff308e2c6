"""The `bench` verb: the benchmark registry and the ratios between its figures, the CLI options,
running the chosen benchmarks, and their table, ratio lines and JSON."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from orchestrator.bench.cell import bench_cell
from orchestrator.bench.context import BENCHMARK_SWEEP, BenchContext, BenchFn, Figure, all_cpus
from orchestrator.bench.evaluation import bench_eval
from orchestrator.bench.micro import bench_augment, bench_dynamics_memory, bench_pipeline
from orchestrator.bench.peer import PEER_SETUP, bench_peer
from orchestrator.bench.predict import bench_predict
from orchestrator.bench.train_step import bench_train_step

DESCRIPTION = "`python -m orchestrator bench`: speed and memory figures of the pieces a cell is made of."


BENCHMARKS: dict[str, BenchFn] = {
    "augment": bench_augment,
    "pipeline": bench_pipeline,
    "train_step": bench_train_step,
    "eval": bench_eval,
    "dynamics_memory": bench_dynamics_memory,
    "cell": bench_cell,
    "predict": bench_predict,
    "peer": bench_peer,
}
ON_REQUEST = {"peer"}  # run only when named (--only) or when its tool is given (--peer-python)
# ratio name -> (figure, its reference figure), both measured in the same run
RATIOS = {
    "ratios.cell_step_vs_fastest": ("cell.train_images_per_s", "train_step.fastest_images_per_s"),
    "ratios.ray_vs_bare_loop": ("cell.train_images_per_s", "cell.bare_loop_images_per_s"),
    "ratios.eval_vs_fp32": ("eval.images_per_s", "eval.fp32_images_per_s"),
    "ratios.eval_vs_plain": ("eval.images_per_s", "eval.plain_images_per_s"),
    "ratios.cell_vs_ddranking": ("peer.cell_wall_s", "peer.ddranking_wall_s"),
}



def select(names: list[str] | None, peer_python: str | None = None) -> list[str]:
    """Benchmark names to run, in registry order; unknown names are an error that lists the known ones.
    By default every benchmark but the peer comparison, which runs when its interpreter is given."""
    if not names:
        return [name for name in BENCHMARKS if name not in ON_REQUEST or peer_python]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        from orchestrator.errors import ConfigError

        raise ConfigError(f"unknown benchmark(s) {unknown}: choose from {list(BENCHMARKS)}")
    return [name for name in BENCHMARKS if name in names]


def machine_facts() -> dict:
    import torch

    affinity = all_cpus()
    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    facts = {"cpu_count": os.cpu_count(), "cpus_usable": affinity, "torch": torch.__version__,
             "torch_threads": torch.get_num_threads(), "device": device, "numpy": np.__version__,
             "python": platform.python_version(), "platform": platform.platform(),
             "processor": platform.processor() or platform.machine()}
    try:
        facts["loadavg_1m"] = os.getloadavg()[0]  # the machine may be shared: context for the figures
    except OSError:  # pragma: no cover
        pass
    try:
        import ray

        facts["ray"] = ray.__version__
    except ImportError:  # pragma: no cover
        pass
    return facts


def run_benchmarks(names: list[str], ctx: BenchContext) -> dict:
    results: dict[str, dict] = {}
    try:
        for name in names:
            print(f"[bench] {name} ...", flush=True)
            started = time.perf_counter()
            try:
                figures = BENCHMARKS[name](ctx)
                ctx.figures.update({f"{name}.{key}": figure for key, figure in figures.items()})
                results[name] = {"seconds": time.perf_counter() - started,
                                 "figures": {key: {"value": float(fig.value), "unit": fig.unit}
                                             for key, fig in figures.items()}}
            except Exception as exc:  # one failing benchmark must not hide the others
                results[name] = {"seconds": time.perf_counter() - started,
                                 "error": f"{type(exc).__name__}: {exc}", "figures": {}}
                print(f"[bench] {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    finally:
        ctx.close()
    return results


def derive_ratios(figures: dict[str, Figure]) -> dict[str, Figure]:
    """The RATIOS whose two figures this run measured."""
    return {name: Figure(figures[value].value / figures[reference].value, "x")
            for name, (value, reference) in RATIOS.items() if value in figures and reference in figures}


def flat_figures(figures: dict[str, Figure]) -> dict[str, dict]:
    """The JSON "figures" mapping: every figure and ratio under its dotted name."""
    every = {**figures, **derive_ratios(figures)}
    return {key: {"value": float(fig.value), "unit": fig.unit} for key, fig in every.items()}


def render_ratios(figures: dict[str, Figure]) -> str:
    lines = []
    for name, ratio in derive_ratios(figures).items():
        value, reference = RATIOS[name]
        lines.append(f"{name:<30} {ratio.value:6.2f} x   = {value} {format_value(figures[value].value)} / "
                     f"{reference} {format_value(figures[reference].value)}")
    return "\n".join(lines)


def format_value(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-2):
        return f"{value:.3g}"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}"


def render_table(results: dict) -> str:
    rows = [("benchmark", "figure", "value", "unit")]
    for name, result in results.items():
        if result.get("error"):
            rows.append((name, "ERROR", result["error"], ""))
        for key, fig in result["figures"].items():
            rows.append((name, key, format_value(fig["value"]), fig["unit"]))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}" for a, b, c, d in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `bench` verb to the CLI's sub-parsers."""
    parser = subparsers.add_parser("bench", help=f"speed and memory benchmarks ({', '.join(BENCHMARKS)})")
    configure_parser(parser)
    parser.set_defaults(func=cmd_bench)
    return parser


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=list(BENCHMARKS),
                        help=f"run only these benchmarks (default: all of {list(BENCHMARKS)})")
    parser.add_argument("--quick", action="store_true", help="small sizes (6,000 images, short timings)")
    parser.add_argument("--output-dir", default="outputs",
                        help="data cache (<dir>/data) and default JSON folder (<dir>/bench)")
    parser.add_argument("--json", help="JSON results path (default <output-dir>/bench/bench-<timestamp>.json)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    parser.add_argument("--sweep", nargs="+", type=Path, default=[BENCHMARK_SWEEP], metavar="YAML",
                        help="the sweeps `predict` sizes (default: configs/sweeps/fashion-mnist-benchmark.yaml)")
    parser.add_argument("--peer-python", help="DD-Ranking 0.2's python for the `peer` benchmark (our cell vs its "
                                              "evaluator on the same images): " + PEER_SETUP.split(", then")[0])


def cmd_bench(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every benchmark reads local files only
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    names = select(args.only, args.peer_python)
    ctx = BenchContext(quick=args.quick, output_dir=Path(args.output_dir), address=args.address,
                       peer_python=args.peer_python, sweeps=tuple(args.sweep))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    machine = machine_facts()
    results = run_benchmarks(names, ctx)
    report = {"timestamp": stamp, "quick": args.quick, "machine": machine, "results": results,
              "figures": flat_figures(ctx.figures)}
    path = Path(args.json) if args.json else Path(args.output_dir) / "bench" / f"bench-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(render_table(results))
    print(render_ratios(ctx.figures))
    print(f"machine: {machine['cpus_usable']} CPUs usable, {machine['device']}, torch {machine['torch']}, "
          f"load {machine.get('loadavg_1m', float('nan')):.2f}")
    print(f"results written to {path}")
    return 1 if any(r.get("error") for r in results.values()) else 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (`python -m orchestrator.bench`), same options as the CLI verb."""
    parser = argparse.ArgumentParser(prog="python -m orchestrator bench", description=DESCRIPTION)
    configure_parser(parser)
    parser.set_defaults(func=cmd_bench)
    from orchestrator.cli_args import run_parsed

    return run_parsed(parser.parse_args(argv))
