"""The `train_step` benchmark: the loop's training step per StepVariant (precision, channels_last,
torch.compile, chunks); the fastest variant is the reference of the others and of the cell's step."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from orchestrator.bench.context import (SLOW_FACTOR, BenchContext, Figure, all_cpus, protocol_config, rate,
                                        torch_threads)
from orchestrator.bench.training import batch_steps, loop_training, train


@dataclass(frozen=True)
class StepVariant:
    """One way to run the training step (trainers/precision.py's switches; `chunk`: train.chunk)."""

    name: str
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    chunk: int = 0


STEP_VARIANTS = (StepVariant("fp32"), StepVariant("fp32_chunk32", chunk=32), StepVariant("fp32_cl", channels_last=True),
                 StepVariant("fp32_compile", compile=True), StepVariant("bf16", "bf16"),
                 StepVariant("bf16_cl", "bf16", channels_last=True),
                 StepVariant("bf16_cl_compile", "bf16", channels_last=True, compile=True))


def step_variants(quick: bool, device: str = "cpu") -> tuple[StepVariant, ...]:
    """All variants, less (in --quick) compiled ones (minutes of compiling on 2 cores) and bf16 ones
    where the device has no native bf16 (emulated kernels run at a few % of fp32)."""
    from trainers.precision import native_bf16

    if not quick:
        return STEP_VARIANTS
    return tuple(v for v in STEP_VARIANTS if not v.compile and (v.precision == "fp32" or native_bf16(device)))



def time_steps(step: Callable[[], None], *, budget: float, cutoff: float | None) -> tuple[float, int, bool]:
    """(seconds, steps, cut) after one untimed warm-up step (compiling, allocator, optimizer state);
    stops after the first timed step when that step took longer than `cutoff` seconds."""
    step()
    steps, started = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - started < budget:
        step()
        steps += 1
        if steps == 1 and cutoff is not None and time.perf_counter() - started > cutoff:
            return time.perf_counter() - started, steps, True
    return time.perf_counter() - started, steps, False


def variant_step(variant: StepVariant, config, *, model: str, images, labels) -> tuple[Callable[[], None], int]:
    """(one optimizer step of the loop's own code on a fresh student set up the variant's way, the
    student's parameter count)."""
    from orchestrator.config import replace

    switches = {"model.name": model, "train.precision": variant.precision, "train.chunk": variant.chunk,
                "train.channels_last": variant.channels_last, "train.compile": variant.compile}
    training = loop_training(replace(config, switches))
    steps = batch_steps(images, labels, len(labels))
    return (lambda: train(training, steps)), training.params


def bench_train_step(ctx: BenchContext, *, model: str = "convnet3", threads: int | None = None,
                     batch: int = 128, variants: tuple[StepVariant, ...] | None = None,
                     min_seconds: float | None = None) -> dict[str, Figure]:
    """The loop's step (trainers.loop.train_one_epoch on one batch: forward, protocol loss, backward,
    the protocol's optimizer) per StepVariant at 28x28 on all CPUs; the fastest variant that ran is the
    reference of every other (`<variant>_vs_fastest`) and of the cell's step.

    The first variant is the baseline: a later one whose first timed step is SLOW_FACTOR x slower
    is reported from that step; a compiled variant runs only where its eager twin was not that slow.
    """
    import torch

    config = protocol_config()
    budget = min_seconds if min_seconds is not None else (0.5 if ctx.quick else 3.0)
    threads = threads or all_cpus()
    size = config.model.input_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, config.in_chans, size, size, generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    figures: dict[str, Figure] = {"threads": Figure(threads, "threads")}
    rates: dict[str, float] = {}
    slow: set[str] = set()
    baseline_step: float | None = None
    for variant in variants or step_variants(ctx.quick):
        if variant.compile and variant.name.removesuffix("_compile") in slow:
            continue
        step, params = variant_step(variant, config, model=model, images=images, labels=labels)
        with torch_threads(threads):
            started = time.perf_counter()
            cutoff = None if baseline_step is None else SLOW_FACTOR * baseline_step
            seconds, steps, cut = time_steps(step, budget=budget, cutoff=cutoff)
        if variant.compile:
            figures[f"{variant.name}_warm_up_s"] = Figure(time.perf_counter() - started - seconds, "s")
        baseline_step = baseline_step or seconds / steps
        slow.update([variant.name] if cut else [])
        rates[variant.name] = rate(steps * batch, seconds)
        figures[f"{variant.name}_images_per_s"] = Figure(rates[variant.name], "images/s")
    fastest = max(rates, key=rates.get)
    print(f"[bench] fastest step: {fastest} {rates[fastest]:,.0f} images/s at {threads} threads"
          + (f"; cut after one step: {sorted(slow)}" if slow else ""), flush=True)
    figures["fastest_images_per_s"] = Figure(rates[fastest], "images/s")
    figures.update({f"{name}_vs_fastest": Figure(value / rates[fastest], "x") for name, value in rates.items()})
    figures["params"] = Figure(params / 1e6, "M")
    return figures

