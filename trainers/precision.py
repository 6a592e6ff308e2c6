"""Speed options of the training and evaluation step: numeric precision, memory format, compilation.

Owns the three switches the loop applies around its step, each chosen by the protocol's config
(`train.precision`, `train.channels_last`, `train.compile`, `eval.precision`; none is on by default,
and `python -m orchestrator bench --only train_step eval` measures each on the machine at hand):

    autocast(device, precision)              "fp32": nothing; "bf16": torch.autocast to bfloat16
    prepare_model(model, channels_last=, compile=)   channels_last weights, torch.compile (inductor)
    to_device_batch(images, device, channels_last)   the batch on the device in the model's layout
    native_bf16(device)                      whether bf16 is worth measuring there at all

torch.compile runs inductor, which on CPU needs a C++ compiler; where compiling fails (no compiler,
an unsupported platform, a graph inductor cannot lower) the model runs eager after one warning line.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import ContextManager

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16")


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
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


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
