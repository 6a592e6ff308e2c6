"""G-VBSM, LPLD and DWA (trainers/distill.py, orchestrator/distill_job.py, LPLD's pruned label pool in
trainers/batches.py): what defines each, on small BatchNorm teachers trained on real Fashion-MNIST."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf

from test_distill import MEAN, STD, real_images, register_distill_teacher, settings, teacher  # noqa: F401 (fixtures)
from trainers.distill import (DwaObjective, GvbsmObjective, GvbsmSettings, class_bn_statistics, conv_statistics,
                              directed_weight_adjustment, lpld_objective, normalised, recover, recover_batches)
from trainers.models import ConvNet

GVBSM = GvbsmSettings(momentum=0.8, drop_rate=0.0, nuc_norm=1.0, tau=4.0)


@pytest.fixture(scope="module")
def deeper_teacher(real_images):  # noqa: F811
    """A second BN backbone, another depth (ConvNet-4, width 8), 100 AdamW steps on the real images."""
    torch.manual_seed(1)
    model = ConvNet(num_classes=10, in_chans=1, img_size=28, width=8, depth=4, norm="batch")
    inputs, labels = normalised(real_images[0], MEAN, STD), torch.from_numpy(real_images[1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(100):
        batch = torch.randint(0, len(labels), (64,))
        loss = nnf.cross_entropy(model(inputs[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def real_views(real_images):  # noqa: F811
    return normalised(real_images[0][:600], MEAN, STD), real_images[1][:600]


# ---------------------------------------------------------------- G-VBSM


def gvbsm_images(teachers, real_views, iterations=6):  # noqa: F811
    conv_targets = [conv_statistics(t, real_views[0]) for t in teachers]

    def objective(targets, batch_index):
        return GvbsmObjective(teachers, conv_targets, GVBSM, 10.0, np.random.default_rng([0, batch_index, 1]))

    return recover(teachers[0], [c for _ in range(2) for c in range(10)], settings=settings(iterations=iterations),
                   seed=0, device="cpu", objective=objective)


def test_gvbsm_matches_the_statistics_of_every_backbone(teacher, deeper_teacher, real_views):  # noqa: F811
    calls = {"convnet3": 0, "convnet4": 0}
    hooks = [m.register_forward_hook(lambda *a, name=name: calls.__setitem__(name, calls[name] + 1))
             for name, m in (("convnet3", teacher), ("convnet4", deeper_teacher))]
    try:
        images, log = gvbsm_images([teacher, deeper_teacher], real_views)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls["convnet3"] > 0 and calls["convnet4"] > 0  # backbones in turn, both read
    assert images.shape == (20, 1, 28, 28) and np.isfinite(log["bn_loss"]).all()
    # swapping either backbone changes the images: the loss reads both
    other = ConvNet(num_classes=10, in_chans=1, img_size=28, width=8, depth=4, norm="batch").eval()
    assert gvbsm_images([teacher, other], real_views)[0].tobytes() != images.tobytes()
    torch.manual_seed(2)
    first = ConvNet(num_classes=10, in_chans=1, img_size=28, width=8, depth=3, norm="batch").eval()
    assert gvbsm_images([first, deeper_teacher], real_views)[0].tobytes() != images.tobytes()


def test_conv_statistics_are_taken_on_real_data(teacher, real_views):  # noqa: F811
    stats = conv_statistics(teacher, real_views[0])
    convs = [m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d)]
    assert list(stats) == convs
    mean, var, patch_mean, patch_var = stats[convs[0]]  # the first conv reads the normalised images
    assert mean.item() == pytest.approx(real_views[0].mean().item(), abs=1e-4)
    assert var.item() == pytest.approx(real_views[0].var(unbiased=False).item(), rel=1e-3)
    assert patch_mean.shape == (4,)  # 28 px resized to 32: 2 x 2 patches of 16


# ---------------------------------------------------------------- LPLD


def test_lpld_recovers_one_class_per_batch_against_its_class_statistics(teacher, real_views):  # noqa: F811
    slots = np.tile(np.arange(10), 3).tolist()
    batches = recover_batches(slots, 2, class_wise=True)
    assert all(len({slots[i] for i in rows}) == 1 for rows in batches)
    assert sorted(np.concatenate(batches).tolist()) == list(range(30))
    stats = class_bn_statistics(teacher, *real_views)
    assert not torch.allclose(stats[0][0][0], stats[1][0][0])  # class-wise, not the running statistics
    images, _ = recover(teacher, slots, settings=settings(iterations=5, batch=2), seed=0, device="cpu",
                        objective=lpld_objective(teacher, stats, 10.0), class_wise=True)
    assert images.shape == (30, 1, 28, 28)
    with pytest.raises(ValueError, match="one class per batch"):
        recover(teacher, slots, settings=settings(iterations=1, batch=4), seed=0, device="cpu",
                objective=lpld_objective(teacher, stats, 10.0))


def test_pruned_label_pool_reuses_its_kept_batches_exactly():
    from trainers.batches import Augment, MemoryBatches, label_pool_size

    arrays = {"image": np.random.default_rng(0).integers(0, 255, (10, 28, 28, 1), dtype=np.uint8),
              "label": np.arange(10), "key": np.arange(10)}
    augment = Augment(seed=0, size=28, scale=(0.08, 1.0), ratio=(0.75, 4 / 3), hflip=0.5, mean=MEAN, std=STD)
    memory = MemoryBatches(arrays, grid=1, tile_views="image", augment=augment, label_ratio=0.1, epochs=10)
    sizes = {"batch_size": 5, "world": 1, "accum": 1}
    assert label_pool_size(10, 2, 0.1) == 2  # 10 views in batches of 5: 2 steps per epoch, 20 stored batches
    stored = {}
    for epoch in range(10):
        steps, counts = memory.steps(epoch, rank=0, **sizes)
        for (micro,) in steps:
            entry = (tuple(micro.key.tolist()), micro.mix_seed)
            stored.setdefault(entry, micro.image)
            assert torch.equal(stored[entry], micro.image)  # the same views, the same mix: the stored labels
    assert len(stored) == 2  # only the pool's two batches (epoch 0's) over ten epochs
    full = MemoryBatches(arrays, grid=1, tile_views="image", augment=augment)
    steps, _ = full.steps(0, rank=0, **sizes)
    assert {tuple(m.key.tolist()) for (m,) in steps} == {keys for keys, _ in stored}


@pytest.fixture
def lpld_config(tiny_config, teacher):  # noqa: F811
    config = tiny_config("fmnist-soft", **{"data.method": "lpld", "data.ipc": 1, "distill.teacher_model": "convnet3_bn",
                                           "distill.iterations": 5, "distill.stats_pool": 20,
                                           "schedule.epochs": 10, "train.batch_size": 5})
    register_distill_teacher(config, teacher)
    return config


def test_lpld_soft_label_bytes_shrink_by_the_ratio_with_the_same_images(lpld_config):
    from orchestrator.config import replace
    from orchestrator.data.select import fingerprint
    from orchestrator.distill_job import distilled_dir, read_manifest
    from orchestrator.method_spec import load_train_source, with_index
    from orchestrator.methods import METHODS, soft_label_bytes, soft_label_ratio

    source = with_index(load_train_source(lpld_config).dataset)
    pruned = replace(lpld_config, {"distill.label_keep_ratio": 0.1})
    kept = replace(lpld_config, {"distill.label_keep_ratio": 1.0})
    images, again = METHODS["lpld"](pruned, source), METHODS["lpld"](kept, source)
    assert fingerprint(images) == fingerprint(again) == read_manifest(distilled_dir(pruned, "lpld", 1))["fingerprint"]
    assert soft_label_ratio(pruned) == 0.1 and soft_label_ratio(replace(pruned, {"data.method": "sre2l"})) == 1.0
    full = soft_label_bytes(kept, len(images), 10)
    assert full == 10 * 10 * 10 * 2  # epochs x views x classes x fp16
    assert soft_label_bytes(pruned, len(images), 10) == full // 10
    assert soft_label_bytes(replace(pruned, {"label_mode": "hard"}), len(images), 10) == 0


# ---------------------------------------------------------------- DWA


def test_directed_weight_adjustment_raises_the_real_batch_loss(teacher, real_images):  # noqa: F811
    images, labels = normalised(real_images[0][:100], MEAN, STD), torch.from_numpy(real_images[1][:100])
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    adjusted = directed_weight_adjustment(teacher, images, labels, rho=0.05, steps=3)
    with torch.no_grad():
        original_loss = nnf.cross_entropy(teacher(images), labels).item()
        adjusted_loss = nnf.cross_entropy(adjusted(images), labels).item()
    assert adjusted_loss > original_loss
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the teacher is untouched
    buffers = dict(adjusted.named_buffers())
    assert all(torch.equal(buffers[k], v) for k, v in teacher.named_buffers())  # BN targets: the original's
    # K steps of rho / K along unit gradients: rho in all only where the K gradients are parallel (how far
    # they turn depends on the teacher, trained in the fixture on this machine's CPU); one step is exactly rho
    assert 0.05 / 3 < distance(adjusted, teacher) <= 0.05 * (1 + 1e-5)
    one_step = directed_weight_adjustment(teacher, images, labels, rho=0.05, steps=1)
    assert distance(one_step, teacher) == pytest.approx(0.05, rel=1e-5)


def distance(model: torch.nn.Module, other: torch.nn.Module) -> float:
    squares = sum(torch.linalg.vector_norm(a - b) ** 2 for a, b in zip(model.parameters(), other.parameters()))
    return squares.sqrt().item()


def test_dwa_starts_from_real_images_and_differs_from_sre2l(teacher, real_images):  # noqa: F811
    targets = list(range(10))
    init = np.stack([real_images[0][np.flatnonzero(real_images[1] == c)[0]] for c in targets])
    options = dict(settings=settings(iterations=10), seed=0, device="cpu")
    dwa, _ = recover(teacher, targets, init=init, **options,
                     objective=lambda t, b: DwaObjective(teacher, 10.0, rho=0.015, steps=2, var_weight=11.0))
    sre2l, _ = recover(teacher, targets, **options)
    assert dwa.shape == sre2l.shape and dwa.tobytes() != sre2l.tobytes()
    assert np.abs(dwa.astype(int) - init).mean() < np.abs(sre2l.astype(int) - init).mean()  # near its real start


# ---------------------------------------------------------------- methods, help and the sweep


def test_gvbsm_and_dwa_methods_write_their_manifests(tiny_config, teacher):  # noqa: F811
    from orchestrator.distill_job import distill_teacher_config, distilled_dir, read_manifest, teacher_keys
    from orchestrator.method_spec import load_train_source, with_index
    from orchestrator.methods import METHODS
    from orchestrator.teachers import teacher_key, teacher_path
    from trainers.models import create_student, save_teacher

    config = tiny_config(**{"data.method": "gvbsm", "data.ipc": 1, "distill.teacher_model": "convnet3_bn",
                            "distill.gvbsm_teachers": ["convnet3_bn", "convnet3_bn_w32"], "distill.iterations": 4,
                            "distill.stats_pool": 10, "distill.dwa_steps": 2})
    register_distill_teacher(config, teacher)
    second = distill_teacher_config(config, "convnet3_bn_w32")
    save_teacher(create_student("convnet3_bn_w32", num_classes=10, in_chans=1, img_size=28), teacher_path(second),
                 {"teacher_key": teacher_key(second)})
    assert [c.teacher.model for c in METHODS["gvbsm"].teachers(config)] == ["convnet3_bn", "convnet3_bn_w32"]
    source = with_index(load_train_source(config).dataset)
    for method in ("gvbsm", "dwa"):
        subset = METHODS[method](config, source)
        manifest = read_manifest(distilled_dir(config, method, 1))
        assert len(subset) == manifest["images"] == 10 and manifest["generation_seconds"] > 0
        assert manifest["teacher_keys"] == teacher_keys(config, method)
    assert len(read_manifest(distilled_dir(config, "gvbsm", 1))["teacher_keys"]) == 2


def test_help_names_every_method(capsys):
    from orchestrator.cli import main
    from orchestrator.distill_job import DISTILL_NAMES
    from orchestrator.methods import METHODS

    texts = {}
    for verb in ("distill", "run"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        texts[verb] = " ".join(capsys.readouterr().out.split())
    assert all(name in texts["distill"].split("options:")[0] for name in DISTILL_NAMES)  # the description
    assert all(f" {name}" in texts["run"] for name in METHODS)


def test_ipc50_sweep_lists_every_method():
    from orchestrator.config import cell_name
    from orchestrator.sweep_config import load_sweep
    from tests_paths import CONFIGS

    sweep = load_sweep(CONFIGS / "sweeps" / "fashion-mnist-ipc50.yaml")
    cells = {(c.data.method, c.data.ipc, c.label_mode) for c in sweep.cells}
    methods = {"random", "sre2l", "cda", "gvbsm", "lpld", "rded", "dwa", "pca", "forgetting", "el2n", "aum", "ccs"}
    assert {m for m, ipc, _ in cells if ipc == 50} == methods
    assert ("pca", 50, "soft") not in cells and ("pca", 50, "hard") in cells
    for method in ("gvbsm", "lpld", "dwa"):
        assert {(method, ipc, mode) for ipc in (1, 10) for mode in ("hard", "soft")} <= cells
    grid = [c for c in sweep.cells if c.data.method != "full"]
    assert {c.seed for c in grid} == {0, 1, 2} and {c.schedule.epochs for c in grid} == {300}
    (full,) = [c for c in sweep.cells if c.data.method == "full"]  # HLR's reference, trained once for both:
    random_ipc = load_sweep(CONFIGS / "sweeps" / "study-random-ipc.yaml")
    assert cell_name(full) in {cell_name(c) for c in random_ipc.cells}  # the same cell name, so it is copied
