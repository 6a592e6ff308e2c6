"""Teacher and training-dynamics registry: artifact keys, where they live, how cells find them.

A teacher, and the per-sample training dynamics recorded while a model of the teacher recipe
trains, are cached artifacts. Each is keyed by everything that determines it (docs/protocol.md
§Teachers and caches): the teacher architecture, epochs, batch, crop scale and the rest of the
recipe (optimizer, lr, weight decay, schedule warm-up, augmentation, input and image size, colour
mode, normalisation), the seed, and the fingerprint of the full training set. Another setting is
another key, so another file: an artifact trained with other settings is never picked up.

Run r of the recipe (seed teacher.seed + r) records the dynamics of score run r; run 0 is also the
teacher. Every cell records the keys it used (`artifact_params`), and `report` refuses to average
cells whose keys differ.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from orchestrator.config import Config, flatten, replace
from orchestrator.errors import ConfigError

ARTIFACT_VERSION = 1
RECIPE_KEYS = ("model.name", "model.input_size", "schedule.epochs", "schedule.warmup_epochs", "train.batch_size",
               "augment.scale", "augment.ratio", "augment.hflip", "mix.type", "label_mode", "optim.name",
               "optim.lr", "optim.weight_decay", "optim.momentum", "seed", "data.image_size", "data.mode",
               "data.mean", "data.std")
TEACHER_FIX = ("train it with `python -m orchestrator teacher --force --config <your protocol>` "
               "(same data and output_dir)")


def teacher_training_config(config: Config, run: int = 0) -> Config:
    """The cell of score run `run`: the full training set, hard labels, the teacher recipe.

    Run 0 is the teacher itself; run r trains the same recipe with seed teacher.seed + r.
    """
    return replace(config, {"data.method": "full", "data.ipc": None, "label_mode": "hard",
                            "model.name": config.teacher.model, "schedule.epochs": config.teacher.epochs,
                            "train.batch_size": config.teacher.batch_size, "mix.type": "none",
                            "augment.scale": list(config.teacher.crop_scale), "seed": config.teacher.seed + run,
                            "eval.every": 1, "train.checkpoint_every": 1, "teacher.source": "auto",
                            "train.threads": 0,  # the driver trains it alone: every core, whatever cells use
                            "variant": None})  # shared by every cell of a sweep, whatever grid asked for it


_FINGERPRINTS: dict[tuple, str] = {}


def full_set_fingerprint(config: Config) -> str:
    """Fingerprint of the full training set (what a teacher and its dynamics train on), once per process."""
    data = config.data
    key = (data.train, data.train_split, str(config.data_root), data.image_size, data.mode, json.dumps(data.classes))
    if key not in _FINGERPRINTS:
        from orchestrator.data.select import fingerprint
        from orchestrator.method_spec import load_train_source

        full = replace(config, {"data.method": "full", "data.ipc": None})
        _FINGERPRINTS[key] = fingerprint(load_train_source(full).dataset)
    return _FINGERPRINTS[key]


def artifact_recipe(config: Config, run: int = 0) -> dict:
    """Everything that determines score run `run` (and, for run 0, the teacher)."""
    flat = flatten(teacher_training_config(config, run))
    recipe = {key: flat[key] for key in RECIPE_KEYS}
    recipe.update(train_fingerprint=full_set_fingerprint(config), version=ARTIFACT_VERSION)
    return recipe


def _short_hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def artifact_key(config: Config, run: int = 0) -> str:
    """`<model>-e<epochs>-s<seed>-<hash of the recipe>`: readable, and unique per recipe."""
    recipe = artifact_recipe(config, run)
    return f"{recipe['model.name']}-e{recipe['schedule.epochs']}-s{recipe['seed']}-{_short_hash(recipe)}"


def teacher_key(config: Config) -> str:
    return artifact_key(config, 0)


def teacher_path(config: Config) -> Path:
    return config.out / "teachers" / teacher_key(config) / f"{config.teacher.model}.pt"


def dynamics_dir(config: Config, run: int = 0) -> Path:
    """Per-sample training dynamics of score run `run` (run 0: the teacher run's)."""
    return config.out / "dynamics" / artifact_key(config, run)


def dynamics_dirs(config: Config) -> list[Path]:
    return [dynamics_dir(config, run) for run in range(config.prune.score_runs)]


def dynamics_key(config: Config) -> str:
    """One key for the set of score runs a pruning rule reads."""
    keys = [artifact_key(config, run) for run in range(config.prune.score_runs)]
    return f"{len(keys)}x{keys[0]}" if len(keys) == 1 else f"{len(keys)}x-{_short_hash(keys)}"


def resolve_teacher(config: Config) -> str:
    """The teacher spec a soft-label cell loads: a registered file, a given path, or timm:<name>.

    A file is read here, in the driver, before any training starts: a missing, unreadable or
    mismatched file (other recipe, other training set) is a ConfigError with the fix.
    """
    from trainers.models import is_saved_teacher, read_weights_file, weights_spec

    source = config.teacher.source
    if source.startswith("timm:"):
        check_hub_weights(source.removeprefix("timm:"))
        return source
    path = teacher_path(config) if source == "auto" else Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"soft labels need a teacher, and none is registered at {path} for this recipe and training set. "
            f"Fix: {TEACHER_FIX}, or set teacher.source to a saved teacher file, a weights file "
            f"or timm:<pretrained name>")
    if source != "auto" and not is_saved_teacher(path):  # a plain state dict of teacher.model's architecture
        read_weights_file(path)
        return weights_spec(config.teacher.model, path.resolve())
    meta = read_teacher_meta(path)
    if source == "auto" and meta.get("teacher_key") != teacher_key(config):
        raise ConfigError(f"teacher file {path} was trained with other settings (key {meta.get('teacher_key')}, "
                          f"this config needs {teacher_key(config)}). Fix: {TEACHER_FIX}")
    return str(path)


def check_hub_weights(name: str) -> None:
    """A hub teacher's weights must be cached here or downloadable: offline and uncached is one line with the fix."""
    import huggingface_hub
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not huggingface_hub.is_offline_mode():
        return  # unknown names and download failures are reported when the teacher loads
    cached = cfg.hf_hub_id and huggingface_hub.try_to_load_from_cache(cfg.hf_hub_id, "model.safetensors")
    if not isinstance(cached, str):
        raise ConfigError(f"soft labels need the pretrained teacher timm:{name}, whose weights are not cached here and "
                          f"the hub is offline (HF_HUB_OFFLINE). Fix: set teacher.source to a local weights file for "
                          f"teacher.model (e.g. torchvision's {Path(cfg.url or 'resnet18-f37072fd.pth').name}; "
                          f"rethinkdc: --teacher-weights FILE) or to a teacher trained by "
                          f"`python -m orchestrator teacher`")


def read_teacher_meta(path: Path) -> dict:
    """The teacher file's meta, read safely (weights only); an unreadable file names the fix."""
    from trainers.models import teacher_meta

    fix = f"{TEACHER_FIX}, or point teacher.source at an intact file"
    try:
        return teacher_meta(path, fix=fix)  # a damaged or pickled file: CheckpointError with the fix
    except ConfigError as exc:
        raise ConfigError(f"{exc}. Fix: {fix}") from exc


def artifact_params(config: Config, teacher: str | None, uses_dynamics: bool) -> tuple[dict, dict]:
    """(params, tags) a cell records: the keys of the teacher and dynamics it used, and the teacher file
    (its path and the sha256 of its bytes: a teacher trained again to the same recipe on another machine
    has the same key but, its floating-point sums differing, other weights).

    `teacher` is resolve_teacher's spec (None for hard labels). A hub teacher is keyed by its name,
    a given file by the key in its meta (or its sha256 when it has none).
    """
    params, tags = {}, {}
    if teacher is not None:
        params["teacher_key"] = (hub_teacher_key(teacher) if teacher.startswith("timm:")
                                 else file_teacher_key(Path(teacher)))
        tags["teacher_path"] = teacher
        weights = Path(teacher.partition("@")[2] if teacher.startswith("timm:") else teacher)
        if weights.is_file():  # the recipe's key names how it was trained; this, which file it was
            tags["teacher_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    if uses_dynamics:
        params["dynamics_key"] = dynamics_key(config)
    return params, tags


def hub_teacher_key(spec: str) -> str:
    """`timm:<name>`, or `timm:<name>@sha256-…` for local weights: the key names the weights, not where they lie."""
    name, _, path = spec.partition("@")
    return f"{name}@sha256-{hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]}" if path else name


def file_teacher_key(path: Path) -> str:
    key = read_teacher_meta(path).get("teacher_key")
    return key or "sha256-" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def record_artifact_keys(uri: str, run_id: str, config: Config, teacher: str | None, uses_dynamics: bool) -> None:
    """Log the cell's artifact keys as MLflow params and the teacher file as a tag.

    A resumed cell whose artifacts changed since it started (another key) is refused: its epochs
    would mix two teachers or two score sets.
    """
    from orchestrator.tracking import ParamsRefused, log_params_and_tags

    params, tags = artifact_params(config, teacher, uses_dynamics)
    try:
        log_params_and_tags(uri, run_id, params, tags)
    except ParamsRefused as exc:
        raise ConfigError(f"MLflow run {run_id} was started with other teacher/dynamics keys than {params}: "
                          f"rerun the cell with --force ({exc})") from exc
