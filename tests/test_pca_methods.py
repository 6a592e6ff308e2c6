"""Pruning rules and PCA as registered methods, on a small real image folder with real dynamics.

The world: 4 classes x 10 random-noise PNGs (20x20, grey) loaded through load_source, and training
dynamics written by trainers.dynamics.DynamicsWriter (two ranks, two epochs, for each of the
config's score runs, sealed with a manifest) from known logits: sample i has logit a_i on its
label and 0 elsewhere, so a lower a_i means a higher EL2N and a lower AUM (harder).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from orchestrator.config import load_config, replace
from orchestrator.data.select import class_id_array, fingerprint
from orchestrator.errors import ConfigError, DataError
from orchestrator.method_spec import load_train_source, with_index
from orchestrator.methods import METHODS, method_for, needs_dynamics
from orchestrator.teachers import artifact_key, dynamics_dir, dynamics_dirs, dynamics_key
from pca.combine import tile_boxes
from pca.methods import subset_manifest
from pca.pipeline import pca_selection, pca_subset
from pca.pruning import load_scores, prune_selection, scores_cache_path
from pca.scores import compute_scores
from trainers.dynamics import DynamicsWriter, epoch_file, write_manifest

CLASSES = ["c0", "c1", "c2", "c3"]
PER_CLASS = 10
N = len(CLASSES) * PER_CLASS
SIZE = 16  # storage size of the PCA images
LABELS = np.repeat(np.arange(len(CLASSES)), PER_CLASS)  # load order: classes sorted, files sorted
MARGIN = np.random.default_rng(7).permutation(N) * 0.25 - 3.0  # a_i, all distinct


def make_image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            pixels = rng.integers(0, 256, size=(20, 20), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(root / name / f"img_{i:02d}.png")
    return root


def write_dynamics(config, epochs=(0, 1), margin: np.ndarray = MARGIN) -> Path:
    """Every score run: two ranks (even / odd samples), one file per (rank, epoch), then sealed."""
    logits = np.zeros((N, len(CLASSES)), dtype=np.float32)
    logits[np.arange(N), LABELS] = margin
    for run, out in enumerate(dynamics_dirs(config)):
        for rank in (0, 1):
            rows = np.arange(rank, N, 2)
            writer = DynamicsWriter(out, rank)
            for epoch in epochs:
                writer.add(epoch, rows, logits[rows], LABELS[rows])
                writer.end_epoch()
            writer.close()
        write_manifest(out, epochs=len(epochs), num_samples=N, key=artifact_key(config, run))
    return dynamics_dir(config)


def make_config(tmp_path: Path, folder: Path, **overrides):
    base = {"output_dir": str(tmp_path / "out"), "data.train": str(folder), "data.val": str(folder),
            "data.image_size": SIZE, "data.mode": "L", "data.ipc": 2, "data.method": "el2n",
            "data.check_images": False, "teacher.epochs": 2}
    base.update(overrides)
    return load_config(None, base)


@pytest.fixture
def world(tmp_path):
    folder = make_image_folder(tmp_path / "images")
    config = make_config(tmp_path, folder)
    write_dynamics(config)
    dataset = with_index(load_train_source(config).dataset)
    return config, dataset


def picked_keys(subset) -> np.ndarray:
    return np.asarray(subset["index"], dtype=np.int64)


def per_class(keys: np.ndarray) -> dict[int, set[int]]:
    return {c: {int(k) for k in keys if LABELS[k] == c} for c in range(len(CLASSES))}


def extreme_margin(ipc: int, lowest: bool) -> dict[int, set[int]]:
    """Per class, the ipc samples with the lowest (hardest) or highest (easiest) margin."""
    out = {}
    for c in range(len(CLASSES)):
        members = np.flatnonzero(LABELS == c)
        order = members[np.argsort(MARGIN[members])]
        out[c] = set((order[:ipc] if lowest else order[-ipc:]).tolist())
    return out


def test_world_is_what_the_tests_assume(world):
    config, dataset = world
    assert len(dataset) == N
    assert class_id_array(dataset).tolist() == LABELS.tolist()
    assert load_train_source(config).classes == CLASSES


@pytest.mark.parametrize("rule", ["forgetting", "el2n", "aum", "ccs", "pca"])
def test_registered_rules_keep_exactly_ipc_per_class(world, rule):
    config, dataset = world
    config = replace(config, {"data.method": rule, "data.ipc": 2})
    assert METHODS[rule] is method_for(config)
    subset = method_for(config)(config, dataset)
    counts = np.bincount(class_id_array(subset), minlength=len(CLASSES))
    assert counts.tolist() == [2] * len(CLASSES)
    assert subset["index"] is not None and len(set(subset["index"])) == len(subset)
    if rule != "pca":  # pruning keeps the source rows themselves
        for row in subset.select(range(len(subset))):
            assert row["sample_id"] == dataset[row["index"]]["sample_id"]


def test_el2n_keeps_the_hardest_and_reverse_the_easiest(world):
    config, dataset = world
    scores = compute_scores(dynamics_dirs(config), N)
    hard = picked_keys(method_for(config)(config, dataset))
    assert per_class(hard) == extreme_margin(2, lowest=True)
    for c in range(len(CLASSES)):  # the highest EL2N of each class
        members = np.flatnonzero(LABELS == c)
        top = members[np.argsort(-scores["el2n"].to_numpy()[members], kind="stable")[:2]]
        assert per_class(hard)[c] == set(top.tolist())
    assert hard.tolist() == sorted(hard.tolist(), key=lambda k: (LABELS[k], -scores["el2n"][k]))
    easy_config = replace(config, {"prune.reverse": True})
    easy = picked_keys(method_for(easy_config)(easy_config, dataset))
    assert per_class(easy) == extreme_margin(2, lowest=False)


def test_aum_keeps_the_lowest_margin(world):
    config, dataset = world
    config = replace(config, {"data.method": "aum", "data.ipc": 3})
    assert per_class(picked_keys(method_for(config)(config, dataset))) == extreme_margin(3, lowest=True)
    config = replace(config, {"prune.reverse": True})
    assert per_class(picked_keys(method_for(config)(config, dataset))) == extreme_margin(3, lowest=False)


def test_ccs_is_deterministic_per_seed(world):
    config, dataset = world
    config = replace(config, {"data.method": "ccs", "prune.strata": 2, "prune.mis_ratio": 0.2})
    picks = {}
    for seed in range(6):
        seeded = replace(config, {"seed": seed})
        first = picked_keys(method_for(seeded)(seeded, dataset)).tolist()
        assert picked_keys(method_for(seeded)(seeded, dataset)).tolist() == first
        picks[seed] = tuple(first)
    assert len(set(picks.values())) > 1  # the seed matters
    hardest = set(np.argsort(MARGIN)[:8].tolist())  # mis_ratio 0.2 drops the 8 lowest AUMs of the whole set
    assert all(not set(keys) & hardest for keys in picks.values())
    per_class_config = replace(config, {"prune.ccs_scope": "class"})
    keys = picked_keys(method_for(per_class_config)(per_class_config, dataset))
    hardest_per_class = extreme_margin(2, lowest=True)  # per class: the 2 hardest of each class
    assert all(not (per_class(keys)[c] & hardest_per_class[c]) for c in range(len(CLASSES)))


def test_ccs_rejects_reverse(world):
    config, dataset = world
    config = replace(config, {"data.method": "ccs", "prune.reverse": True})
    with pytest.raises(ConfigError, match="reverse"):
        method_for(config)(config, dataset)


def test_score_cache_is_reused_and_invalidated_when_dynamics_change(world):
    config, _ = world
    path = scores_cache_path(config, N)
    assert path.parent == config.out / "scores" / dynamics_key(config) and path.name.startswith("scores-")
    first = load_scores(config, N)
    assert path.is_file()
    expected = compute_scores(dynamics_dirs(config), N)
    np.testing.assert_allclose(first["el2n"].to_numpy(), expected["el2n"].to_numpy())
    # tamper with the cached values (keeping its dynamics record): a reuse returns them
    table = pq.read_table(path)
    frame = table.to_pandas()
    frame["el2n"] = 123.0
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(table.schema.metadata),
                   path)
    assert (load_scores(config, N)["el2n"] == 123.0).all()
    # dynamics recorded again (other margins, sealed again): recomputed and rewritten
    write_dynamics(config, margin=-MARGIN)
    fresh = load_scores(config, N)
    np.testing.assert_allclose(fresh["el2n"].to_numpy(), compute_scores(dynamics_dirs(config), N)["el2n"].to_numpy())
    assert not (fresh["el2n"] == 123.0).any()
    assert (load_scores(config, N)["aum"].to_numpy() == fresh["aum"].to_numpy()).all()
    # other score parameters get their own cache file
    one_epoch = replace(config, {"prune.el2n_epochs": 1})
    assert scores_cache_path(one_epoch, N) != path
    load_scores(one_epoch, N)
    assert scores_cache_path(one_epoch, N).is_file()


def test_missing_dynamics_is_a_clear_error(tmp_path):
    folder = make_image_folder(tmp_path / "images")
    config = make_config(tmp_path, folder)
    dataset = with_index(load_train_source(config).dataset)
    with pytest.raises(DataError) as info:
        method_for(config)(config, dataset)
    message = str(info.value)
    assert str(dynamics_dir(config)) in message
    assert "python -m orchestrator teacher --force --config" in message
    dynamics_dir(config).mkdir(parents=True)  # an empty folder is just as missing
    with pytest.raises(DataError, match="no valid manifest.json.*orchestrator teacher --force"):
        method_for(config)(config, dataset)


def test_damaged_dynamics_are_refused_before_scoring(world):
    """A deleted epoch file or a truncated one is a DataError naming it, never a score."""
    config, dataset = world
    deleted = epoch_file(dynamics_dir(config, 1), 0, 1)
    deleted.unlink()
    with pytest.raises(DataError, match=f"{deleted}.*missing.*teacher --force"):
        method_for(config)(config, dataset)
    write_dynamics(config)
    truncated = epoch_file(dynamics_dir(config, 0), 1, 0)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(DataError, match=f"{truncated} changed since the run finished"):
        method_for(config)(config, dataset)


def test_dynamics_of_other_settings_are_never_read(world):
    """Other teacher epochs, seed or recipe: another key, another folder, so no dynamics found."""
    config, dataset = world
    for override in ({"teacher.epochs": 3}, {"teacher.seed": 1}, {"teacher.batch_size": 64},
                     {"teacher.model": "resnet18_small"}, {"optim.lr": 0.01}):
        other = replace(config, override)
        assert dynamics_key(other) != dynamics_key(config)
        with pytest.raises(DataError, match="no training dynamics at"):
            method_for(other)(other, dataset)
    # the cell seed and the student recipe do not change the dynamics a rule reads
    same = replace(config, {"seed": 5, "schedule.epochs": 7, "model.name": "resnet18_small"})
    assert dynamics_key(same) == dynamics_key(config)


def test_needs_dynamics(tmp_path):
    config = make_config(tmp_path, tmp_path)
    for method in ("forgetting", "el2n", "aum", "ccs", "pca"):
        assert needs_dynamics(replace(config, {"data.method": method}))
    for method in ("random", "first", "full"):
        assert not needs_dynamics(replace(config, {"data.method": method}))
    templated = replace(config, {"data.method": "el2n", "data.source_template": "owner/set-{method}-ipc-{ipc}"})
    assert not needs_dynamics(templated)


def _bytes(dataset, key: int) -> bytes:
    """The stored (encoded) image bytes of one row."""
    return dataset.with_format("arrow")["image"][key].as_py()["bytes"]


def test_pca_tiles_the_easiest_images_whole(world):
    config, dataset = world
    config = replace(config, {"data.method": "pca", "data.ipc": 2, "prune.pca_grid": 2})
    selection = pca_selection(config, dataset)
    subset = selection.subset
    assert len(subset) == 2 * len(CLASSES)
    assert np.bincount(class_id_array(subset)).tolist() == [2] * len(CLASSES)
    assert subset["index"] == list(range(len(subset)))
    assert subset["sample_id"][:2] == ["pca/0/0", "pca/0/1"]
    assert per_class(selection.indices) == extreme_margin(8, lowest=False)  # 2 x 2^2 easiest per class
    boxes = tile_boxes(2, SIZE)
    for row, members in enumerate(selection.tiles):
        stored = Image.open(io.BytesIO(_bytes(subset, row)))
        assert stored.size == (SIZE, SIZE) and stored.mode == "L"
        assert all(LABELS[m] == subset[row]["class_id"] for m in members)
        pixels = np.asarray(stored)
        for member, (top, left, height, width) in zip(members, boxes):
            source = Image.open(io.BytesIO(_bytes(dataset, member))).convert("L")
            expected = np.asarray(source.resize((width, height), Image.Resampling.BICUBIC))
            np.testing.assert_array_equal(pixels[top:top + height, left:left + width], expected)
    # tiles hold each class's images easiest first
    first = selection.tiles[0] + selection.tiles[1]
    assert list(MARGIN[first]) == sorted(MARGIN[first], reverse=True)
    assert pca_subset(config, dataset)["sample_id"] == subset["sample_id"]
    assert fingerprint(pca_subset(config, dataset)) == fingerprint(subset)


def test_pca_grid_one_is_reversed_rule_pruning(world):
    config, dataset = world
    pca = replace(config, {"data.method": "pca", "prune.pca_grid": 1})
    easy = replace(config, {"data.method": "el2n", "prune.reverse": True})
    assert pca_subset(pca, dataset)["index"] == method_for(easy)(easy, dataset)["index"]


def test_pca_errors(world):
    config, dataset = world
    with pytest.raises(DataError, match="needs 12 images per class"):
        pca_subset(replace(config, {"data.method": "pca", "data.ipc": 3}), dataset)
    with pytest.raises(ConfigError, match="reverse"):
        pca_subset(replace(config, {"data.method": "pca", "prune.reverse": True}), dataset)


def test_subset_manifest(world):
    config, dataset = world
    selection = prune_selection(config, dataset)
    manifest = subset_manifest(config, selection.indices, selection.scores, dataset=dataset, classes=CLASSES)
    assert manifest["rule"] == "el2n" and manifest["ipc"] == 2 and manifest["reverse"] is False
    assert manifest["source"]["spec"] == config.data.train and manifest["source"]["classes"] == CLASSES
    assert manifest["parameters"]["el2n_epochs"] == 2 and manifest["parameters"]["score_runs"] == 2
    assert manifest["parameters"]["aum_margin"] == "logit"
    assert manifest["dynamics_key"] == dynamics_key(config)
    assert manifest["source_ids"] == selection.subset["sample_id"]
    assert manifest["scores"]["column"] == "el2n"
    np.testing.assert_allclose(manifest["scores"]["values"], selection.scores["el2n"].to_numpy()[selection.indices])
    assert manifest["fingerprint"] == fingerprint(selection.subset)
    # without a dataset it loads the source itself; pca records its grid and tiles
    pca = replace(config, {"data.method": "pca"})
    chosen = pca_selection(pca, dataset)
    loaded = subset_manifest(pca, chosen.indices, chosen.scores, tiles=chosen.tiles)
    assert loaded["pca_grid"] == 2 and loaded["reverse"] is True and loaded["parameters"]["pca_rule"] == "el2n"
    assert loaded["fingerprint"] == fingerprint(chosen.subset)
    assert len(loaded["tiles"]) == 8 and all(len(t) == 4 for t in loaded["tiles"])
    assert loaded["source"]["classes"] == CLASSES
