"""Config loading, inheritance, overrides and validation."""

import pytest

from orchestrator.config import cell_name, config_hash, flatten, load_config, replace, setting
from orchestrator.errors import ConfigError
from tests_paths import CONFIGS


def test_published_protocols_match_protocol_md():
    hard, soft = load_config(CONFIGS / "hard.yaml"), load_config(CONFIGS / "soft.yaml")
    for cfg in (hard, soft):
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 0.001, 0.01)
        assert (cfg.schedule.epochs, cfg.train.batch_size) == (300, 128)
        assert cfg.augment.scale == (0.08, 1.0) and cfg.augment.hflip == 0.5
        assert (cfg.eval.resize, cfg.eval.crop, cfg.data.image_size, cfg.eval.every) == (256, 224, 224, 50)
        assert cfg.model.name == "resnet18"
    assert hard.label_mode == "hard" and hard.mix.type == "none"
    assert soft.label_mode == "soft" and soft.teacher.temperature == 20
    assert soft.mix.type == "cutmix" and soft.mix.cutmix_alpha == 1.0 and soft.mix.mixup_alpha == 0.8
    assert soft.teacher.source.startswith("timm:resnet18")


def test_fashion_mnist_protocols_keep_the_published_recipe():
    """Only the scale changes (28 px, ConvNet-3, own teacher): optimiser, schedule, batch, augmentation,
    loss and mixing are the published ones, so soft vs hard compares the same recipe."""
    for small, published in (("fmnist-hard.yaml", "hard.yaml"), ("fmnist-soft.yaml", "soft.yaml")):
        small, published = load_config(CONFIGS / small), load_config(CONFIGS / published)
        assert small.optim == published.optim and small.schedule == published.schedule
        assert small.train.batch_size == published.train.batch_size and small.augment == published.augment
        assert (small.label_mode, small.mix.type, small.mix.cutmix_alpha) == (
            published.label_mode, published.mix.type, published.mix.cutmix_alpha)
        assert small.teacher.temperature == published.teacher.temperature
        assert (small.data.image_size, small.model.name) == (28, "convnet3")


def test_base_inheritance_and_override_precedence():
    cfg = load_config(CONFIGS / "fmnist-soft.yaml", ["optim.lr=0.01", "data.ipc=50"])
    assert cfg.name == "fmnist-soft" and cfg.data.train == "fashion-mnist"  # inherited
    assert cfg.optim.lr == 0.01 and cfg.data.ipc == 50  # overrides beat YAML


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        load_config(CONFIGS / "fmnist-hard.yaml", ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="did you mean 'schedule'"):
        load_config(CONFIGS / "fmnist-hard.yaml", {"schedul": {"epochs": 3}})


def test_none_string_is_none_and_types_are_checked():
    assert load_config(CONFIGS / "fmnist-hard.yaml", ["data.ipc=None"]).data.ipc is None
    with pytest.raises(ConfigError, match="'data.ipc' must be int"):
        load_config(CONFIGS / "fmnist-hard.yaml", ["data.ipc=ten"])
    with pytest.raises(ConfigError, match="'train.batch_size' must be int"):
        load_config(CONFIGS / "fmnist-hard.yaml", ["train.batch_size=1.5"])
    with pytest.raises(ConfigError, match="label_mode"):
        load_config(CONFIGS / "fmnist-hard.yaml", ["label_mode=sof"])
    with pytest.raises(ConfigError, match="must be >= 1"):
        load_config(CONFIGS / "fmnist-hard.yaml", ["schedule.epochs=0"])


def test_missing_file_and_bad_override_form():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(CONFIGS / "nope.yaml")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(CONFIGS / "fmnist-hard.yaml", ["optim.lr"])


def test_cell_name_changes_with_results_relevant_settings_only():
    cfg = load_config(CONFIGS / "fmnist-hard.yaml")
    assert cell_name(cfg).startswith("random-ipc10-hard-convnet3-s0-")
    assert config_hash(replace(cfg, {"output_dir": "/elsewhere"})) == config_hash(cfg)
    assert config_hash(replace(cfg, {"optim.lr": 0.5})) != config_hash(cfg)
    assert flatten(cfg)["data.ipc"] == 10


def test_what_the_hash_and_validation_know_sits_on_the_fields():
    """Run-only fields leave the hash alone, a late one only at its default; choices come from the
    fields' Literal types; a misspelt mark is an error where the field is declared."""
    cfg = load_config(CONFIGS / "fmnist-hard.yaml")
    run_only = {"train.chunk": 64, "eval.batch_size": 64, "variant": "x", "data.check_images": False}
    assert config_hash(replace(cfg, run_only)) == config_hash(cfg)
    assert config_hash(replace(cfg, {"distill.dwa_steps": 12})) == config_hash(cfg)  # late, at its default
    assert config_hash(replace(cfg, {"distill.dwa_steps": 13})) != config_hash(cfg)
    with pytest.raises(ConfigError, match=r"'train.compile' is 'fast': choose one of \[False, True, 'auto'\]"):
        replace(cfg, {"train.compile": "fast"})
    assert replace(cfg, {"train.compile": "auto"}).train.compile == "auto"
    with pytest.raises(TypeError):
        setting(1, postive=True)
