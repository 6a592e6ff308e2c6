"""Where a cell's loop runs, and where its epoch reports and checkpoints go.

A cell with `train.workers >= 1` runs in a Ray Train worker group (`WorkerGroup`): rank, device
and dataset shards come from Ray Train, which persists each checkpoint under the run's storage
path, hands the latest back on a restart and forwards every report (to Tune through
`TuneReportCallback`). A cell with `train.workers = 0` runs in the calling process (Ray Train's
local mode: no controller or worker actors to start; `InProcess`): one rank on this process's
device, the driver's Ray Datasets, and checkpoints written here as `checkpoint_epoch<N>` folders
under the same storage folder; inside a Tune trial its epoch reports go to Tune directly (Ray
Train's own calls are refused inside a Tune function). The training loop is the same either way.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from trainers.loop_inputs import LoopInputs

WriteFn = Callable[[Path], None]  # writes one checkpoint's files into the given folder


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint folder of a cell's storage folder (either kind), or None."""
    checkpoints = sorted(run_dir.glob("checkpoint_*")) if run_dir.exists() else []
    return checkpoints[-1] if checkpoints else None


class WorkerGroup:
    """One rank of a Ray Train worker group (workers >= 1)."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    def prepare_model(self, model):
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def dataset_shard(self, name: str):
        import ray.train

        return ray.train.get_dataset_shard(name)

    @contextmanager
    def latest(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def report(self, metrics: dict, epoch: int, write: WriteFn | None) -> None:
        import ray.train

        if write is None:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


class InProcess:
    """The only rank of an in-process cell (workers = 0); keeps the `keep` newest checkpoints."""

    rank, world = 0, 1

    def __init__(self, run_dir: Path, *, keep: int, to_tune: bool, use_gpu: bool, datasets: dict | None):
        self.run_dir, self.keep, self.to_tune = Path(run_dir), max(1, keep), to_tune
        self.device = torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")
        self.datasets = datasets or {}

    def prepare_model(self, model):
        return model.to(self.device)

    def dataset_shard(self, name: str):
        return self.datasets[name]

    @contextmanager
    def latest(self) -> Iterator[Path | None]:
        yield latest_checkpoint(self.run_dir)

    def report(self, metrics: dict, epoch: int, write: WriteFn | None) -> None:
        if write is not None:
            self.save(epoch, write)
        if self.to_tune:
            from ray import tune

            tune.report(metrics)

    def save(self, epoch: int, write: WriteFn) -> None:
        """Write into a hidden folder, then rename: a crash never leaves half a checkpoint."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        target = self.run_dir / f"checkpoint_epoch{epoch + 1:06d}"
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.run_dir))
        write(partial)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        for old in sorted(self.run_dir.glob("checkpoint_*"))[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)


def placement(inputs: LoopInputs):
    """In-process when the driver ran the loop itself (it then passes `local_run_dir`)."""
    if inputs.local_run_dir:
        return InProcess(Path(inputs.local_run_dir), keep=inputs.config.train.keep_checkpoints,
                         to_tune=inputs.tune_report, use_gpu=inputs.use_gpu, datasets=inputs.local_datasets)
    return WorkerGroup()
