"""The report on disk and in MLflow: ``report.md`` (tables via ``DataFrame.to_markdown``), CSVs and
the PNG (:func:`write_report`), the same text for a terminal (:func:`render_terminal`), the files
logged back to MLflow (:func:`log_report`), and :func:`run_report`, which chains them for the CLI.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from orchestrator.errors import OrchestratorError
from orchestrator.report.ddranking import label_robust
from orchestrator.report.plots import plot_top1_vs_ipc
from orchestrator.report.previews import write_set_grids
from orchestrator.report.runs import DASH, METRIC_LABELS, METRIC_UNITS, check_artifact_keys, check_metric, \
    client, get_experiment, iter_groups, load_cell_runs
from orchestrator.report.tables import PM, full_reference_line, paper_table, paper_table_numeric, storage_table

STORAGE_HEADERS = {"image_bytes": "images", "soft_label_bytes": "soft labels", "total_bytes": "total",
                   "train_s": "train time (mean)", "images_per_s": "images/s", "optimizer_steps": "optimizer steps",
                   "generation_s": "generation time (mean)", "generation_images": "generated images"}
DDRANKING_NOTE = (
    "IOR = Acc(method) − Acc(random), same protocol, labels, model and IPC; "
    "HLR = Acc(full, hard) − Acc(method, hard); "
    "LRS = 100·(e^α − e^−1)/(e − e^−1), α = ½·IOR − ½·HLR (as fractions). "
    "Definitions from DD-Ranking (arXiv:2505.13300, https://github.com/NUS-HPC-AI-Lab/DD-Ranking), "
    "computed here on mean accuracies over seeds.")


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table of already formatted values (``|`` escaped, no number parsing)."""
    cells = frame.astype(object).where(frame.notna(), DASH).astype(str)
    cells = cells.replace({r"\|": r"\\|", "\n": " "}, regex=True)
    return cells.to_markdown(index=False, disable_numparse=True)


def _num(v, decimals: int = 1, signed: bool = False) -> str:
    if pd.isna(v):
        return DASH
    return f"{float(v):+.{decimals}f}" if signed else f"{float(v):.{decimals}f}"


def _label_robust_display(lr: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "protocol": lr["protocol"], "labels": lr["label_mode"], "model": lr["model"],
        "method": lr["method"], "IPC": lr["ipc"].astype(int).astype(str),
        "acc": lr["acc"].map(_num), "random": lr["random_acc"].map(_num),
        "IOR ↑": lr["IOR"].map(lambda v: _num(v, signed=True)),
        "hard acc": lr["method_hard_acc"].map(_num), "full hard": lr["full_hard_acc"].map(_num),
        "HLR ↓": lr["HLR"].map(lambda v: _num(v, signed=True)), "LRS ↑": lr["LRS"].map(lambda v: _num(v, 2)),
    })


def _storage_display(sub: pd.DataFrame) -> pd.DataFrame:
    st = storage_table(sub).drop(columns=["protocol", "label_mode", "model"])
    st["ipc"] = st["ipc"].map(lambda v: "all" if pd.isna(v) else str(int(v))).astype(object)
    return st.rename(columns=STORAGE_HEADERS)


def _group_section(key: tuple[str, str, str], sub: pd.DataFrame, metric: str) -> list[str]:
    protocol, label_mode, model = key
    parts = [f"## {protocol} · {label_mode} labels · {model}", ""]
    table = paper_table(sub, metric=metric)
    if table.empty:
        parts += ["(no cells with an IPC)", ""]
    else:
        table = table.rename(columns=lambda c: f"IPC {c}").reset_index()
        parts += [f"### {METRIC_LABELS.get(metric, metric)}", "", markdown_table(table), ""]
    full_line = full_reference_line(sub, metric)
    if full_line:
        parts += [full_line, ""]
    return parts + ["### Storage and training time", "", markdown_table(_storage_display(sub)), ""]


def page_block(df: pd.DataFrame, *, metric: str, origin: str, storage: bool = False) -> str:
    """The compact tables (`report --into` writes them into a results page, `report --summary` prints
    them): one top-1 table per (protocol, label mode, student), headed by how many finished cells they
    rest on and `origin` (what made them); with `storage`, each followed by the group's storage,
    training-time and generation-cost table."""
    label = METRIC_LABELS.get(metric, metric)
    parts = [f"_From {len(df)} finished cell run(s) in MLflow, {origin}: {label} "
             f"({METRIC_UNITS.get(metric, '?')}), mean {PM} std over seeds._", ""]
    if not df.empty:
        parts += [provenance_line(df), ""]
    for (protocol, label_mode, model), sub in iter_groups(df):
        table = paper_table(sub, metric=metric)
        if table.empty:
            continue
        table = table.rename(columns=lambda c: f"IPC {c}").reset_index()
        parts += [f"**{protocol} · {label_mode} labels · {model}**", "", markdown_table(table), ""]
        full_line = full_reference_line(sub, metric)
        if full_line:
            parts += [full_line, ""]
        if storage:
            parts += ["Storage, training time and generation cost:", "", markdown_table(_storage_display(sub)), ""]
    return "\n".join(parts).rstrip() + "\n"


def provenance_line(df: pd.DataFrame) -> str:
    """When the cells ran, at which commits and on which devices, each with its count of cells (from the
    runs' times and their `code.commit` / `resolved.device` tags; runs from before those tags count as
    "not recorded")."""
    first, last = df["start_time"].min(), df["end_time"].max()
    when = f"{first:%Y-%m-%d %H:%M} – {last:%Y-%m-%d %H:%M} UTC" if pd.notna(first) and pd.notna(last) else "?"
    return f"_Ran {when}; code: {_counted(df['commit'])}; devices: {_counted(df['device'])}._"


def _counted(values: pd.Series) -> str:
    """"a (3), b (1), not recorded (2)": each value with its count, most cells first."""
    counts = values.fillna("not recorded").value_counts(sort=False)
    ordered = sorted(counts.items(), key=lambda item: (item[0] == "not recorded", -item[1], str(item[0])))
    return ", ".join(f"{value} ({count})" for value, count in ordered)


def fill_page_block(page: Path, name: str, block: str) -> None:
    """Replace what stands between `<!-- name -->` and `<!-- /name -->` in `page` by `block`."""
    text = Path(page).read_text(encoding="utf-8")
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if start not in text or end not in text or text.index(start) > text.index(end):
        raise OrchestratorError(f"{page} has no block for {name!r}: add the lines `{start}` and `{end}` where "
                                f"its section goes, then run the report again")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    Path(page).write_text(f"{head}{start}\n{block}{end}{tail}", encoding="utf-8")


def _set_grids_section(grids: Iterable[str]) -> list[str]:
    grids = list(grids)
    if not grids:
        return []
    parts = ["## The sets", "", "The first images of each class in each method's set (lowest seed; one row per "
             "class). PCA and RDED store several source images per stored image; distilled sets are synthetic.", ""]
    return parts + [f"![sets]({name})" for name in grids] + [""]


def render_markdown(df: pd.DataFrame, *, title: str, metric: str, image: str | None = None,
                    set_grids: Iterable[str] = ()) -> str:
    label = METRIC_LABELS.get(metric, metric)
    parts = [f"# {title}", ""]
    if df.empty:
        return "\n".join(parts + ["No FINISHED `role=cell` runs.", ""])
    parts += [f"{len(df)} finished cell run(s). Tables show {label} in {METRIC_UNITS.get(metric, '?')}, "
              f"mean {PM} sample std (ddof=1) over seeds; a single seed shows the mean and `(n=1)`. "
              "**Bold**: best mean of the IPC column.", ""]
    for key, sub in iter_groups(df):
        parts += _group_section(key, sub, metric)
    lr = label_robust(df, metric=metric)
    parts += ["## Label robustness (DD-Ranking)", ""]
    if lr.empty:
        parts += ["Not available: it scores methods other than `random` and `full`, and needs `random` cells "
                  "beside them (IOR) or their hard-label cells plus a `full` hard-label run (HLR).", ""]
    else:
        parts += [DDRANKING_NOTE, "", markdown_table(_label_robust_display(lr)), ""]
    if image:
        parts += ["## Accuracy vs IPC", "", f"![{label} vs IPC]({image})", ""]
    return "\n".join(parts + _set_grids_section(set_grids))


def render_terminal(df: pd.DataFrame, *, metric: str = "top1_final", title: str = "Benchmark report") -> str:
    """The report's markdown tables as plain text, for printing."""
    return render_markdown(df, title=title, metric=metric)


def _group_slug(key: tuple[str, str, str]) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(key)).strip("-") or "group"


def write_report(df: pd.DataFrame, out_dir: Path, *, metric: str = "top1_final",
                 title: str = "Benchmark report", set_grids: Mapping[str, Path] | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``table_<group>.csv`` per group, ``top1_vs_ipc.png`` (and
    ``label_robust.csv`` / ``storage.csv`` when they have rows) into ``out_dir``; ``set_grids``
    (``{file name: PNG already in out_dir}``) are shown in a section of their own.

    Returns ``{file name: path}``. Each ``table_<group>.csv`` is :func:`paper_table_numeric` (long
    format: method, ipc, mean, std, n, best), ``<group>`` being ``protocol_labelmode_model``.
    """
    check_metric(df, metric)
    check_artifact_keys(df)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot_top1_vs_ipc(df, out_dir / "top1_vs_ipc.png", metric=metric)
    tables = {f"table_{_group_slug(key)}.csv": paper_table_numeric(sub, metric=metric)
              for key, sub in iter_groups(df)}
    tables["label_robust.csv"] = label_robust(df, metric=metric)
    tables["storage.csv"] = storage_table(df, human=False)
    paths: dict[str, Path] = {}
    for name, table in tables.items():
        if name.startswith("table_") or not table.empty:
            table.to_csv(out_dir / name, index=False)
            paths[name] = out_dir / name
    markdown = render_markdown(df, title=title, metric=metric, image=png.name, set_grids=set_grids or {})
    (out_dir / "report.md").write_text(markdown, encoding="utf-8")
    paths["report.md"] = out_dir / "report.md"
    paths[png.name] = png
    return {**paths, **(set_grids or {})}


def _attach_run(mlflow_client, exp, parent_run_id: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow_client.get_run(parent_run_id)
    except MlflowException as e:
        raise OrchestratorError(f"run {parent_run_id!r} not found at {mlflow_client.tracking_uri}: cannot "
                                "attach the report to it") from e
    if run.info.experiment_id != exp.experiment_id:
        raise OrchestratorError(f"run {parent_run_id!r} belongs to experiment id {run.info.experiment_id}, "
                                f"not {exp.name!r} (id {exp.experiment_id})")
    return parent_run_id


def log_report(tracking_uri: str, experiment: str, paths: Mapping[str, Path] | Iterable[Path],
               parent_run_id: str | None = None) -> str:
    """Log the report files as artifacts under ``report/``; returns the run id used.

    With ``parent_run_id`` the files go to that run (which must exist); otherwise a new run named
    ``report`` tagged ``role=report`` is created in ``experiment`` and marked FINISHED.
    """
    files = list(paths.values()) if isinstance(paths, Mapping) else list(paths)
    missing = [str(p) for p in files if not Path(p).is_file()]
    if missing:
        raise OrchestratorError(f"report files not found: {', '.join(missing)}")
    mlflow_client = client(tracking_uri)
    exp = get_experiment(mlflow_client, experiment)
    if parent_run_id:
        run_id = _attach_run(mlflow_client, exp, parent_run_id)
    else:
        run_id = mlflow_client.create_run(exp.experiment_id, run_name="report", tags={"role": "report"}).info.run_id
    try:
        for p in files:
            mlflow_client.log_artifact(run_id, str(p), artifact_path="report")
            if Path(p).suffix == ".csv":  # also as an MLflow table: comparable in the UI's artifact view
                mlflow_client.log_table(run_id, data=pd.read_csv(p), artifact_file=f"report/{Path(p).stem}.json")
    except Exception:
        if not parent_run_id:
            mlflow_client.set_terminated(run_id, status="FAILED")
        raise
    if not parent_run_id:
        mlflow_client.set_terminated(run_id, status="FINISHED")
    return run_id


def run_report(tracking_uri: str, experiment: str, out_dir: Path, log: bool = True, *,
               parent_run_id: str | None = None, metric: str = "top1_final", html: bool = False) -> dict[str, Path]:
    """Load the experiment's finished cells, write the report into ``out_dir`` (with ``html``, also the
    self-contained ``report.html``: :mod:`.html`), optionally log it.

    Raises :class:`OrchestratorError` when the experiment is unknown or has no finished cell runs.
    """
    df = load_cell_runs(tracking_uri, experiment)
    if df.empty:
        raise OrchestratorError(f"experiment {experiment!r} has no FINISHED runs tagged role=cell yet: "
                                "nothing to report")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = write_report(df, out_dir, metric=metric, title=f"Benchmark report: {experiment}",
                         set_grids=write_set_grids(tracking_uri, df, out_dir))
    if html:
        from orchestrator.report.html import commit_of, write_html

        paths["report.html"] = write_html(df, out_dir, title=f"Benchmark report: {experiment}", metric=metric,
                                          paths=paths, commit=commit_of(Path(__file__).parent))
    if log:
        log_report(tracking_uri, experiment, paths, parent_run_id)
    return paths
