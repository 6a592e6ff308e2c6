"""`report --html`: one self-contained results page (``report.html``) a researcher can share.

The page holds the results tables (mean ± std over seeds per method and IPC, sortable by a click on
a column header), accuracy against IPC, accuracy against storage (bytes of images plus soft labels),
the image grids of the sets, and the commit and date it was built from. Every figure is embedded as
a ``data:`` URI and the sorting script is inline, so the file opens anywhere, offline.
"""

from __future__ import annotations

import base64
import html
import subprocess
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import pandas as pd

from orchestrator.report.runs import DASH, METRIC_LABELS, METRIC_UNITS, iter_groups
from orchestrator.report.tables import full_reference_line, paper_table, paper_table_numeric

SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach((th, column) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0];
  const down = th.dataset.dir !== "down";
  th.closest("tr").querySelectorAll("th").forEach(h => delete h.dataset.dir);
  th.dataset.dir = down ? "down" : "up";
  const key = row => { const cell = row.cells[column]; const v = cell.dataset.value;
                       return v === undefined || v === "" ? cell.textContent : parseFloat(v); };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
      const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return down ? -order : order; }).forEach(row => body.appendChild(row));
}));
window.addEventListener("load", () => {
  const broken = [...document.images].filter(img => !img.complete || img.naturalWidth === 0).length;
  document.body.dataset.brokenImages = String(broken);
});
"""
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }
th { background: #f2f2f2; cursor: pointer; user-select: none; }
th[data-dir=down]::after { content: " ▼"; } th[data-dir=up]::after { content: " ▲"; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; } .meta { color: #666; }
"""


def commit_of(directory: Path) -> str:
    """The git commit checked out at `directory` (the code that builds the page), or "unknown"."""
    try:
        done = subprocess.run(["git", "-C", str(directory), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode("ascii")


def results_table(sub: pd.DataFrame, metric: str) -> str:
    """One group's table: a row per method, a column per IPC; each cell sorts by its mean."""
    shown = paper_table(sub, metric=metric)
    if shown.empty:
        return "<p>(no cells with an IPC)</p>"
    numbers = paper_table_numeric(sub, metric=metric)
    means = {(r.method, int(r.ipc)): r.mean for r in numbers.itertuples() if pd.notna(r.ipc)}
    header = "".join(f"<th>IPC {html.escape(str(c))}</th>" for c in shown.columns)
    rows = []
    for method, values in shown.iterrows():
        cells = []
        for ipc, text in values.items():
            mean = means.get((method, int(ipc)))
            value = "" if mean is None or pd.isna(mean) else f"{mean:.4f}"
            cells.append(f'<td data-value="{value}">{cell_text(text)}</td>')
        rows.append(f'<tr data-method="{html.escape(str(method))}">'
                    f'<td>{html.escape(str(method))}</td>{"".join(cells)}</tr>')
    return (f'<table class="sortable"><thead><tr><th>method</th>{header}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def cell_text(text) -> str:
    """A paper-table cell as HTML: the best of a column (markdown **bold**) in <strong>."""
    text = str(text) if pd.notna(text) else DASH
    if text.startswith("**") and text.endswith("**"):
        return f"<strong>{html.escape(text[2:-2])}</strong>"
    return html.escape(text)


def render_html(df: pd.DataFrame, *, title: str, metric: str, figures: Mapping[str, Path],
                grids: Mapping[str, Path], commit: str, when: str | None = None) -> str:
    """The page: tables per (protocol, label mode, student), the figures, the set grids, provenance."""
    label = f"{METRIC_LABELS.get(metric, metric)} ({METRIC_UNITS.get(metric, '?')})"
    when = when or datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="meta">{len(df)} finished cell runs · {html.escape(label)}, mean ± std over seeds · '
             f'built {html.escape(when)} from commit <code>{html.escape(commit)}</code> · '
             f'click a column header to sort</p>']
    for (protocol, label_mode, model), sub in iter_groups(df):
        parts += [f"<h2>{html.escape(protocol)} · {html.escape(label_mode)} labels · {html.escape(model)}</h2>",
                  results_table(sub, metric)]
        full_line = full_reference_line(sub, metric)
        if full_line:
            parts.append(f'<p data-method="full">{html.escape(full_line.replace("`", ""))}</p>')
    for caption, png in figures.items():
        parts += [f"<h2>{html.escape(caption)}</h2>", f'<img alt="{html.escape(caption)}" src="{data_uri(png)}">']
    if grids:
        parts.append("<h2>The sets</h2>")
        parts += [f'<img alt="{html.escape(name)}" src="{data_uri(png)}">' for name, png in grids.items()]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(parts)}<script>{SORT_SCRIPT}</script></body></html>\n")


def write_html(df: pd.DataFrame, out_dir: Path, *, title: str, metric: str, paths: Mapping[str, Path],
               commit: str) -> Path:
    """``report.html`` in `out_dir`, from the report's own figures (`paths`: file name -> PNG)."""
    from orchestrator.report.plots import plot_top1_vs_storage

    storage_png = plot_top1_vs_storage(df, Path(out_dir) / "top1_vs_storage.png", metric=metric)
    figures = {"Accuracy vs IPC": paths["top1_vs_ipc.png"], "Accuracy vs storage": storage_png}
    grids = {name: path for name, path in paths.items() if name.startswith("sets_ipc")}
    page = Path(out_dir) / "report.html"
    page.write_text(render_html(df, title=title, metric=metric, figures=figures, grids=grids, commit=commit),
                    encoding="utf-8")
    return page
