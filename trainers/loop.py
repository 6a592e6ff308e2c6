"""The Ray Train worker loop: one benchmark cell's training, evaluation and checkpoints.

`train_loop_per_worker(loop_config)` runs on every worker (or in the driver in local mode). It is
pure with respect to its input, a `LoopInputs` (trainers/loop_inputs.py): the resolved config plus
a few facts the driver computed (number of classes, teacher file, MLflow run). A `LoopRun` carries
what the epochs thread through (the `TrainingState` a checkpoint holds, the `StepSetup` each step
reads, the metric logger and the data sources). Rank 0 logs per-epoch metrics to MLflow (a store
another process holds locked delays them, never the training or a checkpoint), prints progress,
evaluates, and writes checkpoints that hold everything needed to resume exactly.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import trainers.models  # noqa: F401  (registers convnet3 / resnet18_small in timm)
from orchestrator.config import Config, replace
from orchestrator.errors import StoreBusyError
from orchestrator.store_retry import retrying_client, store_busy_now, store_name
from trainers.batches import MemoryBatches, augment_settings, chunk_slices, stream_steps
from trainers.evaluate import evaluate
from trainers.losses import compute_loss
from trainers.mix import build_mixup, mix_batch
from trainers.models import create_student, load_teacher, load_weights_only, unwrap_model
from trainers import metric_names as names
from trainers import precision
from trainers.loop_inputs import LoopInputs
from trainers.optim import build_optimizer, build_scheduler
from trainers.reporting import placement
from orchestrator.errors import TrainingDiverged

STATE_FILE = "state.pt"
SUMMARY_FILE = "summary.json"


@dataclass
class History:
    """What survives a restart besides the weights: per-epoch figures and the best so far."""

    epochs_done: int = 0
    best_top1: float = -1.0
    best_top5: float = 0.0
    best_epoch: int = -1
    best_per_class: list = field(default_factory=list)
    last_eval: dict = field(default_factory=dict)
    train_seconds: float = 0.0
    optimizer_steps: int = 0  # cumulative, global (one step = one global batch)
    samples_seen: int = 0  # cumulative views trained on, all ranks together
    wall_seconds: float = 0.0  # the loop's wall time up to this checkpoint, over every attempt
    prior_wall_seconds: float = 0.0  # wall time of earlier attempts, up to the checkpoint resumed from
    speed: dict = field(default_factory=dict)  # the resolved precision / layout / compile of the last attempt
    unlogged_metrics: list = field(default_factory=list)  # rows a busy MLflow store held back (MetricLogger)


@dataclass
class TrainingState:
    """What a checkpoint holds: the student (prepared for its device once training starts), its
    optimizer and schedule, and the history."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    history: History


@dataclass(frozen=True)
class StepSetup:
    """What each optimizer step reads: the resolved config, the student, the teacher of a soft-label
    cell, the mix, the device, and where per-sample dynamics go (None: not recorded)."""

    config: Config
    model: torch.nn.Module
    teacher: torch.nn.Module | None
    mixup: Any
    device: Any
    optimizer: torch.optim.Optimizer | None = None
    dynamics: Any = None
    chunk: int = 0  # views per forward/backward (exact_chunk); 0: the whole micro-batch


@dataclass
class LoopRun:
    """One rank's training of one cell: what every epoch of the loop threads through."""

    inputs: LoopInputs  # its config with the "auto" speed settings resolved on this rank
    where: Any  # trainers.reporting.WorkerGroup or InProcess
    state: TrainingState
    step: StepSetup
    logger: MetricLogger
    epoch_steps: Callable  # epoch -> (this rank's optimizer steps, global views or None)
    validation: Callable  # () -> iterable of (images, labels)
    attempt_start: float

    @property
    def config(self) -> Config:
        return self.inputs.config


def seed_everything(seed: int, epoch: int, rank: int) -> None:
    """Seed python, numpy (timm's Mixup draws from it) and torch for one epoch on one rank."""
    mixed = (seed * 1_000_003 + epoch * 1009 + rank) % (2**32)
    random.seed(mixed)
    np.random.seed(mixed)
    torch.manual_seed(mixed)


def train_loop_per_worker(loop_config: dict) -> None:
    run = start_run(LoopInputs.from_loop_config(loop_config))
    for epoch in range(run.state.history.epochs_done, run.config.schedule.epochs):
        run_epoch(run, epoch)
    run.logger.flush(wait=True)  # after the last checkpoint: what a busy store held back, waiting for it now
    if run.step.dynamics is not None:
        run.step.dynamics.close()


def start_run(inputs: LoopInputs) -> LoopRun:
    """Place this rank, restore or build the training state, resolve the speed settings, and open
    the teacher, metric logger, dynamics writer and both data sources."""
    quiet_ray_train_logs()
    where = placement(inputs)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if inputs.config.train.threads > 0:
        torch.set_num_threads(inputs.config.train.threads)
    with where.latest() as checkpoint_dir:
        state = build_training_state(inputs, where.device, checkpoint_dir)
    inputs, state.history.speed = resolve_rank_speed(inputs, state.model, where)
    config = inputs.config
    state.model = where.prepare_model(precision.prepare_model(state.model, channels_last=config.train.channels_last,
                                                              compile=config.train.compile))
    teacher = open_teacher(inputs, where.device)
    mixup = build_mixup(config.mix.type, mixup_alpha=config.mix.mixup_alpha, cutmix_alpha=config.mix.cutmix_alpha,
                        prob=config.mix.prob, switch_prob=config.mix.switch_prob, num_classes=inputs.num_classes)
    logger = MetricLogger(inputs, where.rank)
    logger.restore(state.history.unlogged_metrics)
    step = StepSetup(config, state.model, teacher, mixup, where.device, optimizer=state.optimizer,
                     dynamics=open_dynamics(inputs, where.rank), chunk=exact_chunk(config.train.chunk, state.model))
    return LoopRun(inputs, where, state, step, logger, training_steps(inputs, where),
                   validation_batches(inputs, where), attempt_start=time.perf_counter())


def open_teacher(inputs: LoopInputs, device) -> torch.nn.Module | None:
    """The frozen teacher of a soft-label cell, on `device` (None for a hard-label cell)."""
    config = inputs.config
    if config.label_mode != "soft":
        return None
    return load_teacher(inputs.teacher, num_classes=inputs.num_classes, in_chans=config.in_chans,
                        img_size=config.model.input_size, device=device)


def run_epoch(run: LoopRun, epoch: int) -> None:
    """Train one epoch, evaluate when due, log its metrics and report it (with a checkpoint when due)."""
    config, history = run.config, run.state.history
    seed_everything(config.seed, epoch, run.where.rank)
    start = time.perf_counter()
    lr = run.state.optimizer.param_groups[0]["lr"]
    steps, samples = run.epoch_steps(epoch)
    loss, seen, step_count = train_one_epoch(run.step, steps, epoch)
    samples = samples if samples is not None else seen * run.where.world
    stop_if_diverged(run, loss, epoch)
    run.state.scheduler.step()
    elapsed = time.perf_counter() - start
    history.train_seconds += elapsed
    history.optimizer_steps += step_count
    history.samples_seen += samples
    history.epochs_done = epoch + 1
    history.wall_seconds = history.prior_wall_seconds + time.perf_counter() - run.attempt_start
    eval_start = time.perf_counter()
    evaluation = maybe_evaluate(run, epoch)
    metrics = {names.TRAIN_LOSS: loss, names.TRAIN_LR: lr, names.TRAIN_EPOCH_S: elapsed,
               names.TRAIN_IMAGES_PER_S: samples / max(elapsed, 1e-9),
               names.TRAIN_OPTIMIZER_STEPS: history.optimizer_steps, names.TRAIN_SAMPLES_SEEN: history.samples_seen}
    metrics.update({names.EVALUATION_METRICS[k]: v for k, v in evaluation.items() if k in names.EVALUATION_METRICS})
    if evaluation:
        metrics[names.VAL_EVAL_S] = time.perf_counter() - eval_start
    record_epoch(run, epoch, metrics)


def stop_if_diverged(run: LoopRun, loss: float, epoch: int) -> None:
    """A non-finite training loss ends the cell (tagged on its run) with the fix."""
    if math.isfinite(loss):
        return
    run.logger.flush(wait=True)
    run.logger.fail(f"diverged: training loss {loss} at epoch {epoch + 1}")
    raise TrainingDiverged(f"cell {run.logger.label} diverged: training loss is {loss} at epoch "
                           f"{epoch + 1}. Fix: lower optim.lr (now {run.config.optim.lr}) or check the data")


def record_epoch(run: LoopRun, epoch: int, metrics: dict) -> None:
    """Log the epoch (MLflow in batches), end its dynamics, and report it to Ray Train or Tune."""
    history = run.state.history
    run.logger.log(epoch, metrics, history)
    if checkpoint_due(run.config, epoch) or names.VAL_EVAL_S in metrics:  # a checkpoint or an evaluation
        run.logger.flush()  # MLflow gets the epochs in batches, up to the checkpoint unless the store is busy
    history.unlogged_metrics = run.logger.unlogged()  # the checkpoint keeps what a busy store held back
    if run.step.dynamics is not None:
        run.step.dynamics.end_epoch()
    reported = {**metrics, "epoch": epoch + 1, names.VAL_TOP1: history.last_eval.get("top1", 0.0)}
    report(run, epoch, reported)


def quiet_ray_train_logs() -> None:
    """Keep the console to one progress line per epoch: Ray Train logs every report (metrics and
    checkpoint path) at INFO under a logger named after its module file; those records are dropped."""
    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def build_training_state(inputs: LoopInputs, device, checkpoint_dir: Path | None) -> TrainingState:
    """Student, optimizer, schedule and history, on `device`, restored from `checkpoint_dir` if any.

    The model moves to its device before the optimizer exists, so a restored optimizer state is
    cast to the parameters' device (a GPU resume would otherwise step CUDA weights with CPU state).
    """
    config = inputs.config
    torch.manual_seed(config.seed)
    model = create_student(config.model.name, num_classes=inputs.num_classes, in_chans=config.in_chans,
                           img_size=config.model.input_size).to(device)
    optimizer = build_optimizer(model, name=config.optim.name, lr=config.optim.lr,
                                weight_decay=config.optim.weight_decay, momentum=config.optim.momentum)
    scheduler = build_scheduler(optimizer, epochs=config.schedule.epochs,
                                warmup_epochs=config.schedule.warmup_epochs)
    state = TrainingState(model, optimizer, scheduler, History())
    state.history = restore(checkpoint_dir, state)
    return state


def resolve_rank_speed(inputs: LoopInputs, model, where) -> tuple[LoopInputs, dict]:
    """The inputs with the config's "auto" speed switches resolved for this rank's device and world, and
    the switches plus the device itself as the history records them (`resolved.*` tags of the cell)."""
    config, speed = resolve_speed(inputs.config, model, where.device, where.world, inputs.speed_dir)
    return dataclasses.replace(inputs, config=config), {**speed, "device": precision.device_description(where.device)}


def resolve_speed(config: Config, model, device, world: int, speed_dir: str | None) -> tuple[Config, dict]:
    """The config with its "auto" speed switches resolved here (trainers.precision.resolve_step), and
    the resolved switches as the history records them (the cell logs them as `resolved.*` tags).
    Also what `bench` runs its bare loop with."""
    chunk = config.train.chunk if torch.device(device).type == "cpu" and config.train.chunk > 0 else 0
    rows = chunk or max(1, config.train.batch_size // max(world, 1))
    shape = (rows, config.in_chans, config.model.input_size, config.model.input_size)
    cache = Path(speed_dir) if speed_dir else None
    choice = precision.resolve_step(config.train, config.eval, model, device, batch_shape=shape, cache_dir=cache)
    if choice.compile and cache is not None:
        precision.use_compile_cache(cache / "torch-compile")
    resolved = replace(config, {"train.precision": choice.precision, "eval.precision": choice.eval_precision,
                                "train.channels_last": choice.channels_last, "train.compile": choice.compile})
    return resolved, asdict(choice)


def received(arrays):
    """Decoded arrays handed over by the driver: in this process as they are, else an object-store ref."""
    import ray

    return arrays if isinstance(arrays, dict) else ray.get(arrays)


def training_steps(inputs: LoopInputs, where):
    """epoch -> (this rank's optimizer steps, global views of the epoch or None when streaming).

    A set the driver put in the object store is shuffled whole per epoch; a larger set streams
    from this rank's Ray Data shard (docs/protocol.md §Batch and shuffle).
    """
    config = inputs.config
    augment = augment_settings(config)
    sizes = {"batch_size": config.train.batch_size, "world": where.world, "accum": config.train.grad_accum}
    grid = inputs.tile_grid  # the method says how its stored images are tiled
    soft = config.label_mode == "soft"
    if inputs.train_arrays is None:
        if inputs.label_ratio < 1 and soft:
            raise ValueError("a pruned soft-label pool needs the set in memory; this one streams")
        shard = where.dataset_shard("train")
        return lambda epoch: (stream_steps(shard, epoch, grid=grid, tile_views=tile_views(config), augment=augment,
                                           shuffle_buffer=config.train.shuffle_buffer, **sizes), None)
    memory = MemoryBatches(received(inputs.train_arrays), grid=grid, tile_views=tile_views(config), augment=augment,
                           label_ratio=inputs.label_ratio if soft else 1.0, epochs=config.schedule.epochs)

    def epoch_steps(epoch: int):
        steps, counts = memory.steps(epoch, rank=where.rank, **sizes)
        return steps, counts.samples

    return epoch_steps


def train_one_epoch(step: StepSetup, steps, epoch: int) -> tuple[float, int, int]:
    """One pass over this rank's optimizer steps; returns (mean loss, views seen here, steps)."""
    step.model.train()
    total_loss, total_seen, step_count = 0.0, 0, 0
    for micro_batches in steps:
        step.optimizer.zero_grad(set_to_none=True)
        for micro in micro_batches:
            loss, seen = forward_backward(step, micro, epoch)
            total_loss += loss * seen
            total_seen += seen
        step.optimizer.step()
        step_count += 1
    return total_loss / max(total_seen, 1), total_seen, step_count


def exact_chunk(chunk: int, model: torch.nn.Module) -> int:
    """`train.chunk` where running a batch's forward/backward in chunks gives the same gradient and
    is worth it: a model on a CPU (whose caches it is for) with no layer coupling a batch's samples
    (BatchNorm does). Else 0, the whole batch."""
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    coupled = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return chunk if chunk > 0 and on_cpu and not coupled else 0


def forward_backward(step: StepSetup, micro, epoch: int) -> tuple[float, int]:
    """Loss of one micro-batch, backpropagated with its weight; returns (mean loss, views).

    The batch is mixed whole, then (step.chunk > 0) its forward/backward runs `chunk` views at a
    time, each chunk's mean loss weighted by its share: the gradient of the whole batch's mean loss,
    with activations small enough to stay in a CPU's cache (docs/protocol.md §Deviations).
    """
    images = precision.to_device_batch(micro.image, step.device, step.config.train.channels_last)
    labels = micro.label.to(step.device)
    if micro.mix_seed is not None:  # a stored batch of a pruned label pool: its mix, as when it was stored
        np.random.seed(micro.mix_seed)
    images, targets = mix_batch(step.mixup, images, labels)
    total, keys = len(images), micro.key.numpy()[: len(images)]
    loss_sum = 0.0
    for part, share in chunk_slices(total, step.chunk):
        loss, logits = chunk_loss(step, images[part], targets[part])
        if step.dynamics is not None:
            step.dynamics.add(epoch, keys[part], logits.detach().float().cpu(), labels[part].cpu().numpy())
        (loss * (micro.weight * share)).backward()
        loss_sum += loss.item() * share
    return loss_sum, total


def chunk_loss(step: StepSetup, images, targets):
    """(the protocol loss's mean over these views, the student's logits)."""
    config = step.config
    with precision.autocast(step.device, config.train.precision):
        logits = step.model(images)
        teacher_logits = None
        if step.teacher is not None:
            with torch.no_grad():
                teacher_logits = step.teacher(images)
        loss = compute_loss(config.label_mode, logits.float(), targets, temperature=config.teacher.temperature,
                            teacher_logits=None if teacher_logits is None else teacher_logits.float())
    return loss, logits


def tile_views(config: Config) -> str:
    """PCA's Augment: one view per stored image per epoch ("image") or one per tile ("tile"); without it
    ("whole") the method reports a grid of 1 and each stored image is one plain view."""
    return "image" if config.prune.pca_views == "whole" else config.prune.pca_views


def validation_batches(inputs: LoopInputs, where):
    """() -> iterable of (images, labels): the transformed validation set, from memory when the
    driver put it in the object store, else from this worker's Ray Data shard."""
    size = inputs.config.eval.batch_size
    if inputs.val_arrays is None:
        shard = where.dataset_shard("val")
        return lambda: ((b["image"], b["label"])
                        for b in shard.iter_torch_batches(batch_size=size, drop_last=False))
    arrays = received(inputs.val_arrays)
    images, labels = torch.from_numpy(np.array(arrays["image"])), torch.from_numpy(np.array(arrays["label"]))
    return lambda: ((images[i:i + size], labels[i:i + size]) for i in range(0, len(labels), size))


def maybe_evaluate(run: LoopRun, epoch: int) -> dict:
    """Rank 0 evaluates the whole validation set every `eval.every` epochs and after the last."""
    config, history = run.config, run.state.history
    last = epoch + 1 == config.schedule.epochs
    if run.where.rank != 0 or not (last or (epoch + 1) % config.eval.every == 0):
        return {}
    summary = evaluate(run.state.model, run.validation(), num_classes=run.inputs.num_classes, device=run.where.device,
                       precision=config.eval.precision)
    summary["epoch"] = epoch
    history.last_eval = summary
    if summary["top1"] > history.best_top1:
        history.best_top1, history.best_top5 = summary["top1"], summary["top5"]
        history.best_epoch, history.best_per_class = epoch, summary["per_class_top1"]
    return summary


def report(run: LoopRun, epoch: int, metrics: dict) -> None:
    """Every rank reports each epoch; rank 0 attaches a checkpoint every K epochs and at the end."""
    last = epoch + 1 == run.config.schedule.epochs
    write = None
    if checkpoint_due(run.config, epoch) and run.where.rank == 0:
        write = lambda directory: save_state(directory, run.state, final=last)  # noqa: E731
    run.where.report(metrics, epoch, write)


def checkpoint_due(config: Config, epoch: int) -> bool:
    return epoch + 1 == config.schedule.epochs or (epoch + 1) % config.train.checkpoint_every == 0


def save_state(directory: Path, state: TrainingState, final: bool) -> None:
    """The checkpoint's files. The state is serialised in memory, then written by Python: a full disk
    is then an OSError (ENOSPC) that names itself, not torch's opaque "file write failed"."""
    buffer = io.BytesIO()
    torch.save({"model": unwrap_model(state.model).state_dict(), "optimizer": state.optimizer.state_dict(),
                "scheduler": state.scheduler.state_dict(), "history": state.history.__dict__}, buffer)
    (directory / STATE_FILE).write_bytes(buffer.getbuffer())
    (directory / SUMMARY_FILE).write_text(json.dumps({**summarize(state.history), "final": final}))


def summarize(history: History) -> dict:
    last = history.last_eval
    return {"top1_final": last.get("top1"), "top5_final": last.get("top5"),
            "top1_best": history.best_top1, "top5_best": history.best_top5,
            "best_epoch": history.best_epoch, "per_class_final": last.get("per_class_top1"),
            "per_class_best": history.best_per_class, "epochs_done": history.epochs_done,
            "train_seconds": history.train_seconds,
            "images_per_s": history.samples_seen / max(history.train_seconds, 1e-9),
            "optimizer_steps": history.optimizer_steps, "prior_wall_seconds": history.prior_wall_seconds,
            "speed": history.speed}


def restore(checkpoint_dir: Path | None, state: TrainingState) -> History:
    """Load the weights, optimizer and schedule from the last checkpoint into `state`, and return its
    history (a new one without a checkpoint)."""
    if checkpoint_dir is None:
        return History()
    saved = load_weights_only(Path(checkpoint_dir) / STATE_FILE, what="checkpoint",
                              fix=f"delete that checkpoint folder {checkpoint_dir} or rerun with --force to "
                                  f"start the cell again")
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    history = History(**saved["history"])
    history.prior_wall_seconds = history.wall_seconds
    console(f"resuming from checkpoint after epoch {history.epochs_done}")
    return history


def open_dynamics(inputs: LoopInputs, rank: int):
    directory = inputs.dynamics_dir
    if not directory:
        return None
    from trainers.dynamics import DynamicsWriter

    return DynamicsWriter(Path(directory), rank=rank)


class MetricLogger:
    """Rank 0's per-epoch MLflow metrics and terminal progress line.

    Epochs wait in `pending` (one list of metrics per epoch) until a flush. A store another process
    holds locked never stops training: a flush then keeps them pending (they also ride along in the
    checkpoints, `unlogged`) and the next flush tries again; the last flush waits out the store.
    """

    def __init__(self, inputs: LoopInputs, rank: int):
        self.enabled = rank == 0
        self.label, self.epochs = inputs.cell, inputs.config.schedule.epochs
        self.uri, self.run_id = inputs.mlflow_uri, inputs.run_id
        self.client = self.impatient = None
        if self.enabled and self.run_id and self.uri:
            self.client = retrying_client(self.uri)  # waits out a busy store (store_retry.WINDOW_S)
            self.impatient = retrying_client(self.uri, window=0)  # StoreBusyError at once
        self.logged_through = self.last_logged_epoch()
        self.pending: list[list] = []
        self.held_back = False  # a busy store made a flush keep the epochs (said once per episode)

    def last_logged_epoch(self) -> int:
        """The last epoch an earlier attempt of this run logged (-1 if none).

        A resumed cell retrains the epochs after its checkpoint with the same seeds, so the same
        figures; they are not logged a second time, and the run reads as one.
        """
        if self.client is None:
            return -1
        history = self.client.get_metric_history(self.run_id, names.TRAIN_LOSS)
        return max((m.step for m in history), default=-1)

    def fail(self, reason: str) -> None:
        if self.enabled and self.client is not None:
            self.client.set_tag(self.run_id, "failure", reason)

    def log(self, epoch: int, metrics: dict, history: History) -> None:
        """Print the epoch's progress line; its metrics wait for the next `flush`."""
        if not self.enabled:
            return
        if self.client is not None and epoch > self.logged_through:
            now = int(time.time() * 1000)
            self.pending.append([(key, float(value), now, epoch) for key, value in metrics.items()])
        console(progress_line(self.label, epoch, self.epochs, metrics, history))

    def unlogged(self) -> list:
        """The pending epochs' metrics as plain (key, value, timestamp, step) rows, for a checkpoint."""
        return [list(row) for rows in self.pending for row in rows]

    def restore(self, rows: list) -> None:
        """Queue the metrics a checkpoint carried because the store was busy, unless logged since."""
        if self.client is None:
            return
        by_epoch: dict[int, list] = {}
        for key, value, timestamp, step in rows:
            if step > self.logged_through:
                by_epoch.setdefault(int(step), []).append((key, value, int(timestamp), int(step)))
        self.pending = [by_epoch[step] for step in sorted(by_epoch)] + self.pending

    def flush(self, wait: bool = False) -> None:
        """Log the pending epochs, whole epochs per MLflow call (<= 1000 metrics a call).

        Without `wait`, a busy store keeps them pending and training goes on; with `wait` (the end
        of training) a busy store is waited for, up to StoreBusyError.
        """
        if self.client is None or not self.pending:
            return
        from mlflow.entities import Metric

        if not wait and store_busy_now(self.uri):
            return self.hold_back()
        try:
            for count in epoch_batches(self.pending):
                metrics = [Metric(*row) for rows in self.pending[:count] for row in rows]
                (self.client if wait else self.impatient).log_batch(self.run_id, metrics=metrics)
                del self.pending[:count]
        except StoreBusyError:
            if wait:
                raise
            return self.hold_back()
        self.held_back = False

    def hold_back(self) -> None:
        if not self.held_back:
            console(f"[{self.label}] MLflow store {store_name(self.uri)} is locked by another process: epochs "
                    f"{self.pending[0][0][3] + 1}.. stay pending (and in the checkpoints); training goes on")
        self.held_back = True


def epoch_batches(pending: list[list], limit: int = 1000) -> list[int]:
    """How many pending epochs each MLflow call takes: whole epochs, at most `limit` metrics a call
    (an epoch is never split, so a run's logged epochs are always complete)."""
    counts, size = [], limit + 1
    for rows in pending:
        if size + len(rows) > limit:
            counts.append(0)
            size = 0
        counts[-1] += 1
        size += len(rows)
    return counts


def console(line: str) -> None:
    """Print once to the worker's real stdout (Ray forwards it to the driver).

    Ray Train patches `print` on its workers to both echo and log each line, which shows every
    progress line twice on the driver; writing to the process's own stdout bypasses that.
    """
    print(line, file=sys.__stdout__ or sys.stdout, flush=True)


def progress_line(label: str, epoch: int, epochs: int, metrics: dict, history: History) -> str:
    per_epoch = history.train_seconds / max(history.epochs_done, 1)
    eta = int(per_epoch * (epochs - epoch - 1))
    top1 = metrics.get(names.VAL_TOP1)
    acc = f"top1 {top1:5.2f}  best {history.best_top1:5.2f}" if top1 is not None else ""
    loss = metrics[names.TRAIN_LOSS]  # soft-label (KD) losses are ~1e-5: scientific outside [1e-3, 1e5)
    shown = f"{loss:.4f}" if loss == 0 or 1e-3 <= abs(loss) < 1e5 else f"{loss:.3e}"
    return (f"[{label}] epoch {epoch + 1}/{epochs}  loss {shown}  {acc}  "
            f"{metrics[names.TRAIN_IMAGES_PER_S]:.0f} img/s  ETA {eta // 60}:{eta % 60:02d}")


os.environ.setdefault("PYTHONUNBUFFERED", "1")
