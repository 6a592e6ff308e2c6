"""Student and teacher networks: timm registrations, student construction, teacher files.

Owns the small-image architectures registered in timm's registry (``convnet3``, the
dataset-distillation evaluator ConvNet-3; ``convnet3_bn`` / ``convnet3_bn_w32``, the same with
BatchNorm, the SRe2L/CDA/RDED teacher; ``convnet4_bn_w32``, a ConvNet-4 with BatchNorm, G-VBSM's second
backbone; and ``resnet18_small``, timm's resnet18 with a
CIFAR-style stem), ``create_student`` (any timm model by name) and the teacher file format
written by ``save_teacher`` and read by ``load_teacher`` / ``teacher_meta``.
Importing this module is enough for ``timm.create_model('convnet3', ...)`` to work.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import (build_model_with_cfg, generate_default_cfgs, get_pretrained_cfg, model_entrypoint,
                         register_model)
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from orchestrator.errors import CheckpointError, ConfigError, OrchestratorError, did_you_mean
from orchestrator.files import atomic_path

TIMM_PREFIX = "timm:"
TEACHER_FILE_KEYS = ("model_name", "model_kwargs", "state_dict", "meta")
SPEC_ATTRIBUTE = "rethinkdc_spec"


class TeacherUnavailableError(OrchestratorError, RuntimeError):
    """A hub teacher could not be downloaded (offline machine, unknown weights, hub down)."""


# --------------------------------------------------------------------------- registrations


def _cfg(**overrides: Any) -> dict[str, Any]:
    cfg = {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "first_conv": "conv1",
        "classifier": "fc",
    }
    cfg.update(overrides)
    return cfg


default_cfgs = generate_default_cfgs(
    {
        # fixed_input_size tells timm (and create_student) that the model takes img_size.
        "convnet3": _cfg(first_conv="features.0.conv", fixed_input_size=True),
        "convnet3_w32": _cfg(first_conv="features.0.conv", fixed_input_size=True),
        "convnet3_bn": _cfg(first_conv="features.0.conv", fixed_input_size=True),
        "convnet3_bn_w32": _cfg(first_conv="features.0.conv", fixed_input_size=True),
        "convnet4_bn_w32": _cfg(first_conv="features.0.conv", fixed_input_size=True),
        "resnet18_small": _cfg(),
    }
)


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


class ConvBlock(nn.Module):
    """conv3x3 -> norm -> ReLU -> AvgPool2d(2).

    norm "instance": GroupNorm with one group per channel (the DD evaluator's instancenorm);
    "batch": BatchNorm2d (the DD literature's ConvNetBN; SRe2L-style recovery needs its running stats).
    """

    def __init__(self, in_chans: int, width: int, norm: str = "instance") -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, width, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(width) if norm == "batch" else nn.GroupNorm(width, width, affine=True)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.norm(self.conv(x))))


class ConvNet(nn.Module):
    """ConvNet-D (D blocks of ConvBlock) with a linear classifier on the flattened feature map."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 32,
        width: int = 128,
        depth: int = 3,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        height, wide = _pair(img_size)
        feat_h, feat_w = height // 2**depth, wide // 2**depth
        if feat_h < 1 or feat_w < 1:
            raise ConfigError(f"convnet: img_size {img_size} is too small for depth {depth} (needs >= {2**depth})")
        blocks = [ConvBlock(in_chans if index == 0 else width, width, norm) for index in range(depth)]
        self.features = nn.Sequential(*blocks)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = (height, wide)
        self.feature_hw = (feat_h, feat_w)
        self.num_features = self.head_hidden_size = width * feat_h * feat_w
        self.fc = self._make_classifier(num_classes)

    def _make_classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = self._make_classifier(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class SmallStemResNet(ResNet):
    """timm ResNet whose stem keeps full resolution: conv3x3 stride 1 and no max-pool."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        stem_out = self.conv1.out_channels
        self.conv1 = nn.Conv2d(self.in_chans, stem_out, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = nn.Identity()
        for info in self.feature_info:  # timm's reductions count a halving stem and pool; here neither halves
            info["reduction"] = max(1, info["reduction"] // (2 if info["module"] == "act1" else 4))


def _reject_pretrained(name: str, pretrained: bool) -> None:
    if pretrained:
        raise ConfigError(f"{name} has no pretrained weights; train one with `python -m orchestrator teacher`")


@register_model
def convnet3(pretrained: bool = False, **kwargs: Any) -> ConvNet:
    """ConvNet-3 (width 128, instance norm, avg pooling), the dataset-distillation evaluator."""
    _reject_pretrained("convnet3", pretrained)
    kwargs.setdefault("depth", 3)
    return build_model_with_cfg(ConvNet, "convnet3", pretrained=False, **kwargs)


@register_model
def convnet3_w32(pretrained: bool = False, **kwargs: Any) -> ConvNet:
    """ConvNet-3 of width 32: a teacher / dynamics model cheap enough for CPU-only machines."""
    _reject_pretrained("convnet3_w32", pretrained)
    kwargs.update(depth=3, width=32)
    return build_model_with_cfg(ConvNet, "convnet3_w32", pretrained=False, **kwargs)


@register_model
def convnet3_bn(pretrained: bool = False, **kwargs: Any) -> ConvNet:
    """ConvNet-3 (width 128) with BatchNorm2d: the DD literature's ConvNetBN, a BN teacher for SRe2L/CDA."""
    _reject_pretrained("convnet3_bn", pretrained)
    kwargs.update(depth=3, norm="batch")
    return build_model_with_cfg(ConvNet, "convnet3_bn", pretrained=False, **kwargs)


@register_model
def convnet3_bn_w32(pretrained: bool = False, **kwargs: Any) -> ConvNet:
    """ConvNet-3 of width 32 with BatchNorm2d: the distillation teacher cheap enough for CPUs."""
    _reject_pretrained("convnet3_bn_w32", pretrained)
    kwargs.update(depth=3, width=32, norm="batch")
    return build_model_with_cfg(ConvNet, "convnet3_bn_w32", pretrained=False, **kwargs)


@register_model
def convnet4_bn_w32(pretrained: bool = False, **kwargs: Any) -> ConvNet:
    """ConvNet-4 (the DD literature's ConvNetD4) of width 32 with BatchNorm2d: a second BN backbone for
    G-VBSM's statistics matching, another depth at the cost of convnet3_bn_w32."""
    _reject_pretrained("convnet4_bn_w32", pretrained)
    kwargs.update(depth=4, width=32, norm="batch")
    return build_model_with_cfg(ConvNet, "convnet4_bn_w32", pretrained=False, **kwargs)


@register_model
def resnet18_small(pretrained: bool = False, **kwargs: Any) -> SmallStemResNet:
    """ResNet-18 with a small-image stem for 28-32 px inputs; img_size is accepted and ignored."""
    _reject_pretrained("resnet18_small", pretrained)
    kwargs.pop("img_size", None)
    kwargs.setdefault("zero_init_last", False)  # as torchvision's resnet18 (see REFERENCE_INIT)
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return build_model_with_cfg(SmallStemResNet, "resnet18_small", pretrained=False, **model_args, **kwargs)


# --------------------------------------------------------------------------- students


def takes_img_size(name: str) -> bool:
    """True when the timm model ``name`` has an ``img_size`` argument (fixed input size)."""
    cfg = get_pretrained_cfg(name)
    return bool(cfg is not None and cfg.fixed_input_size)


def _check_known(name: str) -> None:
    if timm.is_model(name):
        return
    hint = did_you_mean(name, timm.list_models(), n=5) or "see timm.list_models()"
    raise ConfigError(f"unknown model {name!r}: {hint.strip()}")


# Students are initialised as the reference evaluation builds them (torchvision's resnet18, whose
# residual blocks keep BatchNorm gamma = 1): timm's ResNets zero the last BN of each block unless told.
REFERENCE_INIT = {"timm.models.resnet": {"zero_init_last": False}}


def student_kwargs(name: str, *, num_classes: int, in_chans: int, img_size: int) -> dict[str, Any]:
    """The timm.create_model keyword arguments create_student uses for ``name``."""
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans}
    if takes_img_size(name):
        kwargs["img_size"] = img_size
    kwargs.update(REFERENCE_INIT.get(model_entrypoint(name).__module__, {}))
    return kwargs


def create_student(name: str, *, num_classes: int, in_chans: int, img_size: int) -> nn.Module:
    """A randomly initialised timm model; img_size is passed only to models that take it."""
    _check_known(name)
    kwargs = student_kwargs(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    model = timm.create_model(name, pretrained=False, **kwargs)
    setattr(model, SPEC_ATTRIBUTE, {"model_name": name, "model_kwargs": dict(kwargs)})
    return model


# --------------------------------------------------------------------------- teachers


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def _model_spec(model: nn.Module) -> dict[str, Any]:
    spec = getattr(model, SPEC_ATTRIBUTE, None)
    if spec is None:
        raise ConfigError("save_teacher: model was not built by create_student; pass model_name and model_kwargs")
    return spec


def save_teacher(
    model: nn.Module,
    path: Path,
    meta: dict[str, Any],
    *,
    model_name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Write {"model_name", "model_kwargs", "state_dict", "meta"} to ``path`` (atomically).

    model_name / model_kwargs default to what create_student recorded on the model.
    ``meta`` must hold plain JSON values: the file holds only tensors and such values, so it is read
    back with ``weights_only=True`` (no pickled code).
    """
    try:
        meta = json.loads(json.dumps(dict(meta)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"save_teacher: meta must hold plain JSON values (strings, numbers, lists, dicts): "
                          f"{exc}") from exc
    model = unwrap_model(model)
    if model_name is None or model_kwargs is None:
        spec = _model_spec(model)
        model_name = model_name or spec["model_name"]
        model_kwargs = spec["model_kwargs"] if model_kwargs is None else model_kwargs
    state_dict = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    payload = {
        "model_name": model_name,
        "model_kwargs": dict(model_kwargs),
        "state_dict": state_dict,
        "meta": dict(meta),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_weights_only(path: Path, *, what: str, fix: str, mmap: bool = False) -> Any:
    """A torch file read as tensors and plain values only (`weights_only=True`: no pickled code runs).

    A file holding pickled objects, or a damaged one, is one CheckpointError naming it, why, and `fix`
    (never torch's own advice, which suggests loading it with code execution allowed).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        raise CheckpointError(f"{what} {path} is unreadable ({unreadable_reason(exc)}). Fix: {fix}") from exc


def unreadable_reason(exc: Exception) -> str:
    """Why torch refused a file, in a few words of our own."""
    text = str(exc)
    if "Weights only load failed" in text:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        named = f" ({found.group(1)})" if found else ""
        return f"it holds pickled Python objects{named}, not only weights; loading them could run code"
    if isinstance(exc, FileNotFoundError):
        return "the file is missing"
    first = text.splitlines()[0] if text else type(exc).__name__
    return f"damaged or not a PyTorch file: {first.split('. ')[0]}"


TEACHER_FILE_FIX = "train the teacher again (`python -m orchestrator teacher --force`)"


def _read_teacher_file(path: Path, fix: str = TEACHER_FILE_FIX) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"teacher file not found: {path} (give a file written by save_teacher, or timm:<name>)")
    payload = load_weights_only(path, what="teacher file", fix=fix, mmap=True)
    missing = [key for key in TEACHER_FILE_KEYS if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise ConfigError(f"teacher file {path} lacks {missing}; it was not written by save_teacher")
    return payload


def teacher_meta(path: Path, fix: str = TEACHER_FILE_FIX) -> dict[str, Any]:
    """The ``meta`` dict stored in a teacher file, without building the model (`fix`: what an
    unreadable file's CheckpointError advises)."""
    return dict(_read_teacher_file(Path(path), fix)["meta"])


def _check_teacher_fits(source: str, stored: dict[str, Any], *, num_classes: int, in_chans: int, img_size: int) -> None:
    wanted = {"num_classes": num_classes, "in_chans": in_chans}
    if "img_size" in stored:  # only fixed-input-size models care about the image size
        wanted["img_size"] = img_size
    wrong = {key: (stored.get(key), value) for key, value in wanted.items() if stored.get(key) != value}
    if wrong:
        details = ", ".join(f"{key} is {have}, dataset needs {need}" for key, (have, need) in wrong.items())
        raise ConfigError(f"teacher {source} does not fit this dataset: {details}")


def _freeze(model: nn.Module, device: torch.device | str) -> nn.Module:
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model


def _load_file_teacher(path: Path, *, num_classes: int, in_chans: int, img_size: int) -> nn.Module:
    payload = _read_teacher_file(path)
    stored_kwargs = dict(payload["model_kwargs"])
    _check_teacher_fits(str(path), stored_kwargs, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    _check_known(payload["model_name"])
    model = timm.create_model(payload["model_name"], pretrained=False, **stored_kwargs)
    model.load_state_dict(payload["state_dict"])
    return model


def _load_hub_teacher(name: str, *, num_classes: int, in_chans: int) -> nn.Module:
    _check_known(name)
    cfg = get_pretrained_cfg(name)
    hub_classes = getattr(cfg, "num_classes", None)
    if hub_classes is not None and hub_classes != num_classes:
        raise ConfigError(
            f"hub teacher timm:{name} predicts {hub_classes} classes but the dataset has {num_classes}; "
            "train a teacher for it with `python -m orchestrator teacher`"
        )
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, in_chans=in_chans)
    except Exception as exc:  # offline, hub down, weights missing: all mean "no hub teacher here"
        raise TeacherUnavailableError(
            f"could not download pretrained weights for timm:{name} (the model hub is unreachable or has no "
            f"weights: {type(exc).__name__}: {exc}); train a teacher locally with `python -m orchestrator teacher` "
            "and pass its file path instead"
        ) from exc


def is_saved_teacher(path: Path) -> bool:
    """True for a file written by save_teacher; False for anything else (a plain state dict, safetensors)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # safetensors or a foreign format: not ours
        return False
    return isinstance(payload, dict) and all(key in payload for key in TEACHER_FILE_KEYS)


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict (torchvision's resnet18-f37072fd.pth, a timm .safetensors), `module.` prefixes dropped."""
    try:
        state = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as exc:
        raise ConfigError(f"weights file {path} is unreadable: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path} is neither a teacher file nor a state dict of tensors")
    return {key.removeprefix("module."): value for key, value in state.items()}


def weights_spec(model_name: str, path: Path) -> str:
    """``timm:<architecture>@<weights file>``: a pretrained teacher whose weights are a local file."""
    return f"{TIMM_PREFIX}{model_name}@{path}"


def _load_weights_teacher(name: str, path: Path, *, num_classes: int, in_chans: int, img_size: int) -> nn.Module:
    model = create_student(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    try:
        model.load_state_dict(read_weights_file(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"weights file {path} does not fit {name} with {num_classes} classes and {in_chans} "
                          f"channels ({first}): set teacher.model to its architecture") from exc
    return model


def load_teacher(spec: str, *, num_classes: int, in_chans: int, img_size: int, device: torch.device | str) -> nn.Module:
    """A frozen teacher (eval mode, requires_grad False) from a save_teacher file, ``timm:<name>``, or
    ``timm:<name>@<file>`` (that architecture with a local weights file, see ``weights_spec``)."""
    if spec.startswith(TIMM_PREFIX) and "@" in spec:
        name, _, path = spec[len(TIMM_PREFIX):].partition("@")
        model = _load_weights_teacher(name, Path(path), num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    elif spec.startswith(TIMM_PREFIX):
        model = _load_hub_teacher(spec[len(TIMM_PREFIX):], num_classes=num_classes, in_chans=in_chans)
    else:
        model = _load_file_teacher(Path(spec), num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    return _freeze(model, device)
