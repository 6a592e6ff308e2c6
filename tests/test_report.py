"""orchestrator.report against a real MLflow SQLite store (no mocks, no Ray)."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from PIL import Image

from orchestrator import report
from orchestrator.errors import OrchestratorError

EXP = "bench-test"
MODEL = "convnet3"

# known top-1 accuracies (percent), one value per seed
ACC = {
    ("fmnist-hard", "hard", "random", 10): [60.0, 62.0, 61.0],
    ("fmnist-hard", "hard", "random", 50): [75.0, 76.5, 74.0],
    ("fmnist-hard", "hard", "el2n", 10): [63.1, 64.2, 62.9],
    ("fmnist-hard", "hard", "el2n", 50): [74.0, 73.2, 74.9],
    ("fmnist-hard", "hard", "pca", 10): [66.6],  # single seed
    ("fmnist-soft", "soft", "random", 10): [70.2, 71.0, 69.9],
    ("fmnist-soft", "soft", "random", 50): [80.1, 80.5, 79.8],
    ("fmnist-soft", "soft", "el2n", 10): [71.5, 72.0, 70.8],
    ("fmnist-soft", "soft", "el2n", 50): [80.0, 81.2, 80.4],
}
FULL_HARD = [91.0, 91.4, 90.9]  # method "full", logged without an ipc param
TRAIN_S = {10: 30.0, 50: 150.0}
IMAGE_BYTES = {10: 100 * 1024, 50: 500 * 1024}
SOFT_BYTES = {10: 4 * 1024**2, 50: 20 * 1024**2}


def _log_cell(client, exp_id, *, protocol, label_mode, method, ipc, seed, top1, parent=None,
              status="FINISHED", role="cell", end_time=None, epochs=0, fraction=False, tags=None):
    tags = {"role": role, "protocol": protocol, "fingerprint": f"fp-{method}-{ipc}-{seed}", **(tags or {})}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp_id, tags=tags, run_name=f"{method}-ipc{ipc}-s{seed}")
    rid = run.info.run_id
    params = {"method": method, "label_mode": label_mode, "model": MODEL, "seed": str(seed),
              "optimizer.lr": "0.001", "epochs": "300"}
    if ipc is not None:
        params["ipc"] = str(ipc)
    ts = int(time.time() * 1000)
    soft = SOFT_BYTES.get(ipc, 0) if label_mode == "soft" else 0
    metrics = {
        "val/top1_final": top1, "val/top1_best": top1 + 0.5,
        "val/top5_final": min(100.0, top1 + 20), "val/top5_best": min(100.0, top1 + 21),
        "time/train_s": TRAIN_S.get(ipc, 3600.0), "throughput/images_per_s": 1000.0,
        "storage/image_bytes": IMAGE_BYTES.get(ipc, 30 * 1024**2),
        "storage/soft_label_bytes": soft,
        "train/optimizer_steps": 300 * (4 if method == "pca" else 1) * (ipc or 600),  # PCA: a view per tile
    }
    if fraction:  # accuracies logged in [0, 1] instead of percent
        metrics = {k: v / 100 if k.startswith("val/") else v for k, v in metrics.items()}
    ms = [Metric(k, float(v), ts, 0) for k, v in metrics.items()]
    for epoch in range(epochs):  # per-epoch curves, as the training loop logs them
        ms += [Metric("train/loss", 2.0 / (epoch + 1), ts, epoch),
               Metric("train/lr", 1e-3, ts, epoch), Metric("val/top1", top1 - 5 + epoch, ts, epoch)]
    client.log_batch(rid, metrics=ms, params=[Param(k, v) for k, v in params.items()],
                     tags=[RunTag("mlflow.runName", run.info.run_name)])
    if status != "RUNNING":
        client.set_terminated(rid, status=status, end_time=end_time)
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{(root / 'mlflow.db').resolve()}"  # absolute path -> 4 slashes
    assert uri.startswith("sqlite:////")
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(EXP, artifact_location=(root / "artifacts").as_uri())
    client.create_experiment("other-exp", artifact_location=(root / "artifacts2").as_uri())

    sweep = client.create_run(exp_id, tags={"role": "sweep"}, run_name="sweep").info.run_id
    cell_ids = []
    old = int(time.time() * 1000) - 3_600_000
    # a stale earlier run of one cell (same protocol/labels/model/method/ipc/seed): superseded
    stale = _log_cell(client, exp_id, protocol="fmnist-hard", label_mode="hard", method="el2n",
                      ipc=50, seed=0, top1=10.0, parent=sweep, end_time=old)
    for (protocol, mode, method, ipc), values in ACC.items():
        for seed, v in enumerate(values):
            cell_ids.append(_log_cell(client, exp_id, protocol=protocol, label_mode=mode,
                                      method=method, ipc=ipc, seed=seed, top1=v, parent=sweep,
                                      epochs=3 if seed == 0 else 0))
    for seed, v in enumerate(FULL_HARD):
        cell_ids.append(_log_cell(client, exp_id, protocol="fmnist-hard", label_mode="hard",
                                  method="full", ipc=None, seed=seed, top1=v))
    # must be ignored: an unfinished cell, a failed cell, a teacher run
    running = _log_cell(client, exp_id, protocol="fmnist-hard", label_mode="hard",
                        method="el2n", ipc=10, seed=7, top1=99.9, status="RUNNING")
    failed = _log_cell(client, exp_id, protocol="fmnist-hard", label_mode="hard",
                       method="random", ipc=10, seed=8, top1=99.9, status="FAILED")
    teacher = _log_cell(client, exp_id, protocol="fmnist-soft", label_mode="soft",
                        method="el2n", ipc=10, seed=0, top1=99.9, role="teacher")
    client.set_terminated(sweep)
    return dict(uri=uri, root=root, client=client, exp_id=exp_id, sweep=sweep,
                cell_ids=cell_ids, ignored={running, failed, teacher, stale})


@pytest.fixture(scope="module")
def df(store):
    return report.load_cell_runs(store["uri"], EXP)


def _group(df, protocol):
    return df[df["protocol"] == protocol]


def _cell(values):
    v = np.asarray(values, dtype=float)
    if v.size == 1:
        return f"{v.mean():.1f} (n=1)"
    return f"{v.mean():.1f} ± {np.std(v, ddof=1):.1f}"


# ------------------------------------------------------------------------------------------ loading


def test_load_keeps_only_finished_cells(store, df):
    assert set(df["run_id"]) == set(store["cell_ids"])
    assert not (set(df["run_id"]) & store["ignored"])
    assert len(df) == sum(len(v) for v in ACC.values()) + len(FULL_HARD)
    assert (df["top1_final"] < 99).all()
    for col in ("method", "ipc", "label_mode", "model", "seed", "protocol", "top1_final",
                "top1_best", "top5_final", "train_s", "images_per_s", "image_bytes",
                "soft_label_bytes", "run_id"):
        assert col in df.columns
    assert str(df["ipc"].dtype) == "Int64" and str(df["seed"].dtype) == "Int64"
    assert df.loc[df["method"] != "full", "ipc"].notna().all()
    assert df.loc[df["method"] == "full", "ipc"].isna().all()
    # the superseded rerun of el2n/hard/ipc50/seed0 lost to the later one
    row = df[(df.method == "el2n") & (df.protocol == "fmnist-hard") & (df.ipc == 50) & (df.seed == 0)]
    assert row["top1_final"].tolist() == [74.0]
    # nested under the sweep parent
    assert (df.loc[df["method"] != "full", "parent_run_id"] == store["sweep"]).all()


def test_unknown_experiment_lists_existing(store):
    with pytest.raises(OrchestratorError) as e:
        report.load_cell_runs(store["uri"], "no-such-exp")
    msg = str(e.value)
    assert "no-such-exp" in msg and EXP in msg and "other-exp" in msg


def test_missing_database_is_an_error_not_a_new_store(tmp_path):
    db = tmp_path / "absent.db"
    with pytest.raises(OrchestratorError, match="no MLflow database"):
        report.load_cell_runs(f"sqlite:///{db}", EXP)
    assert not db.exists()


def test_accuracies_keep_the_unit_they_were_logged_in(store):
    """Top-1/top-5 are logged in percent: a top-1 of 0.5 % stays 0.5 (no guessing it was a fraction)."""
    client = store["client"]
    exp_id = client.create_experiment("low-accuracy", artifact_location=(store["root"] / "a3").as_uri())
    _log_cell(client, exp_id, protocol="fmnist-hard", label_mode="hard", method="random",
              ipc=10, seed=0, top1=50.0, fraction=True)  # top-1 0.5 %, top-5 0.7 %
    got = report.load_cell_runs(store["uri"], "low-accuracy").iloc[0]
    assert got["top1_final"] == pytest.approx(0.5) and got["top5_final"] == pytest.approx(0.7)
    assert report.paper_table(report.load_cell_runs(store["uri"], "low-accuracy")).loc["random", 10] == \
        "**0.5 (n=1)**"
    assert report.METRIC_UNITS["top1_final"] == "%" and report.METRIC_UNITS["train_s"] == "s"


# ------------------------------------------------------------------------------------ paper table


def test_paper_table_mean_std_and_best(df):
    t = report.paper_table(_group(df, "fmnist-hard"))
    assert list(t.index) == ["random", "el2n", "pca"]  # random first; full is not a row
    assert list(t.columns) == [10, 50]
    # ipc 10: pca (single seed) has the best mean; ipc 50: random
    assert t.loc["pca", 10] == f"**{_cell(ACC['fmnist-hard', 'hard', 'pca', 10])}**"
    assert t.loc["pca", 10] == "**66.6 (n=1)**"
    assert t.loc["random", 10] == _cell(ACC["fmnist-hard", "hard", "random", 10]) == "61.0 ± 1.0"
    assert t.loc["el2n", 10] == _cell(ACC["fmnist-hard", "hard", "el2n", 10])
    assert t.loc["random", 50] == f"**{_cell(ACC['fmnist-hard', 'hard', 'random', 50])}**"
    assert t.loc["el2n", 50] == _cell(ACC["fmnist-hard", "hard", "el2n", 50])
    assert t.loc["pca", 50] == "—"
    bold = t.apply(lambda c: c.str.startswith("**")).sum()
    assert bold.tolist() == [1, 1]

    soft = report.paper_table(_group(df, "fmnist-soft"))
    assert soft.loc["el2n", 10].startswith("**") and soft.loc["el2n", 50].startswith("**")
    assert not soft.loc["random", 10].startswith("**")


def test_paper_table_numeric_matches_numpy(df):
    num = report.paper_table_numeric(_group(df, "fmnist-hard"), metric="top1_final")
    for (protocol, mode, method, ipc), values in ACC.items():
        if protocol != "fmnist-hard":
            continue
        r = num[(num.method == method) & (num.ipc == ipc)].iloc[0]
        assert r["mean"] == pytest.approx(np.mean(values))
        assert r["n"] == len(values)
        if len(values) > 1:
            assert r["std"] == pytest.approx(np.std(values, ddof=1))
        else:
            assert math.isnan(r["std"])
    full = num[num.method == "full"].iloc[0]
    assert full["mean"] == pytest.approx(np.mean(FULL_HARD)) and not full["best"]
    assert set(num.loc[num.best, "method"]) == {"pca", "random"}
    best = report.paper_table_numeric(_group(df, "fmnist-hard"), metric="top1_best")
    r = best[(best.method == "el2n") & (best.ipc == 10)].iloc[0]
    assert r["mean"] == pytest.approx(np.mean(ACC["fmnist-hard", "hard", "el2n", 10]) + 0.5)


def test_paper_table_rejects_several_groups(df):
    with pytest.raises(OrchestratorError, match="one \\(protocol, label_mode, model\\) group"):
        report.paper_table(df)
    with pytest.raises(OrchestratorError, match="unknown metric"):
        report.paper_table(_group(df, "fmnist-hard"), metric="nope")


# ---------------------------------------------------------------------------------- label robust


def _lrs(ior, hlr, w=0.5):
    a = w * ior / 100 - (1 - w) * hlr / 100
    return 100 * (math.exp(a) - math.exp(-1)) / (math.exp(1) - math.exp(-1))


def test_label_robust_ior_hlr_lrs(df):
    lr = report.label_robust(df)
    assert not set(lr["method"]) & {"random", "full"}
    m = np.mean
    full = m(FULL_HARD)

    def row(protocol, method, ipc):
        r = lr[(lr.protocol == protocol) & (lr.method == method) & (lr.ipc == ipc)]
        assert len(r) == 1
        return r.iloc[0]

    # soft-label el2n, IPC 10: IOR against soft random, HLR from the hard-label sibling protocol
    r = row("fmnist-soft", "el2n", 10)
    ior = m(ACC["fmnist-soft", "soft", "el2n", 10]) - m(ACC["fmnist-soft", "soft", "random", 10])
    hlr = full - m(ACC["fmnist-hard", "hard", "el2n", 10])
    assert r["IOR"] == pytest.approx(ior)
    assert r["HLR"] == pytest.approx(hlr)
    assert r["LRS"] == pytest.approx(_lrs(ior, hlr))
    # hard-label el2n, IPC 50 (below random: negative IOR)
    r = row("fmnist-hard", "el2n", 50)
    ior = m(ACC["fmnist-hard", "hard", "el2n", 50]) - m(ACC["fmnist-hard", "hard", "random", 50])
    assert ior < 0 and r["IOR"] == pytest.approx(ior)
    assert r["HLR"] == pytest.approx(full - m(ACC["fmnist-hard", "hard", "el2n", 50]))
    # single-seed pca
    r = row("fmnist-hard", "pca", 10)
    assert r["IOR"] == pytest.approx(66.6 - 61.0)
    assert r["HLR"] == pytest.approx(full - 66.6)
    assert r["n"] == 1
    # LRS formula edge values: alpha = -1 -> 0 %, alpha = 1 -> 100 %
    assert report.lrs_from(-100.0, 100.0) == pytest.approx(0.0, abs=1e-12)
    assert report.lrs_from(200.0, 0.0, w=0.5) == pytest.approx(100.0)
    assert math.isnan(report.lrs_from(float("nan"), 3.0))


def test_label_robust_without_full_reports_ior_only(df):
    lr = report.label_robust(df[df.method != "full"])
    assert lr["IOR"].notna().all() and lr["HLR"].isna().all() and lr["LRS"].isna().all()


# ------------------------------------------------------------------------------- storage and plot


def test_storage_table(df):
    st = report.storage_table(_group(df, "fmnist-soft"))
    r = st[(st.method == "el2n") & (st.ipc == 10)].iloc[0]
    assert r["image_bytes"] == "100.0 KiB" and r["soft_label_bytes"] == "4.0 MiB"
    assert r["train_s"] == "30.0 s" and r["n"] == 3
    r = st[(st.method == "random") & (st.ipc == 50)].iloc[0]
    assert r["train_s"] == "2.5 min" and r["soft_label_bytes"] == "20.0 MiB"
    hard = report.storage_table(_group(df, "fmnist-hard"), human=False)
    assert (hard["soft_label_bytes"] == 0).all()
    assert hard.loc[hard.method == "full", "train_s"].iloc[0] == pytest.approx(3600.0)
    # compute-unequal rows are visible: PCA trained 4x the optimizer steps of random at IPC 10
    steps = hard[hard.ipc == 10].set_index("method")["optimizer_steps"]
    assert steps["pca"] == 4 * steps["random"] == 12000
    assert st[(st.method == "el2n") & (st.ipc == 10)].iloc[0]["optimizer_steps"] == "3,000"
    assert report.human_bytes(512) == "512 B" and report.human_seconds(7200) == "2.00 h"


def test_write_report_files(df, tmp_path):
    paths = report.write_report(df, tmp_path / "out", title="Test report")
    names = set(paths)
    assert {"report.md", "top1_vs_ipc.png", "table_fmnist-hard_hard_convnet3.csv",
            "table_fmnist-soft_soft_convnet3.csv"} <= names
    assert all(p.is_file() for p in paths.values())

    png = paths["top1_vs_ipc.png"]
    assert png.stat().st_size > 10_000
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 200

    csv = pd.read_csv(paths["table_fmnist-hard_hard_convnet3.csv"])
    assert list(csv.columns) == ["protocol", "label_mode", "model", "metric", "method", "ipc",
                                 "mean", "std", "n", "best"]
    assert csv["method"].iloc[0] == "random" and csv["method"].iloc[-1] == "full"
    r = csv[(csv.method == "el2n") & (csv.ipc == 50)].iloc[0]
    assert r["mean"] == pytest.approx(np.mean(ACC["fmnist-hard", "hard", "el2n", 50]))
    assert r["std"] == pytest.approx(np.std(ACC["fmnist-hard", "hard", "el2n", 50], ddof=1))
    assert r["n"] == 3 and not r["best"]
    assert csv[(csv.method == "pca")]["best"].tolist() == [True]

    md = paths["report.md"].read_text()
    assert md.startswith("# Test report")
    assert "## fmnist-hard · hard labels · convnet3" in md
    assert "| method | IPC 10 | IPC 50 |" in re.sub(r" +", " ", md)  # to_markdown pads columns
    assert "**66.6 (n=1)**" in md
    assert "Whole training set (`full`)" in md
    assert "Label robustness (DD-Ranking)" in md and "LRS" in md
    assert "![" in md and "top1_vs_ipc.png" in md
    text = report.render_terminal(df)
    assert "61.0 ± 1.0" in text and "Storage and training time" in text


def test_plot_linear_and_log_axes(df, tmp_path):
    # IPC 1..50 spans > 10x: log axis; just check it renders
    wide = pd.concat([df, df[(df.method == "random") & (df.ipc == 10)].assign(ipc=1)])
    p = report.plot_top1_vs_ipc(wide, tmp_path / "wide.png")
    with Image.open(p) as im:
        assert im.format == "PNG"
    empty = report.plot_top1_vs_ipc(df.iloc[0:0], tmp_path / "empty.png")
    assert empty.stat().st_size > 1000


# ---------------------------------------------------------------------------------- MLflow logging


def _artifact_names(client, run_id):
    return {f.path for f in client.list_artifacts(run_id, "report")}


def logged_names(paths) -> set[str]:
    """What log_report puts under report/: every file, and each CSV again as an MLflow table (JSON)."""
    return {f"report/{n}" for n in paths} | {f"report/{Path(n).stem}.json" for n in paths if n.endswith(".csv")}


def test_log_report_to_parent_run(store, df, tmp_path):
    paths = report.write_report(df, tmp_path / "out")
    rid = report.log_report(store["uri"], EXP, paths, parent_run_id=store["sweep"])
    assert rid == store["sweep"]
    names = _artifact_names(store["client"], rid)
    assert logged_names(paths) == names
    assert "report/table_fmnist-hard_hard_convnet3.json" in names  # each CSV table also as an MLflow table


def test_run_report_logs_to_new_report_run(store, tmp_path):
    paths = report.run_report(store["uri"], EXP, tmp_path / "rep", log=True)
    client = store["client"]
    runs = client.search_runs([store["exp_id"]], filter_string="tags.role = 'report'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert _artifact_names(client, runs[0].info.run_id) == logged_names(paths)
    # the report run is not a cell: loading again gives the same cells
    assert len(report.load_cell_runs(store["uri"], EXP)) == sum(map(len, ACC.values())) + 3
    with pytest.raises(OrchestratorError, match="not found"):
        report.log_report(store["uri"], EXP, paths, parent_run_id="0" * 32)
    with pytest.raises(OrchestratorError, match="no FINISHED runs"):
        report.run_report(store["uri"], "other-exp", tmp_path / "x", log=False)


def test_loading_leaves_the_global_tracking_uri_alone(store, tmp_path):
    import mlflow

    elsewhere = f"sqlite:///{(tmp_path / 'elsewhere.db').resolve()}"
    mlflow.set_tracking_uri(elsewhere)
    try:
        assert len(report.load_cell_runs(store["uri"], EXP)) == sum(map(len, ACC.values())) + 3
        assert mlflow.get_tracking_uri() == elsewhere
    finally:
        mlflow.set_tracking_uri(None)


# ------------------------------------------------------------------------ distillation hooks


def test_storage_table_shows_generation_cost_only_when_logged(store, df, tmp_path):
    client = store["client"]
    exp_id = client.create_experiment("distilled", artifact_location=(store["root"] / "a4").as_uri())
    ts = int(time.time() * 1000)
    for seed, seconds in enumerate([100.0, 140.0]):
        rid = _log_cell(client, exp_id, protocol="fmnist-hard", label_mode="hard", method="sre2l",
                        ipc=10, seed=seed, top1=70.0 + seed)
        client.log_batch(rid, metrics=[Metric("distill/generation_s", seconds, ts, 0),
                                       Metric("distill/generation_images", 100.0, ts, 0)])
    distilled = report.load_cell_runs(store["uri"], "distilled")
    st = report.storage_table(distilled, human=False)
    assert st["generation_s"].tolist() == [120.0] and st["generation_images"].tolist() == [100.0]
    assert report.storage_table(distilled).iloc[0]["generation_s"] == "2.0 min"
    assert "generation time (mean)" in report.render_terminal(distilled)
    assert "generation_s" not in report.storage_table(df).columns  # pruning runs log no distill/*


def test_image_grid_of_real_fashion_mnist(tmp_path):
    from orchestrator.data.prepare import FASHION_MNIST_RAW, read_idx
    from orchestrator.report.plots import class_mosaic

    if not FASHION_MNIST_RAW.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    images = read_idx(FASHION_MNIST_RAW / "t10k-images-idx3-ubyte.gz")[:300]  # N x 28 x 28 uint8
    labels = read_idx(FASHION_MNIST_RAW / "t10k-labels-idx1-ubyte.gz")[:300]
    nchw, nhwc = images[:150, None], images[150:, ..., None]
    path = report.image_grid({"random": (nchw, labels[:150]), "herding": (nhwc, labels[150:])}, 3,
                             tmp_path / "grid.png", class_names=[f"class {i}" for i in range(10)])
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 300
    mosaic = class_mosaic(nchw, labels[:150], list(range(10)), per_class=3)
    assert mosaic.shape == (10 * 28, 3 * 28, 1)
    second_bag = int(np.flatnonzero(labels[:150] == 8)[1])  # class 8 (bag), its second image
    assert (mosaic[8 * 28:9 * 28, 28:56, 0] == images[second_bag]).all()
    only_one = class_mosaic(images[:1], labels[:1], [int(labels[0])], per_class=2)
    assert only_one[:, 28:].max() == 0  # a class with fewer images leaves black tiles
    with pytest.raises(OrchestratorError, match="uint8"):
        report.image_grid({"x": (images.astype(np.float32), labels)}, 2, tmp_path / "bad.png")


def test_report_into_fills_only_its_block_of_a_results_page(store, tmp_path, capsys):
    from tests_paths import run_cli

    page = tmp_path / "results.md"
    page.write_text(f"# Results\n\nkept above\n<!-- {EXP} -->\nstale 12.3\n<!-- /{EXP} -->\nkept below\n")
    code, text = run_cli(capsys, "report", "--experiment", EXP, "--tracking-uri", store["uri"], "--no-log",
                         "--out", str(tmp_path / "rep"), "--into", str(page))
    assert code == 0, text
    filled = page.read_text()
    assert filled.startswith("# Results\n\nkept above\n") and filled.endswith(f"<!-- /{EXP} -->\nkept below\n")
    assert "stale 12.3" not in filled and "**fmnist-hard · hard labels · convnet3**" in filled
    assert "61.0 ± 1.0" in filled and "finished cell run(s)" in filled
    bare = tmp_path / "bare.md"
    bare.write_text("# no blocks\n")
    code, text = run_cli(capsys, "report", "--experiment", EXP, "--tracking-uri", store["uri"], "--no-log",
                         "--out", str(tmp_path / "rep"), "--into", str(bare))
    assert code == 2 and f"<!-- {EXP} -->" in text and bare.read_text() == "# no blocks\n"


def test_report_into_with_storage_adds_each_groups_cost_table(store, tmp_path, capsys):
    from tests_paths import run_cli

    page = tmp_path / "results.md"
    page.write_text(f"<!-- {EXP} -->\n<!-- /{EXP} -->\n")
    args = ["report", "--experiment", EXP, "--tracking-uri", store["uri"], "--no-log", "--out", str(tmp_path / "rep")]
    code, text = run_cli(capsys, *args, "--into", str(page))
    assert code == 0, text
    assert "train time (mean)" not in page.read_text()
    code, text = run_cli(capsys, *args, "--into", str(page), "--storage")
    assert code == 0, text
    filled = page.read_text()
    groups = filled.count("labels · convnet3**")
    assert groups >= 2 and filled.count("Storage, training time and generation cost:") == groups
    assert filled.count(" train time (mean) ") == groups and " soft labels " in filled
    code, text = run_cli(capsys, *args, "--storage")
    assert code == 2 and "--into PAGE" in text


def test_page_block_says_when_at_which_commits_and_on_which_devices_its_cells_ran(tmp_path):
    from orchestrator.report.output import page_block
    from orchestrator.report.runs import load_cell_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(EXP)
    avx2 = {"code.commit": "abc1234", "resolved.device": "cpu: AMD EPYC (AVX2, 2 CPUs)"}
    for seed, tags in enumerate([avx2, avx2, {"code.commit": "def5678+modified"}, None]):
        _log_cell(client, exp_id, protocol="fmnist-hard", label_mode="hard", method="random", ipc=10, seed=seed,
                  top1=70.0 + seed, tags=tags)
    block = page_block(load_cell_runs(uri, EXP), metric="top1_final", origin="a test")
    line, = [line for line in block.splitlines() if line.startswith("_Ran ")]
    assert re.fullmatch(r"_Ran \d{4}-\d\d-\d\d \d\d:\d\d – \d{4}-\d\d-\d\d \d\d:\d\d UTC; .*\._", line), line
    assert "code: abc1234 (2), def5678+modified (1), not recorded (1);" in line
    assert line.endswith("devices: cpu: AMD EPYC (AVX2, 2 CPUs) (2), not recorded (2)._")


def test_html_page_in_a_real_browser_lists_every_method_and_loads_every_image(store, df, tmp_path):
    import html as html_lib

    from browser import CHROMIUM, dump_dom
    from orchestrator.report.output import run_report

    assert CHROMIUM, "chromium is missing: scripts/install.sh installs Debian's chromium"
    paths = run_report(store["uri"], EXP, tmp_path / "rep", log=False, html=True)
    page = paths["report.html"]
    text = page.read_text()
    sources = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)  # self-contained
    dom = html_lib.unescape(dump_dom(page.as_uri()))
    assert 'data-broken-images="0"' in dom  # every figure decoded in the browser
    for method in df["method"].unique():
        assert f'data-method="{method}"' in dom, method
    assert "Accuracy vs storage" in dom and "Accuracy vs IPC" in dom and "commit" in dom
    assert "61.0 ± 1.0" in dom


def test_report_summary_prints_only_the_top1_tables(store, tmp_path, capsys):
    from tests_paths import run_cli

    code, text = run_cli(capsys, "report", "--experiment", EXP, "--tracking-uri", store["uri"], "--no-log",
                         "--out", str(tmp_path / "rep"), "--summary")
    assert code == 0 and "**fmnist-hard · hard labels · convnet3**" in text and "61.0 ± 1.0" in text
    assert "Storage and training time" not in text and "Label robustness" not in text
    assert "Storage and training time" in (tmp_path / "rep" / "report.md").read_text()  # the files stay whole
