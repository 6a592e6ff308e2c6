"""`orchestrator prune`: subsets written as parquet + manifest, through the function and the CLI verb.

Uses the small real world of test_pca_methods (40 PNGs in 4 class folders, dynamics written by
DynamicsWriter from known logits).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import yaml

from orchestrator.data.select import class_id_array, fingerprint
from orchestrator.data.sources import load_source
from orchestrator.errors import ConfigError
from orchestrator.prune_job import add_prune_parser, prune
from orchestrator.teachers import dynamics_dirs, dynamics_key
from pca.scores import compute_scores
from test_pca_methods import CLASSES, N, SIZE, extreme_margin, make_config, make_image_folder, per_class, write_dynamics


@pytest.fixture
def setup(tmp_path):
    folder = make_image_folder(tmp_path / "images")
    config = make_config(tmp_path, folder, **{"data.method": "random", "data.ipc": 10})
    write_dynamics(config)
    return config, folder


def load_subset(folder):
    return load_source(str(folder / "data.parquet"), "train", data_root=folder)


def test_prune_writes_parquet_and_manifest(setup):
    config, _ = setup
    folder = prune(config, rule="el2n", ipc=2, reverse=False, out_dir=None)
    manifest = json.loads((folder / "manifest.json").read_text())
    source = load_subset(folder)
    digest = fingerprint(source.dataset)
    assert folder == config.out / "subsets" / f"el2n-ipc2-{digest}"
    assert manifest["fingerprint"] == digest
    assert source.classes == CLASSES  # from the dataset_info.json beside the parquet
    assert source.dataset.column_names == ["image", "class_id", "sample_id"]
    assert np.bincount(class_id_array(source.dataset)).tolist() == [2] * len(CLASSES)
    assert manifest["rule"] == "el2n" and manifest["ipc"] == 2 and manifest["reverse"] is False
    assert manifest["source_ids"] == source.dataset["sample_id"]
    keys = np.array(manifest["source_indices"])
    assert per_class(keys) == extreme_margin(2, lowest=True)
    scores = compute_scores(dynamics_dirs(config), N)
    np.testing.assert_allclose(manifest["scores"]["values"], scores["el2n"].to_numpy()[keys])
    assert manifest["source"]["spec"] == config.data.train
    assert manifest["dynamics_key"] == dynamics_key(config)
    # the same request is the same folder, the reverse one another
    assert prune(config, rule="el2n", ipc=2, reverse=False, out_dir=None) == folder
    easy = prune(config, rule="el2n", ipc=2, reverse=True, out_dir=None)
    assert easy != folder and json.loads((easy / "manifest.json").read_text())["reverse"] is True


def test_prune_pca_to_a_given_folder(setup, tmp_path):
    config, _ = setup
    out = tmp_path / "pca-set"
    assert prune(config, rule="pca", ipc=2, reverse=False, out_dir=out) == out
    manifest = json.loads((out / "manifest.json").read_text())
    source = load_subset(out)
    assert manifest["fingerprint"] == fingerprint(source.dataset)
    assert manifest["pca_grid"] == 2 and manifest["num_images"] == 8 and len(manifest["tiles"]) == 8
    assert len(manifest["source_ids"]) == 32
    image = source.dataset[0]["image"]
    assert image.size == (SIZE, SIZE)
    assert source.dataset["sample_id"][:2] == ["pca/0/0", "pca/0/1"]


def test_prune_rejects_unknown_rules(setup):
    config, _ = setup
    with pytest.raises(ConfigError, match="did you mean 'el2n'"):
        prune(config, rule="el2m", ipc=2, reverse=False, out_dir=None)


def cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_prune_parser(parser.add_subparsers(dest="verb", required=True))
    return parser.parse_args(argv)


def test_cmd_prune_via_its_parser(setup, tmp_path, capsys):
    config, folder = setup
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text(yaml.safe_dump({
        "name": "tiny", "output_dir": str(config.out),
        "data": {"train": str(folder), "val": str(folder), "image_size": SIZE, "mode": "L", "method": "aum",
                 "ipc": 10},
        "teacher": {"epochs": 2}}))  # the recipe the fixture's dynamics were recorded with
    out = tmp_path / "cli-set"
    args = cli(["prune", "--config", str(protocol), "--rule", "el2n", "--ipc", "3", "--reverse", "--out", str(out)])
    assert args.func(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rule"] == "el2n" and manifest["ipc"] == 3 and manifest["reverse"] is True
    assert per_class(np.array(manifest["source_indices"])) == extreme_margin(3, lowest=False)
    assert str(out) in capsys.readouterr().out
    # without --rule the protocol's method is the rule; the default folder is under output_dir
    args = cli(["prune", "-c", str(protocol), "--ipc", "1", "--set", "prune.el2n_epochs=1"])
    assert args.func(args) == 0
    written = list((config.out / "subsets").glob("aum-ipc1-*"))
    assert len(written) == 1
    manifest = json.loads((written[0] / "manifest.json").read_text())
    assert manifest["rule"] == "aum" and manifest["parameters"]["el2n_epochs"] == 1
    assert manifest["fingerprint"] == written[0].name.rsplit("-", 1)[1]
