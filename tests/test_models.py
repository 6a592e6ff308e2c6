"""trainers.models: timm registrations, create_student, teacher files."""

from __future__ import annotations

import pytest
import timm
import torch

from tests_paths import CONFIGS

from orchestrator.errors import ConfigError
from trainers import models
from trainers.models import TeacherUnavailableError, create_student, load_teacher, save_teacher, teacher_meta


@pytest.mark.parametrize(("img_size", "feature_hw"), [(28, 3), (32, 4)])
def test_convnet3_feature_size(img_size: int, feature_hw: int) -> None:
    model = timm.create_model("convnet3", num_classes=10, in_chans=1, img_size=img_size)
    assert model.feature_hw == (feature_hw, feature_hw)
    assert model.get_classifier().in_features == 128 * feature_hw * feature_hw
    features = model.forward_features(torch.zeros(2, 1, img_size, img_size))
    assert features.shape == (2, 128, feature_hw, feature_hw)
    assert model(torch.zeros(2, 1, img_size, img_size)).shape == (2, 10)


def test_convnet3_blocks_and_timm_attributes() -> None:
    model = timm.create_model("convnet3", num_classes=7, in_chans=3, img_size=32)
    assert len(model.features) == 3
    block = model.features[0]
    assert block.conv.kernel_size == (3, 3) and block.conv.padding == (1, 1)
    assert isinstance(block.norm, torch.nn.GroupNorm) and block.norm.num_groups == 128
    assert isinstance(block.pool, torch.nn.AvgPool2d)
    assert model.num_classes == 7
    assert model.pretrained_cfg["architecture"] == "convnet3"
    model.reset_classifier(4)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 4)


def test_convnet3_224_feature_size() -> None:
    model = timm.create_model("convnet3", num_classes=2, in_chans=3, img_size=224, width=8)
    assert model.feature_hw == (28, 28)


def test_convnet3_rejects_too_small_images() -> None:
    with pytest.raises(ConfigError):
        timm.create_model("convnet3", img_size=4)


def test_resnet18_small_keeps_resolution_through_stem() -> None:
    model = timm.create_model("resnet18_small", num_classes=10, in_chans=1, img_size=28)
    assert isinstance(model.maxpool, torch.nn.Identity)
    stem = model.act1(model.bn1(model.conv1(torch.zeros(2, 1, 28, 28))))
    assert stem.shape == (2, 64, 28, 28)
    assert model.forward_features(torch.zeros(2, 1, 28, 28)).shape == (2, 512, 4, 4)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_create_student_passes_img_size_only_where_taken() -> None:
    assert models.student_kwargs("convnet3", num_classes=3, in_chans=1, img_size=28)["img_size"] == 28
    assert "img_size" not in models.student_kwargs("resnet18", num_classes=3, in_chans=1, img_size=28)
    assert models.student_kwargs("vit_tiny_patch16_224", num_classes=3, in_chans=3, img_size=32)["img_size"] == 32
    student = create_student("convnet3", num_classes=3, in_chans=1, img_size=28)
    assert student(torch.zeros(1, 1, 28, 28)).shape == (1, 3)


def test_create_student_unknown_name_lists_close_matches() -> None:
    with pytest.raises(ValueError, match="resnet18"):
        create_student("resnet81", num_classes=10, in_chans=3, img_size=32)


def test_teacher_roundtrip(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_student("convnet3", num_classes=4, in_chans=1, img_size=28)
    path = save_teacher(model, tmp_path / "sub" / "teacher.pt", {"dataset": "tiny", "top1": 12.5})
    assert teacher_meta(path) == {"dataset": "tiny", "top1": 12.5}
    teacher = load_teacher(str(path), num_classes=4, in_chans=1, img_size=28, device="cpu")
    assert not teacher.training
    assert not any(param.requires_grad for param in teacher.parameters())
    batch = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(teacher(batch), model.eval()(batch))


def test_teacher_for_other_dataset_is_refused(tmp_path) -> None:
    model = create_student("convnet3", num_classes=4, in_chans=1, img_size=28)
    path = save_teacher(model, tmp_path / "teacher.pt", {})
    with pytest.raises(ConfigError, match="num_classes"):
        load_teacher(str(path), num_classes=10, in_chans=1, img_size=28, device="cpu")


def test_missing_teacher_file_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_teacher(str(tmp_path / "nope.pt"), num_classes=4, in_chans=1, img_size=28, device="cpu")


def test_unreachable_hub_suggests_local_teacher(monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise OSError("connection refused")

    monkeypatch.setattr(models.timm, "create_model", offline)
    with pytest.raises(TeacherUnavailableError, match="orchestrator teacher") as caught:
        load_teacher("timm:resnet18", num_classes=1000, in_chans=3, img_size=224, device="cpu")
    assert isinstance(caught.value, RuntimeError)
    assert "unreachable" in str(caught.value)


def test_hub_teacher_with_wrong_class_count_is_refused() -> None:
    with pytest.raises(ConfigError, match="1000 classes"):
        load_teacher("timm:resnet18", num_classes=10, in_chans=3, img_size=32, device="cpu")


@pytest.mark.parametrize("name", ["resnet18", "resnet18_small"])
def test_resnet_students_are_initialised_like_torchvision_resnet18(name):
    """docs/protocol.md §Students: the reference trains torchvision's resnet18, which does not zero
    the last BatchNorm of each residual block (timm's default does)."""
    import torchvision

    student = create_student(name, num_classes=10, in_chans=3, img_size=32)
    reference = torchvision.models.resnet18(num_classes=10)
    assert set(reference.state_dict()) == set(student.state_dict())
    for block_name, block in student.named_modules():
        if hasattr(block, "bn2") and hasattr(block, "conv2"):
            assert torch.equal(block.bn2.weight, torch.ones_like(block.bn2.weight)), block_name
    theirs_in_order = [v for _, v in sorted(reference.state_dict().items())]
    for (key, ours), theirs in zip(sorted(student.state_dict().items()), theirs_in_order):
        if key.endswith("conv2.weight") and key.startswith("layer"):
            assert ours.std().item() == pytest.approx(theirs.std().item(), rel=0.2), key  # same kaiming fan_out


def test_a_plain_weights_file_is_a_teacher_of_teacher_model(tmp_path) -> None:
    """teacher.source may be a state dict (e.g. torchvision's resnet18-f37072fd.pth) for teacher.model's
    architecture."""
    from orchestrator.config import load_config
    from orchestrator.teachers import artifact_params, resolve_teacher

    student = create_student("convnet3", num_classes=4, in_chans=3, img_size=32)
    weights = tmp_path / "weights.pth"
    torch.save({f"module.{k}": v for k, v in student.state_dict().items()}, weights)  # as DataParallel saves
    config = load_config(overrides={"label_mode": "soft", "teacher.source": str(weights), "teacher.model": "convnet3"})
    spec = resolve_teacher(config)
    teacher = load_teacher(spec, num_classes=4, in_chans=3, img_size=32, device="cpu")
    assert spec == f"timm:convnet3@{weights}" and not teacher.training
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), student.state_dict().values()))
    assert artifact_params(config, spec, False)[0]["teacher_key"].startswith("timm:convnet3@sha256-")
    with pytest.raises(ConfigError, match="does not fit convnet3 with 10 classes") as caught:
        load_teacher(spec, num_classes=10, in_chans=3, img_size=32, device="cpu")
    assert "\n" not in str(caught.value)


def test_an_offline_hub_teacher_without_cached_weights_is_one_line_naming_teacher_source(monkeypatch) -> None:
    import huggingface_hub

    from orchestrator.config import load_config
    from orchestrator.teachers import resolve_teacher

    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: True)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)
    config = load_config(CONFIGS / "soft.yaml")
    with pytest.raises(ConfigError, match="teacher.source to a local weights file") as caught:
        resolve_teacher(config)
    assert "resnet18-f37072fd.pth" in str(caught.value) and "\n" not in str(caught.value)


def test_help_lists_every_registered_small_student():
    from orchestrator.cli_args import SMALL_STUDENTS
    from trainers.models import default_cfgs

    assert set(SMALL_STUDENTS) == {name.split(".")[0] for name in default_cfgs}
