"""SRe2L, CDA and RDED generators (trainers/distill.py) and their cache and method plumbing
(orchestrator/distill_job.py), with a small BatchNorm teacher trained here on real Fashion-MNIST."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from orchestrator.data.prepare import FASHION_MNIST_RAW, load_fashion_mnist_split
from pca.combine import tile_boxes
import trainers.models  # noqa: F401  (registers the ConvNets in timm)
from trainers.distill import RecoverSettings, cda_min_scale, patch_losses, random_patches, rded, recover

MEAN, STD = (0.2860,), (0.3530,)
TEACHER_KWARGS = {"num_classes": 10, "in_chans": 1, "img_size": 28, "width": 8}


def settings(**overrides) -> RecoverSettings:
    values = dict(iterations=30, lr=0.25, r_bn=0.1, first_bn_multiplier=10.0, jitter=4, crop_scale=(0.08, 1.0),
                  batch=100, image_size=28, in_chans=1, mean=MEAN, std=STD)
    values.update(overrides)
    return RecoverSettings(**values)


@pytest.fixture(scope="module")
def real_images():
    """3,000 real Fashion-MNIST training images (uint8 NCHW) and labels."""
    images, labels = load_fashion_mnist_split(FASHION_MNIST_RAW, "train")
    rows = np.random.default_rng(0).choice(len(images), 3000, replace=False)
    return images[rows][:, None], labels[rows]


@pytest.fixture(scope="module")
def teacher(real_images):
    """A width-8 ConvNet-3 with BatchNorm (convnet3_bn), 200 AdamW steps on the real images."""
    import timm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread is faster than two fighting
    torch.manual_seed(0)
    model = timm.create_model("convnet3_bn", **TEACHER_KWARGS)
    inputs = (torch.from_numpy(real_images[0]).float() / 255 - MEAN[0]) / STD[0]
    labels = torch.from_numpy(real_images[1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):
        batch = torch.randint(0, len(labels), (64,))
        loss = torch.nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    yield model.eval()
    torch.set_num_threads(threads)


def per_class_counts(labels) -> list[int]:
    return np.bincount(np.asarray(labels), minlength=10).tolist()


# ---------------------------------------------------------------- SRe2L / CDA


def test_recover_gives_one_image_per_target_and_same_bytes_for_same_seed(teacher):
    targets = [c for _ in range(2) for c in range(10)]
    first, _ = recover(teacher, targets, settings=settings(batch=15), seed=3, device="cpu")
    again, _ = recover(teacher, targets, settings=settings(batch=15), seed=3, device="cpu")
    other, _ = recover(teacher, targets, settings=settings(batch=15), seed=4, device="cpu")
    assert first.shape == (20, 1, 28, 28) and first.dtype == np.uint8
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()


@pytest.mark.parametrize("method", ["sre2l", "cda"])
def test_recovery_lowers_the_batchnorm_statistics_loss(teacher, method):
    iterations = 150
    curriculum = partial(cda_min_scale, iterations=iterations, mode="cosine", milestone=1.0, low=0.08) \
        if method == "cda" else None
    images, log = recover(teacher, list(range(10)), settings=settings(iterations=iterations), seed=0, device="cpu",
                          curriculum=curriculum)
    bn, ce = log["bn_loss"], log["ce_loss"]
    assert len(bn) == len(ce) == iterations
    assert bn[-10:].mean() < 0.5 * bn[:10].mean(), (bn[:10].mean(), bn[-10:].mean())
    if method == "sre2l":  # CDA's late crops are small (scale 0.08): harder to classify than its early whole images
        assert ce[-10:].mean() < ce[:10].mean()
    assert images.min() >= 0 and images.max() <= 255 and images.std() > 0


@pytest.mark.parametrize("mode", ["cosine", "linear"])
def test_cda_crop_scale_anneals_from_one_to_its_lower_bound(mode):
    schedule = [cda_min_scale(i, 100, mode=mode, milestone=0.5, low=0.08) for i in range(100)]
    assert schedule[0] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(schedule, schedule[1:]))  # monotone non-increasing
    assert schedule[25] == pytest.approx(0.54)  # half-way to the milestone: the middle of [0.08, 1]
    assert schedule[50:] == [0.08] * 50  # after the milestone: the final bound


def test_cda_step_mode_holds_whole_images_until_the_milestone():
    schedule = [cda_min_scale(i, 10, mode="step", milestone=0.3, low=0.08) for i in range(10)]
    assert schedule == [1.0] * 3 + [0.08] * 7


# ---------------------------------------------------------------- RDED


def tiles_of(images: np.ndarray, grid: int) -> torch.Tensor:
    pixels = torch.from_numpy(images).float() / 255
    return torch.cat([pixels[:, :, top:top + h, left:left + w]
                      for top, left, h, w in tile_boxes(grid, images.shape[-1])])


def test_rded_keeps_patches_the_teacher_finds_easier_than_random_crops(teacher, real_images):
    images, labels = real_images
    pool = np.concatenate([np.flatnonzero(labels == c)[:40] for c in range(10)])
    kwargs = dict(ipc=2, grid=2, candidates_per_image=5, seed=0, device="cpu", mean=MEAN, std=STD)
    out, out_labels = rded(teacher, images[pool], labels[pool], **kwargs)
    again, _ = rded(teacher, images[pool], labels[pool], **kwargs)
    assert out.shape == (20, 1, 28, 28) and per_class_counts(out_labels) == [2] * 10
    assert out.tobytes() == again.tobytes()
    kept, random = [], []
    for c in range(10):
        kept.append(patch_losses(teacher, tiles_of(out[out_labels == c], 2), c, image_size=28, mean=MEAN, std=STD,
                                 device="cpu"))
        crops = random_patches(images[pool][labels[pool] == c], count=1, size=14, rng=np.random.default_rng(c))
        random.append(patch_losses(teacher, crops, c, image_size=28, mean=MEAN, std=STD, device="cpu"))
    kept_ce, random_ce = torch.cat(kept).mean().item(), torch.cat(random).mean().item()
    assert kept_ce < 0.8 * random_ce, (kept_ce, random_ce)


def test_rded_refuses_a_pool_smaller_than_ipc_times_grid_squared(teacher, real_images):
    images, labels = real_images
    pool = np.concatenate([np.flatnonzero(labels == c)[:7] for c in range(10)])
    with pytest.raises(ValueError, match="needs 8 candidate images"):
        rded(teacher, images[pool], labels[pool], ipc=2, grid=2, candidates_per_image=2, seed=0, device="cpu",
             mean=MEAN, std=STD)


# ---------------------------------------------------------------- cache and methods


def register_distill_teacher(config, model) -> None:
    """Save `model` where the distillation teacher of `config` is looked up, under its key."""
    from orchestrator.distill_job import distill_teacher_config
    from orchestrator.teachers import teacher_key, teacher_path
    from trainers.models import save_teacher

    teacher_config = distill_teacher_config(config)
    save_teacher(model, teacher_path(teacher_config), {"teacher_key": teacher_key(teacher_config)},
                 model_name="convnet3_bn", model_kwargs=TEACHER_KWARGS)


@pytest.fixture
def distill_config(tiny_config, teacher):
    config = tiny_config(**{"data.method": "rded", "data.ipc": 1, "distill.teacher_model": "convnet3_bn",
                            "distill.rded_pool": 12, "distill.iterations": 60})
    register_distill_teacher(config, teacher)
    return config


def test_distilled_set_is_written_once_and_reused(distill_config):
    from orchestrator.distill_job import MANIFEST_FILE, distilled_dir, distilled_set
    from orchestrator.method_spec import load_train_source, with_index
    from orchestrator.methods import METHODS

    source = with_index(load_train_source(distill_config).dataset)
    first = METHODS["rded"](distill_config, source)
    folder = distilled_dir(distill_config, "rded", 1)
    manifest = folder / MANIFEST_FILE
    stamp = manifest.stat().st_mtime_ns
    again = distilled_set(distill_config, source)
    assert manifest.stat().st_mtime_ns == stamp  # not generated again
    assert first["index"] == again["index"] == list(range(10))
    assert per_class_counts(first["class_id"]) == [1] * 10
    assert [cell["bytes"] for cell in first.with_format("arrow")["image"].to_pylist()] == \
        [cell["bytes"] for cell in again.with_format("arrow")["image"].to_pylist()]


def test_sre2l_method_writes_its_manifest(distill_config):
    from orchestrator.config import replace
    from orchestrator.distill_job import distill_teacher_key, distilled_dir, read_manifest
    from orchestrator.method_spec import load_train_source, with_index
    from orchestrator.methods import METHODS

    config = replace(distill_config, {"data.method": "sre2l"})
    subset = METHODS["sre2l"](config, with_index(load_train_source(config).dataset))
    manifest = read_manifest(distilled_dir(config, "sre2l", 1))
    assert len(subset) == manifest["images"] == 10 and per_class_counts(subset["class_id"]) == [1] * 10
    assert manifest["teacher_key"] == distill_teacher_key(config) and manifest["device"] == "cpu"
    assert manifest["settings"]["iterations"] == 60 and manifest["generation_seconds"] > 0
    assert manifest["losses"]["bn_loss"]["last_tenth"] < manifest["losses"]["bn_loss"]["first_tenth"]


@pytest.mark.slow
def test_rded_cell_trains_on_the_cached_distilled_set(ray_cluster, distill_config):
    from orchestrator.cell import run_cell
    from orchestrator.config import replace
    from orchestrator.distill_job import distilled_dir, read_manifest

    from mlflow import MlflowClient

    from orchestrator.report.output import run_report
    from orchestrator.tracking import tracking_uri

    result = run_cell(replace(distill_config, {"schedule.epochs": 1}))
    manifest = read_manifest(distilled_dir(distill_config, "rded", 1))
    assert result.fingerprint == manifest["fingerprint"]
    assert 0 <= result.summary["top1_final"] <= 100
    # the cell carries its set's generation cost, and the report shows the set's images
    metrics = MlflowClient(tracking_uri(distill_config)).get_run(result.run_id).data.metrics
    assert metrics["distill/generation_s"] == manifest["generation_seconds"]
    assert metrics["distill/generation_images"] == 10
    paths = run_report(tracking_uri(distill_config), distill_config.experiment_name, distill_config.out / "report",
                       log=False)
    assert paths["sets_ipc1.png"].stat().st_size > 1000
    assert "![sets](sets_ipc1.png)" in paths["report.md"].read_text()
    assert "generation time" in paths["report.md"].read_text()
