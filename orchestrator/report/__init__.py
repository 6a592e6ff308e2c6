"""Reports over the benchmark's MLflow runs: paper tables, storage/time, label robustness, plots.

Every benchmark cell is one MLflow run (tag ``role=cell``). The package reads the FINISHED cell runs
of one experiment with ``mlflow.search_runs`` into a flat :class:`pandas.DataFrame` and turns it into
tables, figures and files. One module per concern:

- :mod:`.runs` — loading (:func:`load_cell_runs`), column names, the metric -> unit table
  (:data:`METRIC_UNITS`: values are reported in the unit they were logged in, never rescaled),
  grouping and the refusal to average seeds that used different teachers (:func:`check_artifact_keys`);
- :mod:`.tables` — the paper table (mean ± std over seeds, ddof=1) and the storage/time table;
- :mod:`.ddranking` — DD-Ranking's IOR, HLR and LRS;
- :mod:`.plots` — accuracy vs IPC, and a grid of images per class per method (:func:`image_grid`);
- :mod:`.output` — ``report.md`` (``DataFrame.to_markdown``), CSV/PNG files, logging to MLflow and
  :func:`run_report` for the CLI.

Only explicit tracking URIs are used; ``mlflow.search_runs`` is pointed at one for the call and the
global URI is put back afterwards.
"""

from orchestrator.report.ddranking import label_robust, lrs_from, protocol_family
from orchestrator.report.output import log_report, render_terminal, run_report, write_report
from orchestrator.report.plots import image_grid, plot_top1_vs_ipc
from orchestrator.report.runs import CELL_COLUMNS, METRIC_KEYS, METRIC_UNITS, check_artifact_keys, iter_groups, \
    load_cell_runs, method_order
from orchestrator.report.tables import human_bytes, human_seconds, paper_table, paper_table_numeric, storage_table

__all__ = [
    "CELL_COLUMNS", "METRIC_KEYS", "METRIC_UNITS", "load_cell_runs", "iter_groups", "method_order",
    "check_artifact_keys", "paper_table", "paper_table_numeric", "label_robust", "lrs_from", "protocol_family",
    "storage_table", "plot_top1_vs_ipc", "image_grid", "render_terminal", "write_report", "log_report",
    "run_report", "human_bytes", "human_seconds",
]
