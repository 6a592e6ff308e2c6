"""The `eval` benchmark: trainers.evaluate.evaluate over the Fashion-MNIST test images per precision,
against the plain NCHW pass at batch 1000 (the reference of ratios.eval_vs_plain)."""

from __future__ import annotations

import time

import numpy as np

from orchestrator.bench.context import (SLOW_FACTOR, BenchContext, Figure, all_cpus, fashion_mnist_train,
                                        protocol_config, rate, torch_threads)
from orchestrator.bench.training import batch_steps, loop_training, train


PLAIN_EVAL_BATCH = 1000  # the plain evaluation's batch (the fmnist protocols evaluate in batches of 32)


def eval_pass(model, images, labels, *, precision: str, batch: int, limit_s: float | None = None,
              cpu_layout: bool = True) -> tuple[dict, float]:
    """trainers.evaluate.evaluate over the images in inference mode: (summary, seconds); with
    `limit_s`, a first batch slower than that ends the pass there (the rest would take too long)."""
    from trainers.evaluate import evaluate

    started = time.perf_counter()

    def batches():
        for start in range(0, len(labels), batch):
            yield images[start:start + batch], labels[start:start + batch]
            if start == 0 and limit_s is not None and time.perf_counter() - started > limit_s:
                return

    summary = evaluate(model, batches(), num_classes=10, device="cpu", precision=precision, cpu_layout=cpu_layout)
    return summary, time.perf_counter() - started


def plain_eval_rate(model, images, labels, *, batch: int = PLAIN_EVAL_BATCH) -> float:
    """fp32 images/s of the plain evaluation: NCHW throughout (evaluate's cpu_layout off) in batches
    of 1000: the reference of ratios.eval_vs_plain."""
    seconds = eval_pass(model, images, labels, precision="fp32", batch=batch, cpu_layout=False)[1]
    return rate(len(labels), seconds)


def briefly_trained_convnet(config, steps: int):
    """The protocol's student after `steps` of the loop's own optimizer steps (batch 128) on
    Fashion-MNIST training images (their evaluation views): a model whose top-1 (~70 %) can move
    when the precision changes."""
    import torch

    from orchestrator.image_views import eval_views

    pixels, labels = fashion_mnist_train(128 * steps)
    views = eval_views(pixels, resize=28, crop=28, mean=config.data.mean, std=config.data.std)
    training = loop_training(config)
    train(training, batch_steps(views, torch.from_numpy(labels), 128))
    return training.model.eval()


TOP1_TOLERANCE_PT = 0.1  # a precision serves evaluation only if its top-1 is within this of fp32's


def bench_eval(ctx: BenchContext, *, images: int | None = None, train_steps: int | None = None,
               precisions: tuple[str, ...] | None = None, batch: int | None = None) -> dict[str, Figure]:
    """Evaluation of the Fashion-MNIST test images (trainers.evaluate.evaluate, inference mode, all
    CPUs) per precision, on a briefly trained ConvNet-3 (--quick: the first 2,000 images, 5 steps):
    images/s, top-1, and each precision's top-1 minus fp32's on the same images. `images_per_s` is
    the fastest precision within 0.1 pt of fp32.

    Each precision is warmed up on one batch first. One still SLOW_FACTOR x slower than fp32 on its
    first timed batch is measured on that batch only (bf16 on a CPU without native bf16); its top-1
    difference is then over those images, else over the whole set. --quick
    skips bf16 where it is not native. Batches of `batch` images (default: the protocol's
    eval.batch_size); `plain_images_per_s` is the NCHW, batch-1000 reference (plain_eval_rate).
    """
    import torch

    from orchestrator.data.prepare import FASHION_MNIST_RAW, load_fashion_mnist_split
    from orchestrator.image_views import eval_views
    from trainers.precision import native_bf16

    if precisions is None:
        precisions = ("fp32", "bf16") if not ctx.quick or native_bf16("cpu") else ("fp32",)
    config = protocol_config()
    raw, labels = load_fashion_mnist_split(FASHION_MNIST_RAW, "test")
    images = images or (2_000 if ctx.quick else len(labels))
    views = eval_views(np.array(raw[:images]), resize=config.eval.resize, crop=config.eval.crop,
                       mean=config.data.mean, std=config.data.std)
    targets = torch.from_numpy(labels[:images])
    batch, threads = batch or config.eval.batch_size, all_cpus()
    with torch_threads(threads):
        model = briefly_trained_convnet(config, train_steps or (5 if ctx.quick else 40))
        eval_pass(model, views[:batch], targets[:batch], precision="fp32", batch=batch)  # warm-up
        reference, fp32_s = eval_pass(model, views, targets, precision="fp32", batch=batch)
        figures = {"images": Figure(len(targets), "images"), "threads": Figure(threads, "threads"),
                   "fp32_images_per_s": Figure(rate(len(targets), fp32_s), "images/s"),
                   "fp32_top1": Figure(reference["top1"], "%")}
        usable = {"fp32": rate(len(targets), fp32_s)}
        figures["plain_images_per_s"] = Figure(plain_eval_rate(model, views, targets), "images/s")
        for precision in (p for p in precisions if p != "fp32"):
            # its own warm-up first: a first batch that builds kernels must not count as "slow"
            eval_pass(model, views[:batch], targets[:batch], precision=precision, batch=batch)
            summary, seconds = eval_pass(model, views, targets, precision=precision, batch=batch,
                                         limit_s=SLOW_FACTOR * fp32_s * batch / len(targets))
            count = summary["count"]
            same = reference if count == len(targets) else eval_pass(
                model, views[:count], targets[:count], precision="fp32", batch=batch)[0]
            speed, diff = rate(count, seconds), summary["top1"] - same["top1"]
            figures[f"{precision}_images_per_s"] = Figure(speed, "images/s")
            figures[f"{precision}_top1"] = Figure(summary["top1"], "%")
            figures[f"{precision}_top1_minus_fp32"] = Figure(diff, "pt")
            figures[f"{precision}_images"] = Figure(count, "images")
            figures[f"{precision}_vs_fp32"] = Figure(speed / usable["fp32"], "x")
            if abs(diff) <= TOP1_TOLERANCE_PT:
                usable[precision] = speed
    best = max(usable, key=usable.get)
    figures["images_per_s"] = Figure(usable[best], "images/s")
    figures["seconds_10k"] = Figure(10_000 / usable[best], "s")
    print(f"[bench] evaluation: {best} is the fastest precision within {TOP1_TOLERANCE_PT} pt of fp32", flush=True)
    return figures

