"""Metric names live in trainers/metric_names.py: what a cell writes is what the report reads."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

from mlflow import MlflowClient

from orchestrator.cell import run_cell
from orchestrator.report.runs import METRIC_KEYS, load_cell_runs
from orchestrator.tracking import tracking_uri
from trainers import metric_names

REPO = Path(__file__).resolve().parents[1]
METRIC_LIKE = re.compile(r"^(train|val|time|throughput|storage|data|distill)/[a-z0-9_]+$")
WRITERS_AND_READERS = ("orchestrator/cell.py", "trainers/loop.py", "orchestrator/report/runs.py",
                       "orchestrator/distill_job.py", "orchestrator/sweep_config.py")


def test_no_module_that_writes_or_reads_metrics_spells_a_name_itself():
    spelt = {path: sorted(node.value for node in ast.walk(ast.parse((REPO / path).read_text()))
                          if isinstance(node, ast.Constant) and isinstance(node.value, str)
                          and METRIC_LIKE.match(node.value))
             for path in WRITERS_AND_READERS}
    assert {path: names for path, names in spelt.items() if names} == {}


def test_the_report_reads_every_metric_a_cell_writes(tiny_config):
    """A real in-process cell: each key it logged is a name of the module, and each report column
    it has a value for comes back filled (a drifted key on either side would leave it empty)."""
    config = tiny_config(**{"train.workers": 0, "schedule.epochs": 1})
    result = run_cell(config)
    written = set(MlflowClient(tracking_uri(config)).get_run(result.run_id).data.metrics)
    assert written == set(metric_names.EPOCH_METRICS + metric_names.FINAL_METRICS)
    read = set(METRIC_KEYS.values())
    assert read <= set(metric_names.ALL_METRICS)
    assert read - written == set(metric_names.GENERATION_METRICS)  # a random set has no generation cost
    (row,) = load_cell_runs(tracking_uri(config), config.experiment_name).to_dict("records")
    filled = {METRIC_KEYS[column] for column in METRIC_KEYS if not math.isnan(row[column])}
    assert filled == read & written
