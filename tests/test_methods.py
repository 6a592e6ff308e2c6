"""Method registry: compressed sets, their stable index, storage size and lookup errors."""

import pytest

from orchestrator.config import load_config
from orchestrator.errors import ConfigError
from orchestrator.method_spec import load_train_source, with_index
from orchestrator.methods import build_training_set, image_bytes, method_for
from tests_paths import CONFIGS


@pytest.fixture
def config(tmp_path, data_root):
    return load_config(CONFIGS / "fmnist-hard.yaml", {"data.root": str(data_root), "output_dir": str(tmp_path)})


def test_random_is_seeded_and_keeps_source_positions(config):
    dataset = with_index(load_train_source(config).dataset)
    first = method_for(config)(config, dataset)
    again = method_for(config)(config, dataset)
    assert first["index"] == again["index"] and len(first) == 100
    rows = [dataset[i] for i in first["index"][:3]]
    assert [r["sample_id"] for r in rows] == first["sample_id"][:3]  # index = row in the source


def test_storage_counts_only_selected_images(config):
    dataset = with_index(load_train_source(config).dataset)
    subset = dataset.select(range(10))
    assert image_bytes(subset) == sum(len(r["bytes"]) for r in subset.with_format("arrow")["image"].to_pylist())
    assert image_bytes(subset) * 1000 < image_bytes(dataset)


def test_training_set_is_cached_by_fingerprint(config):
    first = build_training_set(config, load_train_source(config))
    mtime = first.path.stat().st_mtime_ns
    second = build_training_set(config, load_train_source(config))
    assert second.path == first.path and second.path.stat().st_mtime_ns == mtime
    assert first.num_rows == 100 and first.fingerprint in str(first.path)


def test_unknown_method_suggests_a_registered_one(config):
    from orchestrator.config import replace

    with pytest.raises(ConfigError, match="did you mean 'el2n'"):
        method_for(replace(config, {"data.method": "el2m"}))


def test_easy_first_rules_are_reported_as_their_own_method(config):
    from orchestrator.config import replace
    from orchestrator.methods import method_label

    assert method_label(replace(config, {"data.method": "el2n"})) == "el2n"
    assert method_label(replace(config, {"data.method": "el2n", "prune.reverse": True})) == "el2n-easy"
    assert method_label(replace(config, {"data.method": "pca"})) == "pca"
