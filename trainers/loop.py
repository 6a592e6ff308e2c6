"""The Ray Train worker loop: one benchmark cell's training, evaluation and checkpoints.

`train_loop_per_worker(loop_config)` runs on every worker (or in the driver in local mode). It is
pure with respect to its input: the resolved config dict plus a few facts the driver computed
(number of classes, teacher file, MLflow run). Rank 0 logs per-epoch metrics to MLflow (a store
another process holds locked delays them, never the training or a checkpoint), prints progress,
evaluates, and writes checkpoints that hold everything needed to resume exactly.
"""

from __future__ import annotations

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

import numpy as np
import torch

import trainers.models  # noqa: F401  (registers convnet3 / resnet18_small in timm)
from orchestrator.config import Config, config_from_dict, replace
from orchestrator.errors import StoreBusyError
from orchestrator.store_retry import retrying_client, store_busy_now, store_name
from trainers.batches import MemoryBatches, augment_settings, chunk_slices, stream_steps
from trainers.evaluate import evaluate
from trainers.losses import compute_loss
from trainers.mix import build_mixup, mix_batch
from trainers.models import create_student, load_teacher, load_weights_only, unwrap_model
from trainers import precision
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


def seed_everything(seed: int, epoch: int, rank: int) -> None:
    """Seed python, numpy (timm's Mixup draws from it) and torch for one epoch on one rank."""
    mixed = (seed * 1_000_003 + epoch * 1009 + rank) % (2**32)
    random.seed(mixed)
    np.random.seed(mixed)
    torch.manual_seed(mixed)


def train_loop_per_worker(loop_config: dict) -> None:
    config = config_from_dict(loop_config["config"])
    quiet_ray_train_logs()
    where = placement(loop_config, keep=config.train.keep_checkpoints)
    rank, world, device = where.rank, where.world, where.device
    torch.use_deterministic_algorithms(True, warn_only=True)
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)

    num_classes = loop_config["num_classes"]
    with where.latest() as checkpoint_dir:
        model, optimizer, scheduler, history = build_training_state(config, num_classes, device, checkpoint_dir)
    config, history.speed = resolve_speed(config, model, device, world, loop_config.get("speed_dir"))
    model = where.prepare_model(precision.prepare_model(model, channels_last=config.train.channels_last,
                                                        compile=config.train.compile))
    teacher = None
    if config.label_mode == "soft":
        teacher = load_teacher(loop_config["teacher"], num_classes=num_classes, in_chans=config.in_chans,
                               img_size=config.model.input_size, device=device)
    mixup = build_mixup(config.mix.type, mixup_alpha=config.mix.mixup_alpha,
                        cutmix_alpha=config.mix.cutmix_alpha, prob=config.mix.prob,
                        switch_prob=config.mix.switch_prob, num_classes=num_classes)
    logger = MetricLogger(loop_config, rank)
    logger.restore(history.unlogged_metrics)
    dynamics = open_dynamics(loop_config, rank)

    epoch_steps = training_steps(loop_config, config, where)
    val_source = validation_batches(loop_config, config, where)
    epochs = config.schedule.epochs
    attempt_start = time.perf_counter()
    for epoch in range(history.epochs_done, epochs):
        seed_everything(config.seed, epoch, rank)
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        steps, samples = epoch_steps(epoch)
        loss, seen, step_count = train_one_epoch(config, model, teacher, mixup, optimizer, steps, epoch,
                                                 device, dynamics)
        samples = samples if samples is not None else seen * world
        if not math.isfinite(loss):
            logger.flush(wait=True)
            logger.fail(f"diverged: training loss {loss} at epoch {epoch + 1}")
            raise TrainingDiverged(f"cell {logger.label} diverged: training loss is {loss} at epoch "
                                   f"{epoch + 1}. Fix: lower optim.lr (now {config.optim.lr}) or check the data")
        scheduler.step()
        elapsed = time.perf_counter() - start
        history.train_seconds += elapsed
        history.optimizer_steps += step_count
        history.samples_seen += samples
        history.epochs_done = epoch + 1
        history.wall_seconds = history.prior_wall_seconds + time.perf_counter() - attempt_start
        eval_start = time.perf_counter()
        evaluation = maybe_evaluate(config, model, val_source, epoch, num_classes, device, rank, history)
        metrics = {"train/loss": loss, "train/lr": lr, "train/epoch_s": elapsed,
                   "train/images_per_s": samples / max(elapsed, 1e-9),
                   "train/optimizer_steps": history.optimizer_steps, "train/samples_seen": history.samples_seen}
        metrics.update({f"val/{k}": v for k, v in evaluation.items() if k in ("top1", "top5", "loss")})
        if evaluation:
            metrics["val/eval_s"] = time.perf_counter() - eval_start
        logger.log(epoch, metrics, history, epochs)
        if checkpoint_due(config, epoch) or evaluation:
            logger.flush()  # MLflow gets the epochs in batches, up to the checkpoint unless the store is busy
        history.unlogged_metrics = logger.unlogged()  # the checkpoint keeps what a busy store held back
        if dynamics is not None:
            dynamics.end_epoch()
        reported = {**metrics, "epoch": epoch + 1, "val/top1": history.last_eval.get("top1", 0.0)}
        report(config, epoch, reported, history, model, optimizer, scheduler, rank, where)
    logger.flush(wait=True)  # after the last checkpoint: what a busy store held back, waiting for it now
    if dynamics is not None:
        dynamics.close()


def quiet_ray_train_logs() -> None:
    """Keep the console to one progress line per epoch: Ray Train logs every report (metrics and
    checkpoint path) at INFO under a logger named after its module file; those records are dropped."""
    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def build_training_state(config: Config, num_classes: int, device, checkpoint_dir: Path | None):
    """Student, optimizer, schedule and history, on `device`, restored from `checkpoint_dir` if any.

    The model moves to its device before the optimizer exists, so a restored optimizer state is
    cast to the parameters' device (a GPU resume would otherwise step CUDA weights with CPU state).
    """
    torch.manual_seed(config.seed)
    model = create_student(config.model.name, num_classes=num_classes, in_chans=config.in_chans,
                           img_size=config.model.input_size).to(device)
    optimizer = build_optimizer(model, name=config.optim.name, lr=config.optim.lr,
                                weight_decay=config.optim.weight_decay, momentum=config.optim.momentum)
    scheduler = build_scheduler(optimizer, epochs=config.schedule.epochs,
                                warmup_epochs=config.schedule.warmup_epochs)
    return model, optimizer, scheduler, restore(checkpoint_dir, model, optimizer, scheduler)


def resolve_speed(config: Config, model, device, world: int, speed_dir: str | None) -> tuple[Config, dict]:
    """The config with its "auto" speed switches resolved here (trainers.precision.resolve_step), and
    the resolved switches as the history records them (the cell logs them as `resolved.*` tags)."""
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


def training_steps(loop_config: dict, config: Config, where):
    """epoch -> (this rank's optimizer steps, global views of the epoch or None when streaming).

    A set the driver put in the object store is shuffled whole per epoch; a larger set streams
    from this rank's Ray Data shard (docs/protocol.md §Batch and shuffle).
    """
    augment = augment_settings(config)
    sizes = {"batch_size": config.train.batch_size, "world": where.world, "accum": config.train.grad_accum}
    grid = loop_config.get("tile_grid", 1)  # the method says how its stored images are tiled
    arrays_ref = loop_config.get("train_arrays")
    if arrays_ref is None:
        if loop_config.get("label_ratio", 1.0) < 1 and config.label_mode == "soft":
            raise ValueError("a pruned soft-label pool needs the set in memory; this one streams")
        shard = where.dataset_shard("train")
        return lambda epoch: (stream_steps(shard, epoch, grid=grid, tile_views=tile_views(config), augment=augment,
                                           shuffle_buffer=config.train.shuffle_buffer, **sizes), None)
    label_ratio = loop_config.get("label_ratio", 1.0) if config.label_mode == "soft" else 1.0
    memory = MemoryBatches(received(arrays_ref), grid=grid, tile_views=tile_views(config), augment=augment,
                           label_ratio=label_ratio, epochs=config.schedule.epochs)

    def epoch_steps(epoch: int):
        steps, counts = memory.steps(epoch, rank=where.rank, **sizes)
        return steps, counts.samples

    return epoch_steps


def train_one_epoch(config: Config, model, teacher, mixup, optimizer, steps, epoch: int, device,
                    dynamics) -> tuple[float, int, int]:
    """One pass over this rank's optimizer steps; returns (mean loss, views seen here, steps)."""
    model.train()
    chunk = exact_chunk(config.train.chunk, model)
    total_loss, total_seen, step_count = 0.0, 0, 0
    for micro_batches in steps:
        optimizer.zero_grad(set_to_none=True)
        for micro in micro_batches:
            loss, seen = forward_backward(config, model, teacher, mixup, micro, epoch, device, dynamics, chunk)
            total_loss += loss * seen
            total_seen += seen
        optimizer.step()
        step_count += 1
    return total_loss / max(total_seen, 1), total_seen, step_count


def exact_chunk(chunk: int, model: torch.nn.Module) -> int:
    """`train.chunk` where running a batch's forward/backward in chunks gives the same gradient and
    is worth it: a model on a CPU (whose caches it is for) with no layer coupling a batch's samples
    (BatchNorm does). Else 0, the whole batch."""
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    coupled = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return chunk if chunk > 0 and on_cpu and not coupled else 0


def forward_backward(config: Config, model, teacher, mixup, micro, epoch: int, device, dynamics,
                     chunk: int = 0) -> tuple[float, int]:
    """Loss of one micro-batch, backpropagated with its weight; returns (mean loss, views).

    The batch is mixed whole, then (chunk > 0) its forward/backward runs `chunk` views at a time,
    each chunk's mean loss weighted by its share: the gradient of the whole batch's mean loss, with
    activations small enough to stay in a CPU's cache (docs/protocol.md §Deviations).
    """
    images = precision.to_device_batch(micro.image, device, config.train.channels_last)
    labels = micro.label.to(device)
    if micro.mix_seed is not None:  # a stored batch of a pruned label pool: its mix, as when it was stored
        np.random.seed(micro.mix_seed)
    images, targets = mix_batch(mixup, images, labels)
    total, keys = len(images), micro.key.numpy()[: len(images)]
    loss_sum = 0.0
    for part, share in chunk_slices(total, chunk):
        loss, logits = chunk_loss(config, model, teacher, images[part], targets[part], device)
        if dynamics is not None:
            dynamics.add(epoch, keys[part], logits.detach().float().cpu(), labels[part].cpu().numpy())
        (loss * (micro.weight * share)).backward()
        loss_sum += loss.item() * share
    return loss_sum, total


def chunk_loss(config: Config, model, teacher, images, targets, device):
    """(the protocol loss's mean over these views, the student's logits)."""
    with precision.autocast(device, config.train.precision):
        logits = model(images)
        teacher_logits = None
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(images)
        loss = compute_loss(config.label_mode, logits.float(), targets, temperature=config.teacher.temperature,
                            teacher_logits=None if teacher_logits is None else teacher_logits.float())
    return loss, logits


def tile_views(config: Config) -> str:
    """PCA's Augment: one view per stored image per epoch ("image") or one per tile ("tile"); without it
    ("whole") the method reports a grid of 1 and each stored image is one plain view."""
    return "image" if config.prune.pca_views == "whole" else config.prune.pca_views


def validation_batches(loop_config: dict, config: Config, where):
    """() -> iterable of (images, labels): the transformed validation set, from memory when the
    driver put it in the object store, else from this worker's Ray Data shard."""
    size = config.eval.batch_size
    arrays_ref = loop_config.get("val_arrays")
    if arrays_ref is None:
        shard = where.dataset_shard("val")
        return lambda: ((b["image"], b["label"])
                        for b in shard.iter_torch_batches(batch_size=size, drop_last=False))
    arrays = received(arrays_ref)
    images, labels = torch.from_numpy(np.array(arrays["image"])), torch.from_numpy(np.array(arrays["label"]))
    return lambda: ((images[i:i + size], labels[i:i + size]) for i in range(0, len(labels), size))


def maybe_evaluate(config: Config, model, batches, epoch: int, num_classes: int, device, rank: int,
                   history: History) -> dict:
    """Rank 0 evaluates the whole validation set every `eval.every` epochs and after the last."""
    last = epoch + 1 == config.schedule.epochs
    if rank != 0 or not (last or (epoch + 1) % config.eval.every == 0):
        return {}
    summary = evaluate(model, batches(), num_classes=num_classes, device=device, precision=config.eval.precision)
    summary["epoch"] = epoch
    history.last_eval = summary
    if summary["top1"] > history.best_top1:
        history.best_top1, history.best_top5 = summary["top1"], summary["top5"]
        history.best_epoch, history.best_per_class = epoch, summary["per_class_top1"]
    return summary


def report(config: Config, epoch: int, metrics: dict, history: History, model, optimizer, scheduler,
           rank: int, where) -> None:
    """Every rank reports each epoch; rank 0 attaches a checkpoint every K epochs and at the end."""
    last = epoch + 1 == config.schedule.epochs
    write = None
    if checkpoint_due(config, epoch) and rank == 0:
        write = lambda directory: save_state(directory, model, optimizer, scheduler, history, final=last)  # noqa: E731
    where.report(metrics, epoch, write)


def checkpoint_due(config: Config, epoch: int) -> bool:
    return epoch + 1 == config.schedule.epochs or (epoch + 1) % config.train.checkpoint_every == 0


def save_state(directory: Path, model, optimizer, scheduler, history: History, final: bool) -> None:
    """The checkpoint's files. The state is serialised in memory, then written by Python: a full disk
    is then an OSError (ENOSPC) that names itself, not torch's opaque "file write failed"."""
    state = io.BytesIO()
    torch.save({"model": unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "history": history.__dict__}, state)
    (directory / STATE_FILE).write_bytes(state.getbuffer())
    (directory / SUMMARY_FILE).write_text(json.dumps({**summarize(history), "final": final}))


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


def restore(checkpoint_dir: Path | None, model, optimizer, scheduler) -> History:
    """Load weights, optimizer, schedule and history from the last checkpoint, if any."""
    if checkpoint_dir is None:
        return History()
    state = load_weights_only(Path(checkpoint_dir) / STATE_FILE, what="checkpoint",
                              fix=f"delete that checkpoint folder {checkpoint_dir} or rerun with --force to "
                                  f"start the cell again")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    history = History(**state["history"])
    history.prior_wall_seconds = history.wall_seconds
    console(f"resuming from checkpoint after epoch {history.epochs_done}")
    return history


def open_dynamics(loop_config: dict, rank: int):
    directory = loop_config.get("dynamics_dir")
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

    def __init__(self, loop_config: dict, rank: int):
        self.enabled = rank == 0
        self.label = loop_config.get("cell", "cell")
        self.uri, self.run_id = loop_config.get("mlflow_uri"), loop_config.get("run_id")
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
        history = self.client.get_metric_history(self.run_id, "train/loss")
        return max((m.step for m in history), default=-1)

    def fail(self, reason: str) -> None:
        if self.enabled and self.client is not None:
            self.client.set_tag(self.run_id, "failure", reason)

    def log(self, epoch: int, metrics: dict, history: History, epochs: int) -> None:
        """Print the epoch's progress line; its metrics wait for the next `flush`."""
        if not self.enabled:
            return
        if self.client is not None and epoch > self.logged_through:
            now = int(time.time() * 1000)
            self.pending.append([(key, float(value), now, epoch) for key, value in metrics.items()])
        console(progress_line(self.label, epoch, epochs, metrics, history))

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
    top1 = metrics.get("val/top1")
    acc = f"top1 {top1:5.2f}  best {history.best_top1:5.2f}" if top1 is not None else ""
    loss = metrics["train/loss"]  # soft-label (KD) losses are ~1e-5: scientific outside [1e-3, 1e5)
    shown = f"{loss:.4f}" if loss == 0 or 1e-3 <= abs(loss) < 1e5 else f"{loss:.3e}"
    return (f"[{label}] epoch {epoch + 1}/{epochs}  loss {shown}  {acc}  "
            f"{metrics['train/images_per_s']:.0f} img/s  ETA {eta // 60}:{eta % 60:02d}")


os.environ.setdefault("PYTHONUNBUFFERED", "1")
