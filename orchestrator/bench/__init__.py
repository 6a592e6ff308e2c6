"""`python -m orchestrator bench`: speed and memory figures of the pieces a cell is made of.

Speed and memory targets live here, never in timed tests. Each benchmark is one function
`(BenchContext) -> {figure name: Figure(value, unit)}` registered by name in runner.BENCHMARKS:

    augment          train_views (the per-sample seeded augmentation) on Fashion-MNIST, 1 thread    micro.py
    pipeline         Ray Data: read_parquet + decode (train_dataset) + one epoch of train_batches    micro.py
    train_step       the loop's step on ConvNet-3 (batch 128, 28 px, all CPUs) per StepVariant      train_step.py
                     (fp32 eager, in chunks of 32, channels_last, torch.compile, bf16 autocast); the
                     fastest is the reference
    eval             the 10,000 test images through trainers.evaluate.evaluate, inference mode, all  evaluation.py
                     CPUs, fp32 vs bf16: images/s and top-1 difference on a briefly trained model;
                     the reference: the same fp32 pass NCHW throughout at batch 1000
    dynamics_memory  DynamicsWriter peak traced memory for E epochs (flat in E) and bytes on disk    micro.py
    cell             one real tiny cell through run_cell (the orchestration overhead), then the      cell.py
                     same epochs as a bare loop (the reference of its images/s)
    predict          wall time of configs/sweeps/fashion-mnist-benchmark.yaml on this machine from   predict.py
                     this run's cell and eval figures (needs both in the same run)
    peer             our cell against DD-Ranking 0.2's evaluator on the same images (on request)     peer.py

What they share (Figure, BenchContext, helpers) is context.py; the training of `train_step`, `eval`
and `cell` is training.py (the loop's own builders and step, as a cell trains); the registry, the
ratios, the CLI and the output are runner.py.

Results are printed as a table, then every ratio of RATIOS as "figure / its reference" (both measured
in this run), and written as JSON:
    {"timestamp", "quick", "machine": {...}, "results": {benchmark: {"seconds", "figures", "error"?}},
     "figures": {"<benchmark>.<figure>": {"value", "unit"}, ..., "ratios.<name>": {"value", "unit"}}}
"figures" is flat: its keys are dotted names at its top level, e.g. "cell.overhead_s",
"eval.images_per_s", "ratios.cell_step_vs_fastest", "ratios.ray_vs_bare_loop".
Nothing is logged to MLflow (the `cell` benchmark's MLflow store lives in a temporary directory).
"""

from orchestrator.bench.context import REPO, BenchContext, Figure, protocol_config
from orchestrator.bench.evaluation import bench_eval
from orchestrator.bench.micro import bench_augment, bench_dynamics_memory
from orchestrator.bench.peer import bench_peer
from orchestrator.bench.predict import bench_predict, evaluations, predict_sweep_seconds, views_per_epoch
from orchestrator.bench.runner import (BENCHMARKS, add_bench_parser, cmd_bench, flat_figures, main, render_ratios,
                                       select)
from orchestrator.bench.train_step import STEP_VARIANTS, StepVariant, bench_train_step, step_variants, time_steps

__all__ = ["BENCHMARKS", "REPO", "STEP_VARIANTS", "BenchContext", "Figure", "StepVariant", "add_bench_parser",
           "bench_augment", "bench_dynamics_memory", "bench_eval", "bench_peer", "bench_predict",
           "bench_train_step", "cmd_bench", "evaluations", "flat_figures", "main", "predict_sweep_seconds",
           "protocol_config", "render_ratios", "select", "step_variants", "time_steps", "views_per_epoch"]
