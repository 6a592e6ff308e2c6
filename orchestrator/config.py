"""Typed, frozen benchmark configuration: YAML protocols, inheritance, overrides, validation.

A protocol file is YAML whose sections mirror the dataclasses below. A file may name a `base:`
file (relative to itself) whose values it overrides. Command-line overrides use one form,
`section.key=value` (the value parsed as YAML), and always beat the files. Unknown keys are an
error that names the closest valid key.

What validation and the cell hash need to know about a key sits on its field: a `Literal` type
lists its choices, and `setting(...)` marks it positive, run-only (not hashed) or late (hashed only
away from its default).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any, Iterator, Literal

import yaml

from orchestrator.errors import ConfigError, did_you_mean

NONE_STRINGS = {"none", "null", "~", ""}

# Marks a field's metadata may carry (set only through `setting`).
POSITIVE = "positive"  # must be >= 1
RUN_ONLY = "run_only"  # where or how a cell runs, not what it computes: left out of its hash
LATE = "late"  # added after cells were recorded: hashed only when set away from its default, so the cells
# recorded before it keep their names and hashes (changing such a default needs a new key)


def setting(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, positive: bool = False,
            run_only: bool = False, late: bool = False) -> Any:
    """A config field with its marks (POSITIVE, RUN_ONLY, LATE) in its metadata."""
    marks = {POSITIVE: positive, RUN_ONLY: run_only, LATE: late}
    return field(default=default, default_factory=factory, metadata={mark: True for mark, on in marks.items() if on})


Precision = Literal["fp32", "bf16", "auto"]  # bf16: autocast; auto: bf16 where the device computes it natively


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
    image_size: int = setting(28, positive=True)  # storage resolution of every image
    mode: Literal["L", "RGB"] = "L"  # grey or colour
    classes: list[str] | None = None  # explicit class list, index = class id
    mean: tuple[float, ...] = (0.2860,)
    std: tuple[float, ...] = (0.3530,)
    root: str = setting("data", run_only=True)  # prepared datasets and subset cache, relative to output_dir
    check_images: bool = setting(True, run_only=True)  # decode every image of a user-given dataset before training


@dataclass(frozen=True)
class ModelConfig:
    name: str = "convnet3"
    input_size: int = setting(28, positive=True)  # training crop size fed to the student


@dataclass(frozen=True)
class TeacherConfig:
    """Frozen teacher for soft labels: "auto" finds the one `orchestrator teacher` registered."""

    # "auto", a saved teacher file, a weights file (state dict) of `model`, or "timm:<pretrained name>"
    source: str = "auto"
    model: str = "convnet3"  # architecture `orchestrator teacher` trains
    temperature: float = 20.0
    epochs: int = setting(6, positive=True)  # how long `orchestrator teacher` trains it on the full training set
    batch_size: int = setting(256, positive=True)
    crop_scale: tuple[float, float] = (0.35, 1.0)  # its RandomResizedCrop: a teacher should be accurate
    seed: int = 0  # the teacher run's seed (score run r uses seed + r); shared by every cell seed


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    momentum: float = 0.9


@dataclass(frozen=True)
class ScheduleConfig:
    epochs: int = setting(300, positive=True)
    warmup_epochs: int = 0


@dataclass(frozen=True)
class AugmentConfig:
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 4 / 3)
    hflip: float = 0.5


@dataclass(frozen=True)
class MixConfig:
    type: Literal["none", "mixup", "cutmix", "both"] = "none"
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5


@dataclass(frozen=True)
class EvalConfig:
    resize: int = setting(28, positive=True)
    crop: int = setting(28, positive=True)
    batch_size: int = setting(512, positive=True, run_only=True)
    every: int = setting(1, positive=True)  # evaluate every N epochs (and always after the last)
    precision: Precision = "fp32"  # bf16: autocast; auto: bf16 where the device computes it natively


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = setting(128, positive=True)
    grad_accum: int = setting(1, positive=True)
    workers: int = 1  # Ray Train workers (DDP); 0 = in the cell's own process (Ray Train local mode)
    cpus_per_worker: float = 1.0
    threads: int = 0  # torch threads per worker; 0 = Ray's default (the worker's CPU count)
    use_gpu: bool | None = None  # None = use CUDA when Ray sees a GPU
    checkpoint_every: int = setting(10, positive=True, run_only=True)
    keep_checkpoints: int = setting(2, positive=True, run_only=True)
    record_dynamics: bool = False  # write per-sample training dynamics (pruning scores)
    shuffle_buffer: int = 20000
    precision: Precision = "fp32"  # bf16: autocast of the forward and loss (weights and optimizer stay fp32)
    # NHWC memory format for the student's convolutions; auto: if calibrated faster
    channels_last: bool | Literal["auto"] = False
    # torch.compile the student (eager, with a warning, if it cannot); auto: if calibrated faster
    compile: bool | Literal["auto"] = False
    # on CPU, forward/backward N views at a time where that keeps the gradient (no BatchNorm); 0 = whole batch
    chunk: int = setting(0, run_only=True)


@dataclass(frozen=True)
class PruneConfig:
    """Pruning rules and PCA (docs/protocol.md §Pruning scores, §Selection, §PCA).

    Scores come from the training dynamics of `score_runs` runs of the teacher recipe (run 0 is the
    teacher itself, run r uses seed teacher.seed + r).
    """

    # independent runs whose scores are combined (Paul et al. 2021 average EL2N over runs)
    score_runs: int = setting(2, positive=True)
    # EL2N averaged over the first N epochs of each run: early training (Paul et al.)
    el2n_epochs: int = setting(2, positive=True)
    aum_margin: Literal["logit", "probability"] = "logit"  # Pleiss et al. 2020 (mean) | CCS's code (summed)
    mis_ratio: float | None = None  # ccs: hardest fraction dropped first; None follows the prune rate
    strata: int = setting(50, positive=True)  # ccs: equal-width score strata
    ccs_score: Literal["forgetting", "el2n", "aum"] = "aum"  # ccs: the score it stratifies
    # ccs: drop and strata over the whole set (Zheng et al.) or per class
    ccs_scope: Literal["global", "class"] = "global"
    reverse: bool = False  # forgetting/el2n/aum: keep the easiest samples instead of the hardest
    pca_grid: int = setting(2, positive=True)  # pca: grid x grid whole images tiled into one stored image
    # pca Augment: one view per stored image per epoch, one per "tile", or "whole": no Augment step,
    # crops over the whole combined image (ablation)
    pca_views: Literal["image", "tile", "whole"] = "image"
    # pca: the rule whose easiest samples it keeps (random, ccs: their own choice)
    pca_rule: Literal["forgetting", "el2n", "aum", "ccs", "random"] = "el2n"


@dataclass(frozen=True)
class DistillConfig:
    """SRe2L, CDA, G-VBSM, LPLD, RDED and DWA generated here (docs/protocol.md §Distillation); defaults
    for 28-px Fashion-MNIST.

    BatchNorm teachers are the teacher recipe with teacher.model = teacher_model (G-VBSM: each of
    gvbsm_teachers), each trained and cached under its own key.
    """

    teacher_model: str = "convnet3_bn_w32"  # BN teacher (squeeze) for recover and RDED scoring
    # recover steps per batch (SRe2L/CDA: 1000 CIFAR, 4000 ImageNet script)
    iterations: int = setting(200, positive=True)
    lr: float = 0.25  # Adam on the pixels, betas (0.5, 0.9), cosine to 0 (SRe2L scripts: 0.25)
    r_bn: float = 0.1  # BatchNorm-statistics loss weight (SRe2L ImageNet 0.01, CDA up to 0.25; 3 small BN layers here)
    first_bn_multiplier: float = 10.0  # extra weight on the first BN layer (SRe2L default)
    jitter: int = 4  # random roll of up to N px per step (SRe2L: 32 at 224 px, 4 at 32 px)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # recover RandomResizedCrop scale (CDA: lower bound anneals)
    batch: int = setting(100, positive=True)  # images optimised together (SRe2L --batch-size 100)
    cda_mode: Literal["step", "linear", "cosine"] = "cosine"  # CDA curriculum of the crop's lower bound
    cda_milestone: float = 1.0  # fraction of the iterations over which it anneals from 1 to crop_scale[0]
    rded_grid: int = setting(2, positive=True)  # RDED factor: grid x grid patches per stored image
    # RDED --num-crop: random crops scored per real image (best one kept)
    rded_candidates: int = setting(5, positive=True)
    rded_pool: int = setting(300, positive=True)  # RDED --mipc: real images drawn per class as candidates
    # real images per class whose statistics G-VBSM (conv) and LPLD (class BN) match
    stats_pool: int = setting(1000, positive=True, late=True)
    # backbones, in turn
    gvbsm_teachers: list[str] = setting(factory=lambda: ["convnet3_bn_w32", "convnet4_bn_w32"], late=True)
    gvbsm_lr: float = setting(0.05, late=True)  # G-VBSM CIFAR-10 recover.sh --lr 0.05
    # alpha of the moving statistics (G-VBSM CIFAR --training-momentum default)
    gvbsm_momentum: float = setting(0.8, late=True)
    # beta_dr: chance a conv term is dropped per step (G-VBSM CIFAR default)
    gvbsm_drop_rate: float = setting(0.4, late=True)
    # weight of the eigenvalue diversity term (recover.sh --nuc-norm 1.)
    gvbsm_nuc_norm: float = setting(1.0, late=True)
    gvbsm_tau: float = setting(4.0, late=True)  # its temperature (--tau default)
    # LPLD soft cells: fraction of the soft-label pool kept (paper's 40x)
    label_keep_ratio: float = setting(0.025, late=True)
    dwa_rho: float = setting(0.015, late=True)  # DWA --rho 15e-3: radius of the directed weight adjustment
    # DWA --steps 12 (CIFAR, Tiny-ImageNet): adjustment steps of rho / steps
    dwa_steps: int = setting(12, positive=True, late=True)
    dwa_r_var: float = setting(11.0, late=True)  # DWA --r-var 11 (CIFAR): weight of the BN variance term


@dataclass(frozen=True)
class Config:
    name: str = "custom"
    label_mode: Literal["hard", "soft"] = "hard"
    seed: int = 0
    output_dir: str = setting("outputs", run_only=True)
    experiment: str | None = setting(None, run_only=True)  # MLflow experiment; defaults to the protocol name
    # a name for what a sweep grid changes (its `set:`), shown beside the method in tables
    variant: str | None = setting(None, run_only=True)
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
    if typing.get_origin(hint) is Literal:  # read as the choices' type; `validate` checks the choice
        return coerce_scalar(type(typing.get_args(hint)[0]), value, key)
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


def leaf_fields(cls: type = Config, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, type hint) of every setting, the sections' settings included."""
    hints = typing.get_type_hints(cls)
    for spec in fields(cls):
        if is_dataclass(hints[spec.name]):
            yield from leaf_fields(hints[spec.name], f"{prefix}{spec.name}.")
        else:
            yield prefix + spec.name, spec, hints[spec.name]


@cache
def field_marks() -> dict[str, frozenset[str]]:
    """dotted key -> the marks `setting` put on its field (POSITIVE, RUN_ONLY, LATE)."""
    return {key: frozenset(spec.metadata) for key, spec, _hint in leaf_fields()}


@cache
def field_choices() -> dict[str, set]:
    """dotted key -> the values its `Literal` type allows (True and False too for `bool | Literal[...]`)."""
    return {key: allowed for key, _spec, hint in leaf_fields() if (allowed := literal_choices(hint))}


def literal_choices(hint: Any) -> set:
    """The values a `Literal` hint (or a union of Literals and bool) allows; empty for any other type."""
    if typing.get_origin(hint) is Literal:
        return set(typing.get_args(hint))
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
    allowed = set().union(*(literal_choices(option) for option in options))
    return allowed | {False, True} if allowed and bool in options else allowed


def validate(config: Config) -> None:
    flat = flatten(config)
    for key, allowed in field_choices().items():
        if flat[key] not in allowed:
            raise ConfigError(f"'{key}' is {flat[key]!r}: choose one of {sorted(allowed, key=str)}")
    for key in (key for key, marks in field_marks().items() if POSITIVE in marks):
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


def config_hash(config: Config) -> str:
    """Hash of every value that can change a cell's result (not where it is stored)."""
    defaults, marks = flatten(Config()), field_marks()
    flat = {k: v for k, v in flatten(config).items()
            if RUN_ONLY not in marks[k] and not (LATE in marks[k] and v == defaults[k])}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:10]


def cell_name(config: Config) -> str:
    ipc = "all" if config.data.ipc is None else config.data.ipc
    return (f"{config.data.method}-ipc{ipc}-{config.label_mode}-{config.model.name}"
            f"-s{config.seed}-{config_hash(config)}")
