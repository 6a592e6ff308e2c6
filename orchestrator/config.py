"""Typed, frozen benchmark configuration: YAML protocols, inheritance, overrides, validation.

A protocol file is YAML whose sections mirror the dataclasses below. A file may name a `base:`
file (relative to itself) whose values it overrides. Command-line overrides use one form,
`section.key=value` (the value parsed as YAML), and always beat the files. Unknown keys are an
error that names the closest valid key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import ConfigError, did_you_mean

NONE_STRINGS = {"none", "null", "~", ""}


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how the compressed training set is formed."""

    train: str = "fashion-mnist"  # full training set, compressed set folder, parquet, or hub key
    train_split: str = "train"
    val: str = "fashion-mnist"
    val_split: str = "test"
    method: str = "random"  # a registered method: random, first, full, a pruning rule, pca, ...
    ipc: int | None = 10  # images per class; None keeps every image
    source_template: str | None = None  # e.g. "he-yang/2025-rethinkdc-imagenet-{method}-ipc-{ipc}"
    hub_methods: list[str] | None = None  # methods the template provides; None = all but full
    image_size: int = 28  # storage resolution of every image
    mode: str = "L"  # "L" (grey) or "RGB"
    classes: list[str] | None = None  # explicit class list, index = class id
    mean: tuple[float, ...] = (0.2860,)
    std: tuple[float, ...] = (0.3530,)
    root: str = "data"  # prepared datasets and subset cache, relative to output_dir
    check_images: bool = True  # decode every training image of a user-given dataset before training


@dataclass(frozen=True)
class ModelConfig:
    name: str = "convnet3"
    input_size: int = 28  # training crop size fed to the student


@dataclass(frozen=True)
class TeacherConfig:
    """Frozen teacher for soft labels: "auto" finds the one `orchestrator teacher` registered."""

    # "auto", a saved teacher file, a weights file (state dict) of `model`, or "timm:<pretrained name>"
    source: str = "auto"
    model: str = "convnet3"  # architecture `orchestrator teacher` trains
    temperature: float = 20.0
    epochs: int = 6  # how long `orchestrator teacher` trains it on the full training set
    batch_size: int = 256
    crop_scale: tuple[float, float] = (0.35, 1.0)  # its RandomResizedCrop: a teacher should be accurate
    seed: int = 0  # the teacher run's seed (score run r uses seed + r); shared by every cell seed


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    momentum: float = 0.9


@dataclass(frozen=True)
class ScheduleConfig:
    epochs: int = 300
    warmup_epochs: int = 0


@dataclass(frozen=True)
class AugmentConfig:
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 4 / 3)
    hflip: float = 0.5


@dataclass(frozen=True)
class MixConfig:
    type: str = "none"  # none | mixup | cutmix | both
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5


@dataclass(frozen=True)
class EvalConfig:
    resize: int = 28
    crop: int = 28
    batch_size: int = 512
    every: int = 1  # evaluate every N epochs (and always after the last)
    precision: str = "fp32"  # fp32 | bf16 (autocast) | auto (bf16 where the device computes it natively)


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 128
    grad_accum: int = 1
    workers: int = 1  # Ray Train workers (DDP); 0 = in the cell's own process (Ray Train local mode)
    cpus_per_worker: float = 1.0
    threads: int = 0  # torch threads per worker; 0 = Ray's default (the worker's CPU count)
    use_gpu: bool | None = None  # None = use CUDA when Ray sees a GPU
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    record_dynamics: bool = False  # write per-sample training dynamics (pruning scores)
    shuffle_buffer: int = 20000
    precision: str = "fp32"  # fp32 | bf16 (autocast of the forward and loss; weights and optimizer stay fp32) | auto
    channels_last: bool | str = False  # NHWC memory format for the student's convolutions; auto: if calibrated faster
    # torch.compile the student (eager, with a warning, if it cannot); auto: if calibrated faster
    compile: bool | str = False
    # on CPU, forward/backward N views at a time where that keeps the gradient (no BatchNorm); 0 = whole batch
    chunk: int = 0


@dataclass(frozen=True)
class PruneConfig:
    """Pruning rules and PCA (docs/protocol.md §Pruning scores, §Selection, §PCA).

    Scores come from the training dynamics of `score_runs` runs of the teacher recipe (run 0 is the
    teacher itself, run r uses seed teacher.seed + r).
    """

    score_runs: int = 2  # independent runs whose scores are combined (Paul et al. 2021 average EL2N over runs)
    el2n_epochs: int = 2  # EL2N averaged over the first N epochs of each run: early training (Paul et al.)
    aum_margin: str = "logit"  # logit (Pleiss et al. 2020, mean) | probability (CCS's code, summed)
    mis_ratio: float | None = None  # ccs: hardest fraction dropped first; None follows the prune rate
    strata: int = 50  # ccs: equal-width score strata
    ccs_score: str = "aum"  # ccs: the score it stratifies (forgetting | el2n | aum)
    ccs_scope: str = "global"  # ccs: drop and strata over the whole set (Zheng et al.) | per class
    reverse: bool = False  # forgetting/el2n/aum: keep the easiest samples instead of the hardest
    pca_grid: int = 2  # pca: grid x grid whole images tiled into one stored image
    pca_views: str = "image"  # pca Augment: one view per stored image per epoch, one per "tile", or
                              # "whole": no Augment step, crops over the whole combined image (ablation)
    pca_rule: str = "el2n"  # pca: the rule whose easiest samples it keeps (random, ccs: their own choice)


@dataclass(frozen=True)
class DistillConfig:
    """SRe2L, CDA, G-VBSM, LPLD, RDED and DWA generated here (docs/protocol.md §Distillation); defaults
    for 28-px Fashion-MNIST.

    BatchNorm teachers are the teacher recipe with teacher.model = teacher_model (G-VBSM: each of
    gvbsm_teachers), each trained and cached under its own key.
    """

    teacher_model: str = "convnet3_bn_w32"  # BN teacher (squeeze) for recover and RDED scoring
    iterations: int = 200  # recover steps per batch (SRe2L/CDA: 1000 CIFAR, 4000 ImageNet script)
    lr: float = 0.25  # Adam on the pixels, betas (0.5, 0.9), cosine to 0 (SRe2L scripts: 0.25)
    r_bn: float = 0.1  # BatchNorm-statistics loss weight (SRe2L ImageNet 0.01, CDA up to 0.25; 3 small BN layers here)
    first_bn_multiplier: float = 10.0  # extra weight on the first BN layer (SRe2L default)
    jitter: int = 4  # random roll of up to N px per step (SRe2L: 32 at 224 px, 4 at 32 px)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # recover RandomResizedCrop scale (CDA: lower bound anneals)
    batch: int = 100  # images optimised together (SRe2L --batch-size 100)
    cda_mode: str = "cosine"  # CDA curriculum of the crop's lower bound: step | linear | cosine
    cda_milestone: float = 1.0  # fraction of the iterations over which it anneals from 1 to crop_scale[0]
    rded_grid: int = 2  # RDED factor: grid x grid patches per stored image
    rded_candidates: int = 5  # RDED --num-crop: random crops scored per real image (best one kept)
    rded_pool: int = 300  # RDED --mipc: real images drawn per class as candidates
    stats_pool: int = 1000  # real images per class whose statistics G-VBSM (conv) and LPLD (class BN) match
    # backbones, in turn
    gvbsm_teachers: list[str] = field(default_factory=lambda: ["convnet3_bn_w32", "convnet4_bn_w32"])
    gvbsm_lr: float = 0.05  # G-VBSM CIFAR-10 recover.sh --lr 0.05
    gvbsm_momentum: float = 0.8  # alpha of the moving statistics (G-VBSM CIFAR --training-momentum default)
    gvbsm_drop_rate: float = 0.4  # beta_dr: chance a conv term is dropped per step (G-VBSM CIFAR default)
    gvbsm_nuc_norm: float = 1.0  # weight of the eigenvalue diversity term (recover.sh --nuc-norm 1.)
    gvbsm_tau: float = 4.0  # its temperature (--tau default)
    label_keep_ratio: float = 0.025  # LPLD soft cells: fraction of the soft-label pool kept (paper's 40x)
    dwa_rho: float = 0.015  # DWA --rho 15e-3: radius of the directed weight adjustment
    dwa_steps: int = 12  # DWA --steps 12 (CIFAR, Tiny-ImageNet): adjustment steps of rho / steps
    dwa_r_var: float = 11.0  # DWA --r-var 11 (CIFAR): weight of the BN variance term


@dataclass(frozen=True)
class Config:
    name: str = "custom"
    label_mode: str = "hard"  # hard | soft
    seed: int = 0
    output_dir: str = "outputs"
    experiment: str | None = None  # MLflow experiment; defaults to the protocol name
    variant: str | None = None  # a name for what a sweep grid changes (its `set:`), shown beside the method in tables
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    @property
    def out(self) -> Path:
        return Path(self.output_dir).expanduser().resolve()

    @property
    def data_root(self) -> Path:
        root = Path(self.data.root).expanduser()
        return root if root.is_absolute() else self.out / root

    @property
    def in_chans(self) -> int:
        return 1 if self.data.mode == "L" else 3

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.name


CHOICES = {
    "label_mode": {"hard", "soft"},
    "data.mode": {"L", "RGB"},
    "optim.name": {"adamw", "sgd"},
    "mix.type": {"none", "mixup", "cutmix", "both"},
    "prune.ccs_score": {"forgetting", "el2n", "aum"},
    "prune.pca_rule": {"forgetting", "el2n", "aum", "ccs", "random"},
    "prune.pca_views": {"image", "tile", "whole"},
    "prune.aum_margin": {"logit", "probability"},
    "prune.ccs_scope": {"global", "class"},
    "distill.cda_mode": {"step", "linear", "cosine"},
    "train.precision": {"fp32", "bf16", "auto"},
    "eval.precision": {"fp32", "bf16", "auto"},
    "train.channels_last": {False, True, "auto"},
    "train.compile": {False, True, "auto"},
}
POSITIVE = ["schedule.epochs", "teacher.epochs", "teacher.batch_size", "train.batch_size", "train.grad_accum",
            "train.checkpoint_every",
            "data.image_size", "model.input_size", "eval.resize", "eval.crop", "eval.batch_size",
            "eval.every", "train.keep_checkpoints", "prune.el2n_epochs", "prune.strata", "prune.pca_grid",
            "prune.score_runs", "distill.iterations", "distill.batch", "distill.rded_grid",
            "distill.rded_candidates", "distill.rded_pool", "distill.stats_pool", "distill.dwa_steps"]


# ---------------------------------------------------------------- loading and overrides


def read_yaml(path: str | Path) -> dict:
    """Read a protocol YAML, following `base:` links (relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: pass a file from configs/ "
                          f"(e.g. configs/fmnist-hard.yaml)")
    raw = read_yaml_file(path, "config file")
    if raw is None:  # else it would train on the built-in defaults without saying so
        raise ConfigError(f"config file {path} is empty (or only comments): pass a protocol from configs/ "
                          f"or start one with `base: fmnist-hard.yaml`")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    return deep_merge(read_yaml(path.parent / base), raw)


def read_yaml_file(path: Path, what: str) -> Any:
    """The plain data in a YAML file (`safe_load`: tags such as !!python/object are refused, never run).

    Shared by protocol and sweep files: invalid YAML is one ConfigError naming the file, the line
    and the fix, instead of the parser's multi-line report.
    """
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error_message(path, exc, what)) from exc


def yaml_error_message(path: Path, exc: yaml.YAMLError, what: str) -> str:
    """One line: where the parser stopped, what it found, and how to fix it."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = (getattr(exc, "problem", None) or str(exc).splitlines()[0]).strip()
    if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in problem:
        tag = problem.split("tag", 1)[1].strip(" '").replace("tag:yaml.org,2002:", "!!")
        return (f"{what} {path}{where}: the tag {tag} is not allowed (files are read as plain data, never "
                f"as Python objects). Fix: remove the tag and write the value as a plain string, number, "
                f"list or mapping")
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None:
        problem += f" ({context} started at line {context_mark.line + 1})"
    return (f"{what} {path} is not valid YAML{where}: {problem}. Fix: correct the YAML there "
            f"(indentation, a missing ':', an unclosed bracket or quote)")


def deep_merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> tuple[str, Any]:
    """`optim.lr=0.01` -> ("optim.lr", 0.01); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value (e.g. optim.lr=0.01)")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from exc


def set_dotted(tree: dict, dotted: str, value: Any) -> dict:
    """Return a copy of `tree` with `a.b.c` set to value (sections created as needed)."""
    head, _, rest = dotted.partition(".")
    out = dict(tree)
    if rest:
        child = out.get(head)
        out[head] = set_dotted(child if isinstance(child, dict) else {}, rest, value)
    else:
        out[head] = value
    return out


def apply_overrides(tree: dict, overrides: dict[str, Any]) -> dict:
    for dotted, value in overrides.items():
        tree = set_dotted(tree, dotted, value)
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Protocol file (optional) + overrides -> validated Config."""
    tree = read_yaml(path) if path else {}
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    return config_from_dict(apply_overrides(tree, overrides or {}))


def config_from_dict(tree: dict) -> Config:
    config = build_dataclass(Config, tree, prefix="")
    validate(config)
    return config


# ---------------------------------------------------------------- typed construction


def build_dataclass(cls: type, tree: Any, prefix: str) -> Any:
    if not isinstance(tree, dict):
        raise ConfigError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping of keys, got {tree!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in tree:
        if key not in known:
            raise ConfigError(unknown_key_message(prefix + str(key), [prefix + k for k in known]))
    values = {name: coerce(hints[name], tree[name], prefix + name) for name in known if name in tree}
    return cls(**values)


def unknown_key_message(key: str, valid: list[str]) -> str:
    hint = did_you_mean(key, valid, cutoff=0.5) or f"valid keys: {', '.join(sorted(valid))}"
    return f"unknown config key '{key}': {hint.strip()}"


def coerce(hint: Any, value: Any, key: str) -> Any:
    """Convert a YAML value to the field's declared type, or raise a ConfigError naming the key."""
    if is_dataclass(hint):
        return build_dataclass(hint, value, key + ".")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if isinstance(value, str) and value.strip().lower() in NONE_STRINGS and type(None) in args:
            return None
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner[:-1]:  # e.g. `bool | str`: true/false, else a word such as "auto"
            try:
                return coerce(option, value, key)
            except ConfigError:
                continue
        return coerce(inner[-1], value, key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            value = [value]
        item_type = args[0] if args else Any
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"'{key}' needs {len(args)} values, got {value!r}")
        items = [coerce(item_type, v, key) for v in value]
        return tuple(items) if origin is tuple else items
    return coerce_scalar(hint, value, key)


def coerce_scalar(hint: Any, value: Any, key: str) -> Any:
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{key}' must be true or false, got {value!r}")
    if hint in (int, float) and not isinstance(value, bool):
        try:
            converted = hint(value)
        except (TypeError, ValueError):
            converted = None
        if converted is not None and (hint is float or float(value) == converted):
            return converted
    if hint is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"'{key}' must be {hint.__name__}, got {value!r}")


def validate(config: Config) -> None:
    flat = flatten(config)
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(f"'{key}' is {flat[key]!r}: choose one of {sorted(allowed, key=str)}")
    for key in POSITIVE:
        if flat[key] < 1:
            raise ConfigError(f"'{key}' must be >= 1, got {flat[key]}")
    if config.data.ipc is not None and config.data.ipc < 1:
        raise ConfigError(f"'data.ipc' must be >= 1 (or null for the whole set), got {config.data.ipc}")
    if len(config.data.mean) != len(config.data.std):
        raise ConfigError("'data.mean' and 'data.std' need the same number of channels")
    if config.train.workers < 0:
        raise ConfigError("'train.workers' must be >= 0 (0 = local mode in the driver)")
    check_distill(config.distill)
    if config.train.chunk < 0:
        raise ConfigError(f"'train.chunk' must be >= 0 (0 = the whole batch at once), got {config.train.chunk}")


def check_distill(distill: DistillConfig) -> None:
    if not 0 < distill.label_keep_ratio <= 1:
        raise ConfigError(f"'distill.label_keep_ratio' must be in (0, 1], got {distill.label_keep_ratio}")
    if not 0 <= distill.gvbsm_drop_rate < 1 or not 0 <= distill.gvbsm_momentum < 1:
        raise ConfigError("'distill.gvbsm_drop_rate' and 'distill.gvbsm_momentum' must be in [0, 1)")
    if not distill.gvbsm_teachers:
        raise ConfigError("'distill.gvbsm_teachers' needs at least one model (G-VBSM uses several)")


# ---------------------------------------------------------------- views of a config


def to_dict(config: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def flatten(config: Config | dict, prefix: str = "") -> dict[str, Any]:
    tree = to_dict(config) if is_dataclass(config) else config
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def replace(config: Config, overrides: dict[str, Any]) -> Config:
    """A new validated Config with dotted overrides applied."""
    return config_from_dict(apply_overrides(to_dict(config), overrides))


def anchor_paths(config: Config) -> Config:
    """Relative local paths made absolute against the launching directory.

    Ray Tune runs every trial in its own working directory, so a relative `output_dir` (or image
    folder, or teacher file) would resolve to a different place in each trial.
    """
    overrides: dict[str, Any] = {"output_dir": str(config.out)}
    for key, value in (("data.train", config.data.train), ("data.val", config.data.val),
                       ("teacher.source", config.teacher.source)):
        path = Path(value).expanduser() if value else None
        if path is not None and not path.is_absolute() and path.exists():
            overrides[key] = str(path.resolve())
    return replace(config, overrides)


RUN_ONLY_KEYS = {"output_dir", "experiment", "variant", "data.root", "train.checkpoint_every",
                 "train.keep_checkpoints", "data.check_images", "eval.batch_size", "train.chunk"}


# Keys added after cells were recorded: hashed only when set away from their default, so the cells
# recorded before them keep their names and hashes (changing one of these defaults needs a new key).
LATE_KEYS = {"distill.stats_pool", "distill.gvbsm_teachers", "distill.gvbsm_lr", "distill.gvbsm_momentum",
             "distill.gvbsm_drop_rate", "distill.gvbsm_nuc_norm", "distill.gvbsm_tau", "distill.label_keep_ratio",
             "distill.dwa_rho", "distill.dwa_steps", "distill.dwa_r_var"}


def config_hash(config: Config) -> str:
    """Hash of every value that can change a cell's result (not where it is stored)."""
    defaults = flatten(Config())
    flat = {k: v for k, v in flatten(config).items()
            if k not in RUN_ONLY_KEYS and not (k in LATE_KEYS and v == defaults[k])}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:10]


def cell_name(config: Config) -> str:
    ipc = "all" if config.data.ipc is None else config.data.ipc
    return (f"{config.data.method}-ipc{ipc}-{config.label_mode}-{config.model.name}"
            f"-s{config.seed}-{config_hash(config)}")
