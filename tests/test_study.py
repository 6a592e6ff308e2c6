"""What the study's sweeps (configs/sweeps/study-*.yaml, docs/results.md) need beyond the benchmark:
PCA with any rule as its Prune step, PCA without its Augment step, `noise` images, a grid's `variant`
label, and a local Ray of one workspace only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from orchestrator.config import cell_name, load_config, replace
from orchestrator.data.select import class_id_array
from orchestrator.method_spec import load_train_source
from orchestrator.methods import METHODS, method_label, tile_grid
from orchestrator.sweep_config import describe, load_sweep
from pca.pipeline import pca_selection
from pca.select import select
from tests_paths import CONFIGS, HARD, REPO
from test_pca_methods import CLASSES, LABELS, extreme_margin, per_class
# `world` is a pytest fixture the tests below take as a parameter; "as world" marks it as used on purpose
from test_pca_methods import world as world

STUDY_SWEEPS = sorted((CONFIGS / "sweeps").glob("study-*.yaml"))


def test_pca_with_random_selection_draws_its_pruned_images_at_random(world):
    config, dataset = world
    config = replace(config, {"data.method": "pca", "data.ipc": 1, "prune.pca_grid": 2, "prune.pca_rule": "random"})
    chosen = pca_selection(config, dataset).indices
    expected = select("random", labels=LABELS, scores=None, ipc=4, seed=config.seed)
    assert sorted(chosen.tolist()) == sorted(expected.tolist())
    draws = {tuple(sorted(pca_selection(replace(config, {"seed": s}), dataset).indices.tolist())) for s in range(4)}
    assert len(draws) > 1  # seeded, not a fixed ranking
    easiest = pca_selection(replace(config, {"prune.pca_rule": "el2n"}), dataset).indices
    assert per_class(easiest) == extreme_margin(4, lowest=False)


def test_pca_takes_ccs_as_its_prune_step(world):
    config, dataset = world
    config = replace(config, {"data.method": "pca", "data.ipc": 1, "prune.pca_rule": "ccs"})
    selection = pca_selection(config, dataset)
    assert np.bincount(class_id_array(selection.subset)).tolist() == [1] * len(CLASSES)


def test_pca_without_augment_trains_on_whole_combined_images(world):
    config, _ = world
    pca = replace(config, {"data.method": "pca", "prune.pca_grid": 2})
    assert tile_grid(pca) == 2
    assert tile_grid(replace(pca, {"prune.pca_views": "whole"})) == 1
    assert cell_name(replace(pca, {"prune.pca_views": "whole"})) != cell_name(pca)


def test_noise_images_follow_the_data_statistics_and_the_seed(tmp_path, data_root):
    config = load_config(HARD, {"data.method": "noise", "data.ipc": 3, "output_dir": str(tmp_path),
                                "data.root": str(data_root)})
    source = load_train_source(config)
    noise = METHODS["noise"](config, source.dataset)
    assert np.bincount(class_id_array(noise)).tolist() == [3] * 10
    pixels = np.stack([np.asarray(image, dtype=np.float64) / 255 for image in noise["image"]])
    assert pixels.shape == (30, 28, 28)
    assert abs(pixels.mean() - config.data.mean[0]) < 0.06 and 0.2 < pixels.std() < config.data.std[0] + 0.01
    again = METHODS["noise"](config, source.dataset)
    other = METHODS["noise"](replace(config, {"seed": 1}), source.dataset)
    assert [i.tobytes() for i in again["image"]] == [i.tobytes() for i in noise["image"]]
    assert [i.tobytes() for i in other["image"]] != [i.tobytes() for i in noise["image"]]


def test_a_variant_names_the_method_in_tables_without_changing_the_cell():
    config = load_config(HARD, {"data.method": "pca"})
    named = replace(config, {"variant": "prune only"})
    assert method_label(config) == "pca" and method_label(named) == "pca (prune only)"
    assert cell_name(named) == cell_name(config)


@pytest.mark.parametrize("path", STUDY_SWEEPS, ids=lambda p: p.stem)
def test_every_study_sweep_lists_its_cells(path):
    sweep = load_sweep(path, {"output_dir": "/tmp/unused"})
    assert len(sweep.cells) == len({cell_name(c) for c in sweep.cells}) > 0
    labels = {method_label(c) for c in sweep.cells}
    assert len(labels) > 1 and str(len(sweep.cells)) in describe(sweep)


def test_pca_ablation_asks_the_ipc10_question_first():
    cells = load_sweep(CONFIGS / "sweeps" / "study-pca-ablation.yaml").cells
    first = cells[:15]
    assert {c.data.ipc for c in first} == {10}
    assert {method_label(c) for c in first} == {"pca (prune only)", "pca (prune + combine)", "pca", "random",
                                                 "pca (random selection)"}


def test_checkouts_do_not_share_a_local_ray(tmp_path):
    copy = tmp_path / "other-checkout"
    shutil.copytree(REPO / "orchestrator", copy / "orchestrator", ignore=shutil.ignore_patterns("__pycache__"))
    code = "from orchestrator.runtime import local_ray_file; print(local_ray_file())"
    here = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    there = subprocess.run([sys.executable, "-c", code], cwd=copy, capture_output=True, text=True, check=True,
                           env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(copy)})
    assert here.stdout.strip() and there.stdout.strip() and here.stdout != there.stdout


def test_a_test_programs_local_ray_is_never_a_users(tmp_path):
    """Programs started by tests (their own ORCHESTRATOR_HOME) and a user's program in the same checkout
    record, and so start or join, different local Rays: a test killing its Ray cannot stop the user's sweep."""
    from tests_paths import child_env

    code = "from orchestrator.runtime import local_ray_file; print(local_ray_file())"
    user_env = {k: v for k, v in os.environ.items() if k != "ORCHESTRATOR_HOME"}
    records = [subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                              env=env).stdout.strip()
               for env in (user_env, user_env, child_env(tmp_path / "a"), child_env(tmp_path / "b"))]
    user, same_user, test_a, test_b = records
    assert user == same_user  # two programs of the user share one
    assert len({user, test_a, test_b}) == 3
