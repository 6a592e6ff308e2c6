"""`orchestrator bench`: structure of the figures and the CLI plumbing; never timing thresholds.

Only the cheap benchmarks run here (quick sizes); `pipeline` and `cell` need a Ray cluster and
minutes on a 2-core machine, so for them the tests check registration and `--only` selection, and
the ratios and sweep prediction built on their figures are tested as pure functions.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pytest

from orchestrator import bench
from orchestrator.bench import BENCHMARKS, BenchContext, Figure, StepVariant, runner
from orchestrator.errors import ConfigError
from tests_paths import REPO


def assert_figures(figures: dict, required: set[str]) -> None:
    assert required <= set(figures), sorted(set(required) - set(figures))
    for name, figure in figures.items():
        assert isinstance(figure, Figure), name
        assert isinstance(figure.unit, str) and figure.unit, name
        signed = figure.unit == "pt"  # a difference of two top-1 figures
        assert math.isfinite(figure.value) and (signed or figure.value > 0), (name, figure.value)


@pytest.fixture
def ctx(tmp_path) -> BenchContext:
    return BenchContext(quick=True, output_dir=tmp_path)


def test_registry_names_every_benchmark():
    assert list(BENCHMARKS) == ["augment", "pipeline", "train_step", "eval", "dynamics_memory", "cell", "predict",
                                "peer"]
    assert all(callable(fn) for fn in BENCHMARKS.values())


def test_augment_quick_figures(ctx):
    figures = bench.bench_augment(ctx, images=512)
    assert_figures(figures, {"images", "seconds", "images_per_s", "us_per_image", "rng_share"})
    assert figures["images"].value == 512 and figures["images_per_s"].unit == "images/s"


def test_train_step_variants_and_fastest_reference(ctx):
    variants = (StepVariant("fp32"), StepVariant("fp32_cl", channels_last=True))
    figures = bench.bench_train_step(ctx, threads=1, batch=16, variants=variants, min_seconds=0.0)
    assert_figures(figures, {"threads", "fp32_images_per_s", "fp32_cl_images_per_s", "fastest_images_per_s",
                             "fp32_vs_fastest", "fp32_cl_vs_fastest", "params"})
    rates = [figures["fp32_images_per_s"].value, figures["fp32_cl_images_per_s"].value]
    assert figures["fastest_images_per_s"].value == max(rates)
    assert max(figures["fp32_vs_fastest"].value, figures["fp32_cl_vs_fastest"].value) == 1.0
    assert not any("bf16" in key or "compile" in key for key in figures)


def test_train_step_restores_torch_threads(ctx):
    import torch

    before = torch.get_num_threads()
    bench.bench_train_step(ctx, threads=1, batch=4, variants=(StepVariant("fp32"),), min_seconds=0.0)
    assert torch.get_num_threads() == before


def optimizer_settings(optimizer) -> list[dict]:
    """Each parameter group's settings and size; `initial_lr` is the cell's LR schedule's record, not a setting."""
    return [{**{k: v for k, v in group.items() if k not in ("params", "initial_lr")}, "params": len(group["params"])}
            for group in optimizer.param_groups]


@pytest.mark.parametrize("optim", [{"optim.name": "sgd", "optim.momentum": 0.5, "optim.lr": 0.05},
                                   {"optim.name": "adamw"}])
def test_bench_trains_the_cells_student_with_the_cells_optimizer(optim):
    """bench.training builds what the loop builds for a cell: the same initial weights and the same
    optimizer, momentum included (SGD with momentum 0.5: a builder that dropped it would get 0.9 or 0)."""
    import torch

    from orchestrator.bench.training import loop_training
    from trainers.loop import build_training_state
    from trainers.loop_inputs import LoopInputs

    config = bench.protocol_config(optim)
    ours = loop_training(config)
    state = build_training_state(LoopInputs(config, num_classes=10), "cpu", None)
    model, optimizer = state.model, state.optimizer
    assert optimizer_settings(ours.optimizer) == optimizer_settings(optimizer)
    if optim["optim.name"] == "sgd":
        assert {group["momentum"] for group in ours.optimizer.param_groups} == {0.5}
    theirs = model.state_dict()
    assert all(torch.equal(value, theirs[key]) for key, value in ours.model.state_dict().items())


def test_only_bench_training_builds_or_steps_an_optimizer():
    """Every bench path that trains goes through bench/training.py (the loop's builders and step):
    no other bench module has a training loop of its own."""
    own_loop = ("build_optimizer", "create_optimizer", "torch.optim.", ".backward(", ".zero_grad(", "optimizer.step(")
    offenders = {path.name: [word for word in own_loop if word in path.read_text()]
                 for path in sorted((REPO / "orchestrator" / "bench").glob("*.py")) if path.name != "training.py"}
    assert {name: words for name, words in offenders.items() if words} == {}


def test_quick_variants_leave_out_compiling_and_emulated_bf16():
    from trainers.precision import native_bf16

    quick = bench.step_variants(quick=True)
    assert bench.step_variants(quick=False) == bench.STEP_VARIANTS
    assert quick[0] == StepVariant("fp32") and not any(v.compile for v in quick)
    assert any(v.precision == "bf16" for v in quick) == native_bf16("cpu")


def test_time_steps_stops_a_step_slower_than_the_cutoff():
    calls = []

    def step():
        calls.append(1)
        time.sleep(0.01)

    seconds, steps, cut = bench.time_steps(step, budget=10.0, cutoff=0.001)
    assert (steps, cut, len(calls)) == (1, True, 2) and seconds > 0  # warm-up + one timed step
    calls.clear()
    assert bench.time_steps(step, budget=0.0, cutoff=None)[1:] == (2, False) and len(calls) == 3


def test_eval_figures_per_precision(ctx):
    figures = bench.bench_eval(ctx, images=200, train_steps=2, precisions=("fp32", "bf16"), batch=200)
    assert_figures(figures, {"images", "threads", "fp32_images_per_s", "fp32_top1", "bf16_images_per_s",
                             "bf16_top1", "bf16_top1_minus_fp32", "bf16_vs_fp32", "images_per_s", "seconds_10k",
                             "plain_images_per_s"})
    assert figures["images"].value == 200 and figures["bf16_images"].value == 200  # one batch
    diff = figures["bf16_top1_minus_fp32"].value
    assert diff == pytest.approx(figures["bf16_top1"].value - figures["fp32_top1"].value)
    candidates = ([figures["fp32_images_per_s"].value]
                  + ([figures["bf16_images_per_s"].value] if abs(diff) <= 0.1 else []))
    assert figures["images_per_s"].value == max(candidates)


def test_dynamics_memory_small(ctx):
    figures = bench.bench_dynamics_memory(ctx, samples=1_000, epoch_counts=(1, 3), batch=100)
    assert_figures(figures, {"samples", "peak_traced_E1", "peak_traced_E3", "write_rows_per_s_E1",
                             "peak_ratio_maxE_over_minE", "disk_bytes_per_epoch",
                             "disk_bytes_per_sample_epoch"})
    assert figures["samples"].value == 1_000 and figures["peak_traced_E3"].unit == "MiB"


def write_sweep(tmp_path, model: str = "convnet3") -> Path:
    path = tmp_path / f"small-{model}.yaml"
    path.write_text(f"name: small\nprotocol: {REPO / 'configs' / 'fmnist-hard.yaml'}\n"
                    f"set: {{schedule.epochs: 50, eval.every: 25, model.name: {model}}}\n"
                    "axes: {method: [random], ipc: [1, 10], seed: [0, 1]}\n")
    return path


def test_predict_sums_the_per_cell_model_over_the_sweep_cells(tmp_path):
    """4 cells, 50 epochs, eval every 25: overhead 5 + 50 x ipc x 10 / 100 img/s + (2 - 1) x 2 s."""
    from orchestrator.sweep_config import load_sweep

    cells = load_sweep(write_sweep(tmp_path)).cells
    assert len(cells) == 4 and [bench.evaluations(c) for c in cells] == [2, 2, 2, 2]
    seconds = bench.predict_sweep_seconds(cells, num_classes=10, overhead_s=5.0, images_per_s=100.0, eval_s=2.0)
    assert seconds == pytest.approx(2 * (5 + 5 + 2) + 2 * (5 + 50 + 2))


def test_predict_scales_a_cells_training_and_evaluations_by_its_students_cost(tmp_path):
    """The same 4 cells with a student 3x as costly per image: overhead 5 + 3 x (training + 1 evaluation)."""
    from orchestrator.sweep_config import load_sweep

    cells = load_sweep(write_sweep(tmp_path, model="resnet18_small")).cells
    seconds = bench.predict_sweep_seconds(cells, num_classes=10, overhead_s=5.0, images_per_s=100.0, eval_s=2.0,
                                          student_cost={"resnet18_small": 3.0, "convnet3_bn": 10.0})
    assert seconds == pytest.approx(2 * (5 + 3 * (5 + 2)) + 2 * (5 + 3 * (50 + 2)))


def test_predict_measures_each_other_students_cost_on_the_cells_images(ctx, tmp_path):
    """A sweep of ConvNet-3-BN cells: predict times its bare loop against ConvNet-3's (the cell benchmark's
    student) at the cells' threads and names the factor; ConvNet-3 itself gets none (1 by definition)."""
    ctx.sweeps = (write_sweep(tmp_path, model="convnet3_bn"),)
    ctx.figures.update({"cell.overhead_s": Figure(5.0, "s"), "cell.train_images_per_s": Figure(100.0, "images/s"),
                        "eval.seconds_10k": Figure(2.0, "s")})
    figures = bench.bench_predict(ctx)
    cost = figures["student_cost.convnet3_bn"]
    assert cost.unit == "x" and cost.value > 0 and "student_cost.convnet3" not in figures
    unscaled = 2 * (5 + 5 + 2) + 2 * (5 + 50 + 2)
    assert figures["sweep_s"].value == pytest.approx(20 + (unscaled - 20) * cost.value)


def test_pca_tile_views_count_every_tile(tmp_path):
    config = bench.protocol_config({"data.method": "pca", "data.ipc": 10, "prune.pca_grid": 2})
    assert bench.views_per_epoch(config, 10) == 100
    tiles = bench.protocol_config({"data.method": "pca", "data.ipc": 10, "prune.pca_grid": 2,
                                   "prune.pca_views": "tile"})
    assert bench.views_per_epoch(tiles, 10) == 400
    full = bench.protocol_config({"data.method": "full", "data.ipc": None})
    assert bench.views_per_epoch(full, 10) == 60_000


def test_predict_benchmark_reads_this_runs_figures(ctx, tmp_path):
    ctx.sweeps = (write_sweep(tmp_path),)
    with pytest.raises(RuntimeError, match="--only eval cell predict"):
        bench.bench_predict(ctx)
    ctx.figures.update({"cell.overhead_s": Figure(5.0, "s"), "cell.train_images_per_s": Figure(100.0, "images/s"),
                        "eval.seconds_10k": Figure(2.0, "s")})
    figures = bench.bench_predict(ctx)
    assert figures["cells"].value == 4 and figures["sweep_s"].value == pytest.approx(138.0)
    ctx.sweeps = (write_sweep(tmp_path), bench.REPO / "configs" / "sweeps" / "study-noise.yaml")
    both = bench.bench_predict(ctx)  # several sweeps: figures named by each sweep's file
    assert both[f"{ctx.sweeps[0].stem}.sweep_s"].value == pytest.approx(138.0)
    assert both["study-noise.cells"].value == 9


def test_ratios_of_the_cell_against_its_references():
    figures = {"cell.overhead_s": Figure(7.0, "s"), "cell.train_images_per_s": Figure(300.0, "images/s"),
               "cell.bare_loop_images_per_s": Figure(400.0, "images/s"),
               "train_step.fastest_images_per_s": Figure(600.0, "images/s")}
    flat = bench.flat_figures(figures)
    assert flat["ratios.cell_step_vs_fastest"] == {"value": 0.5, "unit": "x"}
    assert flat["ratios.ray_vs_bare_loop"] == {"value": 0.75, "unit": "x"}
    assert flat["cell.overhead_s"] == {"value": 7.0, "unit": "s"} and "ratios.eval_vs_fp32" not in flat
    assert "ratios.ray_vs_bare_loop" in bench.render_ratios(figures)


def test_quick_json_of_the_cheap_benchmarks_has_flat_figures(monkeypatch, tmp_path, capsys):
    """`--quick --only train_step eval` through the CLI (eval on 500 images): flat dotted figures."""
    import functools

    monkeypatch.setitem(runner.BENCHMARKS, "eval", functools.partial(bench.bench_eval, images=500, train_steps=2))
    out = tmp_path / "r.json"
    assert bench.main(["--only", "train_step", "eval", "--quick", "--output-dir", str(tmp_path),
                       "--json", str(out)]) == 0
    figures = json.loads(out.read_text())["figures"]
    assert {"eval.images_per_s", "eval.fp32_top1", "train_step.fastest_images_per_s",
            "train_step.fp32_images_per_s", "ratios.eval_vs_fp32"} <= set(figures)
    assert figures["eval.images"]["value"] == 500 and figures["eval.images_per_s"]["unit"] == "images/s"
    assert not any(key.startswith(("cell.", "ratios.cell", "ratios.ray")) for key in figures)
    assert "ratios.eval_vs_fp32" in capsys.readouterr().out


def test_select_keeps_registry_order_and_rejects_unknown():
    assert bench.select(None) == [name for name in BENCHMARKS if name != "peer"]  # the peer needs its own venv
    assert bench.select(None, peer_python="/venv/bin/python") == list(BENCHMARKS)
    assert bench.select(["cell", "pipeline"]) == ["pipeline", "cell"]
    with pytest.raises(ConfigError, match="unknown benchmark"):
        bench.select(["nope"])


def test_peer_without_its_python_names_how_to_install_it(ctx):
    with pytest.raises(RuntimeError, match=r"pip install ddranking==0\.2\.0.*--peer-python"):
        bench.bench_peer(ctx)


def test_only_runs_the_selected_benchmarks(monkeypatch, tmp_path, capsys):
    """`--only` through the real parser: pipeline and cell are replaced so that no Ray starts."""
    ran = []

    def fake(name):
        def run(ctx):
            ran.append((name, ctx.quick))
            return {"rate": Figure(1.5, "images/s")}
        return run

    monkeypatch.setattr(runner, "BENCHMARKS", {name: fake(name) for name in BENCHMARKS})
    out = tmp_path / "r.json"
    assert bench.main(["--only", "cell", "pipeline", "--quick", "--output-dir", str(tmp_path),
                       "--json", str(out)]) == 0
    assert ran == [("pipeline", True), ("cell", True)]
    report = json.loads(out.read_text())
    assert list(report["results"]) == ["pipeline", "cell"]
    assert report["results"]["cell"]["figures"]["rate"] == {"value": 1.5, "unit": "images/s"}
    assert "cell" in capsys.readouterr().out


def test_unknown_only_name_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--only", "nope", "--output-dir", str(tmp_path)])


def test_failing_benchmark_is_reported_and_others_still_run(monkeypatch, tmp_path):
    def broken(ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(runner, "BENCHMARKS", {"broken": broken, "ok": lambda ctx: {"x": Figure(2.0, "s")}})
    out = tmp_path / "r.json"
    assert bench.main(["--output-dir", str(tmp_path), "--json", str(out)]) == 1
    results = json.loads(out.read_text())["results"]
    assert "boom" in results["broken"]["error"] and results["ok"]["figures"]["x"]["value"] == 2.0


def test_cli_verb_writes_json_with_machine_facts(tmp_path, capsys):
    """The verb as the CLI wires it (add_bench_parser), default JSON path under <output-dir>/bench."""
    parser = argparse.ArgumentParser()
    bench.add_bench_parser(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(["bench", "--only", "augment", "--quick", "--output-dir", str(tmp_path)])
    assert args.func is bench.cmd_bench is runner.cmd_bench
    assert args.func(args) == 0
    written = list((tmp_path / "bench").glob("bench-*.json"))
    assert len(written) == 1
    report = json.loads(written[0].read_text())
    assert report["quick"] is True and list(report["results"]) == ["augment"]
    machine = report["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch"] and machine["device"]
    figures = report["results"]["augment"]["figures"]
    assert figures["images"]["value"] == 6_000 and figures["images_per_s"]["value"] > 0
    table = capsys.readouterr().out
    assert "images_per_s" in table and "images/s" in table
