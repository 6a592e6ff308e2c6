"""Speed options of the training and evaluation step: numeric precision, memory format, compilation.

Owns the three switches the loop applies around its step, each chosen by the protocol's config
(`train.precision`, `train.channels_last`, `train.compile`, `eval.precision`; none is on by default,
and `python -m orchestrator bench --only train_step eval` measures each on the machine at hand).
Each may be "auto", resolved where the cell trains (`resolve_step`): precision bf16 where the device
computes it natively (a CUDA GPU with bf16; a CPU with AMX-BF16 or AVX512-BF16), fp32 elsewhere;
channels_last and compile from a short calibration of the student's step, cached per machine, model,
input shape, precision and thread count (`calibration.json` in the cell's speed folder, beside
torch.compile's own on-disk caches, shared by every cell and worker: `use_compile_cache`):

    autocast(device, precision)              "fp32": nothing; "bf16": torch.autocast to bfloat16
    prepare_model(model, channels_last=, compile=)   channels_last weights, torch.compile (inductor)
    to_device_batch(images, device, channels_last)   the batch on the device in the model's layout
    native_bf16(device)                      whether bf16 is worth measuring there at all

torch.compile runs inductor, which on CPU needs a C++ compiler; where compiling fails (no compiler,
an unsupported platform, a graph inductor cannot lower) the model runs eager after one warning line.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager

import torch
from torch import nn

from orchestrator.files import write_text

PRECISIONS = ("fp32", "bf16")
AUTO = "auto"
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs that compute bf16 natively
GAIN_TO_SWITCH = 1.05  # a calibrated layout or compile must be 5 % faster than plain eager to be chosen
CALIBRATION_STEPS = 5


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    return precision


def autocast(device: torch.device | str, precision: str) -> ContextManager:
    """The step's autocast context: none for fp32, bfloat16 autocast on the device's type for bf16."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def native_bf16(device: torch.device | str) -> bool:
    """Whether the device computes bfloat16 natively (a CUDA GPU that supports it; a CPU with
    AVX512-BF16 or AMX); elsewhere bf16 kernels are emulated and far slower than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    flags = cpu_flags()
    if flags:
        return native_bf16_cpu(flags)
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # no /proc/cpuinfo: ask oneDNN


def native_bf16_cpu(flags: set[str]) -> bool:
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def cpu_flags() -> set[str]:
    """This CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    return next((set(line.split(":", 1)[1].split()) for line in _cpuinfo_lines() if line.startswith("flags")), set())


def machine_key(device: torch.device | str) -> str:
    """What a calibration is valid for: the device model (and its features) and torch's version."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{cpu_model()} {hashlib.sha256(' '.join(sorted(cpu_flags())).encode()).hexdigest()[:8]}"
    return f"{name} torch {torch.__version__}"


def cpu_model() -> str:
    """This CPU's model name (Linux /proc/cpuinfo; "cpu" elsewhere)."""
    return next((line.split(":", 1)[1].strip() for line in _cpuinfo_lines() if line.startswith("model name")), "cpu")


#: /proc/cpuinfo flags that name a CPU's widest vector and matrix units, best first
ISA_LEVELS = (("amx_tile", "AMX"), ("avx512_bf16", "AVX-512+BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))


def device_description(device: torch.device | str) -> str:
    """The device a cell trained on, as a person names it beside a figure: the GPU's name, or the CPU's
    model, its widest vector unit and the cores this process may use ("cpu: AMD EPYC (AVX2, 2 CPUs)")."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    flags = cpu_flags()
    units = [name for flag, name in ISA_LEVELS if flag in flags][:1]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"cpu: {cpu_model()} ({', '.join([*units, f'{cores} CPUs'])})"


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def resolve_precision(setting: str, device: torch.device | str) -> str:
    """"auto": bf16 where the device computes it natively, else fp32; other settings as they are."""
    if setting != AUTO:
        return check_precision(setting)
    return "bf16" if native_bf16(device) else "fp32"


@dataclass(frozen=True)
class StepChoice:
    """The resolved speed switches a cell trained and evaluated with (logged on every cell)."""

    precision: str
    eval_precision: str
    channels_last: bool
    compile: bool


def resolve_step(train, evaluation, model: nn.Module, device: torch.device | str, *, batch_shape: tuple,
                 cache_dir: Path | None = None) -> StepChoice:
    """The switches of `train` (TrainConfig) and `evaluation` (EvalConfig) with every "auto" resolved
    for this device and model (see the module docstring)."""
    precision = resolve_precision(train.precision, device)
    eval_precision = resolve_precision(evaluation.precision, device)
    channels_last, compiled = train.channels_last, train.compile
    if AUTO in (channels_last, compiled):
        layouts = (False, True) if channels_last == AUTO else (channels_last,)
        compiles = (False, True) if compiled == AUTO else (compiled,)
        if True in compiles and cache_dir is not None:
            use_compile_cache(Path(cache_dir) / "torch-compile")
        channels_last, compiled = calibrated(model, device, precision, batch_shape, layouts, compiles, cache_dir)
    return StepChoice(precision, eval_precision, bool(channels_last), bool(compiled))


def calibrated(model: nn.Module, device, precision: str, batch_shape: tuple, layouts: tuple, compiles: tuple,
               cache_dir: Path | None) -> tuple[bool, bool]:
    """The fastest (channels_last, compile) of the candidates for this step, measured once and cached."""
    key = "|".join([machine_key(device), type(model).__name__, str(sum(p.numel() for p in model.parameters())),
                    str(tuple(batch_shape)), precision, f"threads {torch.get_num_threads()}",
                    f"layouts {layouts}", f"compiles {compiles}"])
    path = Path(cache_dir) / "calibration.json" if cache_dir is not None else None
    cached = read_calibration(path).get(key) if path is not None else None
    if cached is not None:
        return bool(cached["channels_last"]), bool(cached["compile"])
    speeds = {(layout, comp): step_images_per_s(model, device, precision, batch_shape, layout, comp)
              for layout in layouts for comp in compiles}
    plain = speeds.get((False, False))
    best = max(speeds, key=speeds.get)
    if plain is not None and speeds[best] < GAIN_TO_SWITCH * plain:
        best = (False, False)
    if path is not None:
        write_calibration(path, key, {"channels_last": best[0], "compile": best[1],
                                      "images_per_s": {f"channels_last={a} compile={b}": round(v, 1)
                                                       for (a, b), v in speeds.items()}})
    return best


def step_images_per_s(model: nn.Module, device, precision: str, batch_shape: tuple, channels_last: bool,
                      compile: bool) -> float:
    """Forward + backward images/s of a copy of `model` on a random batch (after a warm-up, which compiles)."""
    net = prepare_model(copy.deepcopy(model).to(device).train(), channels_last=channels_last, compile=compile)
    images = to_device_batch(torch.randn(*batch_shape), device, channels_last)
    for step in range(2 + CALIBRATION_STEPS):
        if step == 2:
            start = time.perf_counter()
        with autocast(device, precision):
            loss = net(images).float().logsumexp(dim=1).mean()
        loss.backward()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return CALIBRATION_STEPS * batch_shape[0] / (time.perf_counter() - start)


def read_calibration(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_calibration(path: Path, key: str, entry: dict) -> None:
    """Best effort (a read-only cache folder only costs a new calibration next time)."""
    try:
        write_text(path, json.dumps({**read_calibration(path), key: entry}, indent=1))
    except OSError:
        pass


def use_compile_cache(directory: Path) -> None:
    """Point torch.compile's on-disk caches (inductor's FX-graph, autograd and autotuning caches) at
    `directory`, shared by every cell and worker of the data root, unless the user set one."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(directory))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def prepare_model(model: nn.Module, *, channels_last: bool = False, compile: bool = False) -> nn.Module:
    """The same module, in channels_last layout and/or compiled in place (`nn.Module.compile`: its
    state_dict keys, checkpoints and DDP wrapping are unchanged).

    Compilation is lazy (it happens at the first call); a failure there, or torch.compile refusing
    the platform here, warns once and the model runs eager.
    """
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        try:
            model.compile(backend=inductor_or_eager)
        except Exception as exc:  # e.g. Dynamo not supported on this Python
            warn_eager(exc)
    return model


def inductor_or_eager(graph: torch.fx.GraphModule, example_inputs: list):
    """A torch.compile backend: inductor, or the captured graph run eager where inductor fails."""
    from torch._inductor.compile_fx import compile_fx

    try:
        return compile_fx(graph, example_inputs)
    except Exception as exc:
        warn_eager(exc)
        return graph.forward


def warn_eager(exc: BaseException) -> None:
    reason = (str(exc).strip().splitlines() or [""])[0][:200]
    warnings.warn(f"torch.compile failed ({type(exc).__name__}: {reason}); running the model eager "
                  f"(on CPU inductor needs a C++ compiler: `gcc --version`)", RuntimeWarning, stacklevel=2)


def to_device_batch(images: torch.Tensor, device: torch.device | str, channels_last: bool) -> torch.Tensor:
    """A batch of NCHW images on `device`, channels_last in memory when the model is."""
    layout = memory_format(channels_last) if images.ndim == 4 else torch.preserve_format
    return images.to(device, non_blocking=True, memory_format=layout)
