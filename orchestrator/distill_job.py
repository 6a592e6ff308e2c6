"""Distilled training sets made here: SRe2L, CDA, G-VBSM, LPLD, RDED and DWA as benchmark methods, cached;
the `distill` verb.

    python -m orchestrator distill --config configs/fmnist-hard.yaml --method sre2l --ipc 10 [--seed S]

Owns the plumbing around ``trainers.distill`` (docs/protocol.md §Distillation): the BatchNorm
teachers (the teacher recipe with ``teacher.model = distill.teacher_model``, or each of
``distill.gvbsm_teachers`` for G-VBSM, trained by the teacher machinery and cached under their own
artifact keys), the real-data statistics G-VBSM and LPLD match, the generation of exactly IPC
images per class, and the cache. LPLD's soft cells also keep only ``distill.label_keep_ratio`` of
the soft-label pool (the method's ``soft_label_ratio``; the loop reuses the kept labels). A set is stored once under
``<data_root>/distilled/<method>-ipc<N>-s<seed>-<key>/`` (``data.parquet`` in the benchmark schema
plus ``manifest.json``: method, settings, teacher key, seed, IPC, generation seconds, images,
device), where the key hashes everything that made it; the folder appears atomically (written
beside it, then renamed) under a file lock, so a cached set is reused and never half read.
``DISTILL_METHODS`` maps each name to its ``(config, dataset) -> datasets.Dataset`` method;
``orchestrator.methods`` registers them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from functools import partial
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from orchestrator.config import Config, replace
from orchestrator.data.images import png_bytes
from orchestrator.data.select import INDEXED_FEATURES, class_id_array, fingerprint, per_class_indices, write_parquet
from orchestrator.data.sources import dataset_from_table, load_source
from orchestrator.errors import ConfigError, DataError
from orchestrator.locks import file_lock
from orchestrator.method_spec import MethodSpec, keeps_every_label, require_ipc
from orchestrator.teachers import resolve_teacher, teacher_key
from trainers import metric_names as names

DISTILL_NAMES = ("sre2l", "cda", "gvbsm", "lpld", "rded", "dwa")
DISTILL_VERSION = 1
DATA_FILE = "data.parquet"
MANIFEST_FILE = "manifest.json"


# ---------------------------------------------------------------- teacher


def distill_teacher_config(config: Config, model: str | None = None) -> Config:
    """The config whose teacher is a distillation teacher: the teacher recipe with `model`
    (default distill.teacher_model)."""
    return replace(config, {"teacher.model": model or config.distill.teacher_model, "teacher.source": "auto"})


def teacher_models(config: Config, method: str) -> list[str]:
    """The BatchNorm teachers `method` makes its images with: G-VBSM's backbones, else one."""
    return list(config.distill.gvbsm_teachers) if method == "gvbsm" else [config.distill.teacher_model]


def distill_teacher_key(config: Config, model: str | None = None) -> str:
    return teacher_key(distill_teacher_config(config, model))


def ensure_distill_teacher(config: Config, model: str | None = None) -> Path:
    """A BN teacher's file. Sweeps, `teacher` and `distill` train it first (the method's `teachers`);
    a cell run on its own without it gets a ConfigError naming that fix."""
    try:
        return Path(resolve_teacher(distill_teacher_config(config, model)))
    except ConfigError as exc:
        raise ConfigError(f"{config.data.method} makes its images with a {model or config.distill.teacher_model} "
                          f"BatchNorm teacher: {exc}") from exc


def load_distill_teacher(config: Config, num_classes: int, device, model: str | None = None):
    from trainers.models import load_teacher

    path = ensure_distill_teacher(config, model)
    return load_teacher(str(path), num_classes=num_classes, in_chans=config.in_chans,
                        img_size=config.data.image_size, device=device)


def distill_device(config: Config) -> str:
    """CUDA when this process sees a GPU and train.use_gpu allows it, else CPU."""
    import torch

    return "cuda" if config.train.use_gpu is not False and torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- key and cache


def method_settings(config: Config, method: str) -> dict:
    """The distill settings that shape `method`'s images (what its cache key hashes)."""
    d = config.distill
    if method == "rded":
        return {"grid": d.rded_grid, "candidates": d.rded_candidates, "pool": d.rded_pool}
    settings = {"iterations": d.iterations, "lr": d.lr, "r_bn": d.r_bn, "first_bn_multiplier": d.first_bn_multiplier,
                "jitter": d.jitter, "crop_scale": list(d.crop_scale), "batch": d.batch}
    if method == "cda":
        settings.update(cda_mode=d.cda_mode, cda_milestone=d.cda_milestone)
    if method == "gvbsm":
        settings.update(lr=d.gvbsm_lr, teachers=list(d.gvbsm_teachers), stats_pool=d.stats_pool,
                        momentum=d.gvbsm_momentum, drop_rate=d.gvbsm_drop_rate, nuc_norm=d.gvbsm_nuc_norm,
                        tau=d.gvbsm_tau)
    if method == "lpld":
        settings.update(stats_pool=d.stats_pool, class_wise=True)
    if method == "dwa":
        settings.update(rho=d.dwa_rho, steps=d.dwa_steps, r_var=d.dwa_r_var, init="real")
    return settings


def teacher_keys(config: Config, method: str) -> list[str]:
    return [distill_teacher_key(config, model) for model in teacher_models(config, method)]


def distilled_dir(config: Config, method: str, ipc: int) -> Path:
    """`<data_root>/distilled/<method>-ipc<N>-s<seed>-<key>`: the key covers settings, teachers and storage."""
    keys = teacher_keys(config, method)
    recipe = {"method": method, "ipc": ipc, "seed": config.seed, "settings": method_settings(config, method),
              "teacher_key": keys[0] if len(keys) == 1 else keys, "image_size": config.data.image_size,
              "mode": config.data.mode, "mean": list(config.data.mean), "std": list(config.data.std),
              "version": DISTILL_VERSION}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return config.data_root / "distilled" / f"{method}-ipc{ipc}-s{config.seed}-{key}"


def read_distilled(folder: Path) -> datasets.Dataset:
    """A cached set in the benchmark schema with its `index` column (position in the set)."""
    dataset = dataset_from_table(pq.read_table(folder / DATA_FILE))
    return dataset.add_column("index", np.arange(len(dataset), dtype=np.int64))


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_FILE).read_text())


def distilled_set(config: Config, source_dataset: datasets.Dataset, method: str | None = None) -> datasets.Dataset:
    """Exactly IPC distilled images per class (`method`, default data.method), from the cache or made now.

    `source_dataset` is the full training set (RDED crops its images; all methods take its classes).
    """
    method = method or config.data.method
    if method not in DISTILL_NAMES:
        raise ConfigError(f"'{method}' is not a distillation method: choose one of {list(DISTILL_NAMES)}")
    ipc = config.data.ipc
    if ipc is None:
        raise ConfigError(f"method '{method}' needs an IPC: pass --ipc N")
    folder = distilled_dir(config, method, ipc)
    with file_lock(folder.parent / f".{folder.name}.lock", f"distilled set {folder.name}"):
        if not (folder / MANIFEST_FILE).is_file():
            generate(config, source_dataset, method, ipc, folder)
    return read_distilled(folder)


def generate(config: Config, source_dataset: datasets.Dataset, method: str, ipc: int, folder: Path) -> None:
    """Make the set, then write data + manifest into a temporary folder renamed to `folder`."""
    num_classes = int(class_id_array(source_dataset).max()) + 1
    device = distill_device(config)
    models = teacher_models(config, method)
    teachers = [load_distill_teacher(config, num_classes, device, model) for model in models]
    started = time.perf_counter()
    images, labels, extra = GENERATORS[method](config, teachers, source_dataset, ipc, num_classes, device)
    seconds = time.perf_counter() - started
    dataset = to_dataset(images, labels, method, config.data.mode)
    manifest = {"kind": "rethinkdc-distilled", "version": DISTILL_VERSION, "method": method, "ipc": ipc,
                "seed": config.seed, "settings": method_settings(config, method),
                "teacher_key": distill_teacher_key(config, models[0]), "teacher_model": models[0],
                "teacher_keys": teacher_keys(config, method), "teacher_models": models,
                "generation_seconds": round(seconds, 3), "images": len(dataset), "device": device,
                "num_classes": num_classes, "fingerprint": fingerprint(dataset), **extra}
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write_parquet(dataset, tmp / DATA_FILE)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(folder, ignore_errors=True)  # a folder without its manifest is not a set
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def to_dataset(images: np.ndarray, labels: np.ndarray, method: str, mode: str) -> datasets.Dataset:
    """uint8 NCHW images -> benchmark rows: PNG bytes, class_id, sample_id '<method>/<class>/<k>'."""
    counts: dict[int, int] = {}
    rows = {"image": [], "class_id": [], "sample_id": [], "index": []}
    for position, (pixels, label) in enumerate(zip(images, labels.tolist())):
        array = pixels[0] if mode == "L" else np.transpose(pixels, (1, 2, 0))
        rows["image"].append({"bytes": png_bytes(Image.fromarray(array, mode=mode)), "path": None})
        rows["class_id"].append(label)
        rows["sample_id"].append(f"{method}/{label}/{counts.get(label, 0)}")
        rows["index"].append(position)
        counts[label] = counts.get(label, 0) + 1
    return datasets.Dataset.from_dict(rows, features=INDEXED_FEATURES)


# ---------------------------------------------------------------- generators


def recover_settings(config: Config, **overrides):
    from dataclasses import replace as replace_fields

    from trainers.distill import RecoverSettings

    d = config.distill
    settings = RecoverSettings(iterations=d.iterations, lr=d.lr, r_bn=d.r_bn, first_bn_multiplier=d.first_bn_multiplier,
                               jitter=d.jitter, crop_scale=tuple(d.crop_scale), batch=d.batch,
                               image_size=config.data.image_size, in_chans=config.in_chans,
                               mean=tuple(config.data.mean), std=tuple(config.data.std))
    return replace_fields(settings, **overrides)


def cda_curriculum(config: Config):
    """CDA's schedule of the crop's lower scale bound, iteration -> min scale."""
    from trainers.distill import cda_min_scale

    d = config.distill
    return partial(cda_min_scale, iterations=d.iterations, mode=d.cda_mode, milestone=d.cda_milestone,
                   low=d.crop_scale[0], high=d.crop_scale[1])


def _recovered(config: Config, teacher, ipc: int, num_classes: int, device: str, curriculum=None, *,
               settings=None, **options):
    """Recovered images ordered by class: targets are laid out ipc slot by slot, then sorted by class.
    `options` go to ``recover`` (objective, init, class_wise)."""
    from trainers.distill import recover

    targets = np.tile(np.arange(num_classes), ipc)
    images, log = recover(teacher, targets.tolist(), settings=settings or recover_settings(config), seed=config.seed,
                          device=device, curriculum=curriculum, **options)
    order = np.argsort(targets, kind="stable")
    tenth = max(1, len(log["bn_loss"]) // 10)
    losses = {name: {"first_tenth": float(values[:tenth].mean()), "last_tenth": float(values[-tenth:].mean())}
              for name, values in log.items()}
    return images[order], targets[order], {"losses": losses}


def generate_sre2l(config: Config, teachers: list, dataset: datasets.Dataset, ipc: int, num_classes: int, device: str):
    return _recovered(config, teachers[0], ipc, num_classes, device)


def generate_cda(config: Config, teachers: list, dataset: datasets.Dataset, ipc: int, num_classes: int, device: str):
    return _recovered(config, teachers[0], ipc, num_classes, device, cda_curriculum(config))


def real_views(config: Config, dataset: datasets.Dataset, per_class: int):
    """Up to `per_class` seeded real images per class as augmented, normalised training views (one
    RandomResizedCrop(crop_scale) + flip each): what G-VBSM's and LPLD's real statistics are taken on."""
    from trainers.augment import train_views

    images, labels, _ = candidate_pool(dataset, per_class, config.seed, config.data.mode)
    views = train_views(np.transpose(images, (0, 2, 3, 1)), np.arange(len(images)), epoch=0, seed=config.seed,
                        size=config.data.image_size, scale=tuple(config.distill.crop_scale),
                        mean=config.data.mean, std=config.data.std)
    return views, labels


def generate_gvbsm(config: Config, teachers: list, dataset: datasets.Dataset, ipc: int, num_classes: int, device: str):
    """G-VBSM: every backbone's conv statistics on real views, then recovery against the backbones in turn."""
    from trainers.distill import GvbsmObjective, GvbsmSettings, conv_statistics

    d = config.distill
    views, _ = real_views(config, dataset, d.stats_pool)
    teachers = [teacher.to(device).eval().requires_grad_(False) for teacher in teachers]
    conv_targets = [conv_statistics(teacher, views) for teacher in teachers]
    gvbsm = GvbsmSettings(momentum=d.gvbsm_momentum, drop_rate=d.gvbsm_drop_rate, nuc_norm=d.gvbsm_nuc_norm,
                          tau=d.gvbsm_tau)

    def objective(targets, batch_index: int) -> GvbsmObjective:
        return GvbsmObjective(teachers, conv_targets, gvbsm, d.first_bn_multiplier,
                              np.random.default_rng([config.seed, batch_index, 1]))

    images, labels, extra = _recovered(config, teachers[0], ipc, num_classes, device, objective=objective,
                                       settings=recover_settings(config, lr=d.gvbsm_lr))
    return images, labels, {**extra, "statistics_images": len(views)}


def generate_lpld(config: Config, teachers: list, dataset: datasets.Dataset, ipc: int, num_classes: int, device: str):
    """LPLD: class-wise batches matched to class-wise BatchNorm statistics of real views."""
    from trainers.distill import class_bn_statistics, lpld_objective

    views, labels = real_views(config, dataset, config.distill.stats_pool)
    teacher = teachers[0].to(device).eval().requires_grad_(False)
    objective = lpld_objective(teacher, class_bn_statistics(teacher, views, labels),
                               config.distill.first_bn_multiplier)
    images, out_labels, extra = _recovered(config, teacher, ipc, num_classes, device, objective=objective,
                                           class_wise=True)
    return images, out_labels, {**extra, "statistics_images": len(views)}


def generate_dwa(config: Config, teachers: list, dataset: datasets.Dataset, ipc: int, num_classes: int, device: str):
    """DWA: recovery from ipc seeded real images per class against a directed adjustment of the teacher."""
    from trainers.distill import DwaObjective

    d = config.distill
    images, labels, rows = candidate_pool(dataset, ipc, config.seed, config.data.mode)
    counts = np.bincount(labels, minlength=num_classes)
    if counts.min() < ipc:
        raise DataError(f"DWA at IPC {ipc} starts from {ipc} real images per class; class {int(counts.argmin())} "
                        f"has {int(counts.min())}")
    slots = np.tile(np.arange(num_classes), ipc)  # _recovered's layout: slot k holds class c's k-th image
    first = np.searchsorted(labels, np.arange(num_classes))
    init = images[first[slots] + np.repeat(np.arange(ipc), num_classes)]
    teacher = teachers[0].to(device).eval().requires_grad_(False)

    def objective(targets, batch_index: int) -> DwaObjective:
        return DwaObjective(teacher, d.first_bn_multiplier, rho=d.dwa_rho, steps=d.dwa_steps, var_weight=d.dwa_r_var)

    out, out_labels, extra = _recovered(config, teacher, ipc, num_classes, device, objective=objective, init=init)
    return out, out_labels, {**extra, "init_rows": rows}


def candidate_pool(dataset: datasets.Dataset, pool: int, seed: int, mode: str) -> tuple[np.ndarray, np.ndarray, list]:
    """RDED's candidates: up to `pool` seeded random real images per class, decoded to uint8 NCHW."""
    rng = np.random.default_rng([seed, pool])
    groups = per_class_indices(class_id_array(dataset))
    rows = np.concatenate([np.sort(rng.choice(members, size=min(pool, len(members)), replace=False))
                           for _, members in sorted(groups.items())])
    subset = dataset.select(rows.tolist())
    pixels = [np.asarray(image.convert(mode)) for image in subset["image"]]
    images = np.stack([p[None] if p.ndim == 2 else np.transpose(p, (2, 0, 1)) for p in pixels])
    return images, class_id_array(subset), rows.tolist()


def generate_rded(config: Config, teachers: list, dataset: datasets.Dataset, ipc: int, num_classes: int, device: str):
    from trainers.distill import rded

    d = config.distill
    images, labels, rows = candidate_pool(dataset, d.rded_pool, config.seed, config.data.mode)
    try:
        out, out_labels = rded(teachers[0], images, labels, ipc=ipc, grid=d.rded_grid,
                               candidates_per_image=d.rded_candidates, seed=config.seed, device=device,
                               mean=config.data.mean, std=config.data.std)
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    return out, out_labels, {"candidate_images": len(rows)}


GENERATORS = {"sre2l": generate_sre2l, "cda": generate_cda, "gvbsm": generate_gvbsm, "lpld": generate_lpld,
              "rded": generate_rded, "dwa": generate_dwa}


def _distill_method(name: str):
    def method(config: Config, dataset: datasets.Dataset) -> datasets.Dataset:
        return distilled_set(config, dataset, name)

    method.__name__ = f"method_{name}"
    method.__doc__ = f"{name}: exactly IPC distilled images per class, cached (docs/protocol.md §Distillation)."
    return method


def generation_cost(config: Config) -> dict[str, float]:
    """The cell's distilled set's cost from its manifest: seconds to generate it and images made."""
    manifest = read_manifest(distilled_dir(config, config.data.method, require_ipc(config)))
    return {names.DISTILL_GENERATION_S: manifest["generation_seconds"],
            names.DISTILL_GENERATION_IMAGES: manifest["images"]}


def _teachers(name: str):
    return lambda config: [distill_teacher_config(config, model) for model in teacher_models(config, name)]


def lpld_label_ratio(config: Config) -> float:
    """LPLD's soft cells keep distill.label_keep_ratio of the soft-label pool (docs/protocol.md §Distillation)."""
    return config.distill.label_keep_ratio


DISTILL_METHODS = {name: MethodSpec(_distill_method(name), teachers=_teachers(name), generation_cost=generation_cost,
                                    soft_label_ratio=lpld_label_ratio if name == "lpld" else keeps_every_label)
                   for name in DISTILL_NAMES}


# ---------------------------------------------------------------- the verb


def full_training_set(config: Config) -> datasets.Dataset:
    data = config.data
    return load_source(data.train, data.train_split, data_root=config.data_root, image_size=data.image_size,
                       mode=data.mode, classes=data.classes).dataset


def cmd_distill(config: Config) -> int:
    """`distill`: write (or find) the set of data.method at data.ipc and data.seed; print where and its cost."""
    method = config.data.method
    if method not in DISTILL_NAMES:
        raise ConfigError(f"distill needs --method one of {list(DISTILL_NAMES)}, got '{method}'")
    if config.data.source_template:
        config = replace(config, {"data.source_template": None})
    started = time.perf_counter()
    distilled_set(config, full_training_set(config), method)
    folder = distilled_dir(config, method, config.data.ipc)
    manifest = read_manifest(folder)
    print(f"{method} IPC {manifest['ipc']} seed {manifest['seed']}: {manifest['images']} images, generated in "
          f"{manifest['generation_seconds']:.1f} s on {manifest['device']} (teacher {manifest['teacher_key']}); "
          f"this command {time.perf_counter() - started:.1f} s; written to {folder}")
    return 0
