"""`orchestrator bench`: structure of the figures and the CLI plumbing; never timing thresholds.

Only the cheap benchmarks run here (quick sizes); `pipeline` and `cell` need a Ray cluster and
minutes on a 2-core machine, so for them the tests check registration and `--only` selection.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest

from orchestrator import bench
from orchestrator.bench import BENCHMARKS, BenchContext, Figure
from orchestrator.errors import ConfigError


def assert_figures(figures: dict, required: set[str]) -> None:
    assert required <= set(figures), sorted(set(required) - set(figures))
    for name, figure in figures.items():
        assert isinstance(figure, Figure), name
        assert isinstance(figure.unit, str) and figure.unit, name
        assert math.isfinite(figure.value) and figure.value > 0, (name, figure.value)


@pytest.fixture
def ctx(tmp_path) -> BenchContext:
    return BenchContext(quick=True, output_dir=tmp_path)


def test_registry_names_every_benchmark():
    assert list(BENCHMARKS) == ["augment", "pipeline", "train_step", "dynamics_memory", "cell"]
    assert all(callable(fn) for fn in BENCHMARKS.values())


def test_augment_quick_figures(ctx):
    figures = bench.bench_augment(ctx, images=512)
    assert_figures(figures, {"images", "seconds", "images_per_s", "us_per_image", "rng_share"})
    assert figures["images"].value == 512 and figures["images_per_s"].unit == "images/s"


def test_train_step_one_model(ctx):
    figures = bench.bench_train_step(ctx, models=("convnet3_w32",), threads=(1,), batch=16, min_seconds=0.0)
    assert_figures(figures, {"convnet3_w32_t1_images_per_s", "convnet3_w32_t1_ms_per_step",
                             "convnet3_w32_params"})
    assert not any(key.startswith("resnet18_small") for key in figures)


def test_train_step_restores_torch_threads(ctx):
    import torch

    before = torch.get_num_threads()
    bench.bench_train_step(ctx, models=("convnet3_w32",), threads=(1,), batch=4, min_seconds=0.0)
    assert torch.get_num_threads() == before


def test_dynamics_memory_small(ctx):
    figures = bench.bench_dynamics_memory(ctx, samples=1_000, epoch_counts=(1, 3), batch=100)
    assert_figures(figures, {"samples", "peak_traced_E1", "peak_traced_E3", "write_rows_per_s_E1",
                             "peak_ratio_maxE_over_minE", "disk_bytes_per_epoch",
                             "disk_bytes_per_sample_epoch"})
    assert figures["samples"].value == 1_000 and figures["peak_traced_E3"].unit == "MiB"


def test_select_keeps_registry_order_and_rejects_unknown():
    assert bench.select(None) == list(BENCHMARKS)
    assert bench.select(["cell", "pipeline"]) == ["pipeline", "cell"]
    with pytest.raises(ConfigError, match="unknown benchmark"):
        bench.select(["nope"])


def test_only_runs_the_selected_benchmarks(monkeypatch, tmp_path, capsys):
    """`--only` through the real parser: pipeline and cell are replaced so that no Ray starts."""
    ran = []

    def fake(name):
        def run(ctx):
            ran.append((name, ctx.quick))
            return {"rate": Figure(1.5, "images/s")}
        return run

    monkeypatch.setattr(bench, "BENCHMARKS", {name: fake(name) for name in BENCHMARKS})
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

    monkeypatch.setattr(bench, "BENCHMARKS", {"broken": broken, "ok": lambda ctx: {"x": Figure(2.0, "s")}})
    out = tmp_path / "r.json"
    assert bench.main(["--output-dir", str(tmp_path), "--json", str(out)]) == 1
    results = json.loads(out.read_text())["results"]
    assert "boom" in results["broken"]["error"] and results["ok"]["figures"]["x"]["value"] == 2.0


def test_cli_verb_writes_json_with_machine_facts(tmp_path, capsys):
    """The verb as the CLI wires it (add_bench_parser), default JSON path under <output-dir>/bench."""
    parser = argparse.ArgumentParser()
    bench.add_bench_parser(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(["bench", "--only", "augment", "--quick", "--output-dir", str(tmp_path)])
    assert args.func is bench.cmd_bench
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
