"""One protocol at any worker count, on a real local Ray with real Fashion-MNIST (docs/protocol.md §Batch and shuffle).

- the same IPC 50 cell in-process (Ray Train local mode) and with 1 and 2 Ray Train workers logs the
  same optimizer steps and samples seen, and in-process equals one worker loss for loss;
- inside real Ray Train workers, the class-ordered IPC 50 set gives every rank's batches the class
  mix of a uniform shuffle, and every image is used exactly once per epoch across the ranks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from orchestrator.cell import prepare_data, run_cell
from orchestrator.tracking import tracking_uri
from trainers.loop_inputs import LoopInputs

pytestmark = pytest.mark.slow
IPC50 = {"data.ipc": 50, "train.batch_size": 128, "schedule.epochs": 2, "eval.every": 2, "train.threads": 1}


def logged(config, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(MlflowClient(tracking_uri(config)).get_metric_history(run_id, key),
                                    key=lambda m: m.step)]


def test_in_process_one_and_two_workers_take_the_same_optimizer_steps(ray_cluster, tiny_config):
    counts, losses = {}, {}
    for workers in (0, 1, 2):
        config = tiny_config(**IPC50, **{"train.workers": workers})
        result = run_cell(config)
        counts[workers] = (logged(config, result.run_id, "train/optimizer_steps"),
                           logged(config, result.run_id, "train/samples_seen"))
        losses[workers] = logged(config, result.run_id, "train/loss")
    steps_per_epoch = math.ceil(500 / 128)
    assert counts[0] == counts[1] == counts[2] == ([steps_per_epoch, 2 * steps_per_epoch], [500, 1000])
    assert losses[0] == losses[1]  # the same loop, in the cell's process or in one Ray Train worker


def test_two_ray_workers_see_uniform_class_mix_and_each_image_once(ray_cluster, tiny_config, tmp_path):
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.data.pipeline import decoded_arrays, train_dataset

    def record_rank_batches(loop_config: dict) -> None:
        """Walk two epochs of the real plan in a Ray Train worker; write what each step held.

        Nested in the test so that Ray pickles it by value (workers cannot import test modules).
        """
        import ray.train

        from trainers.loop import training_steps
        from trainers.loop_inputs import LoopInputs
        from trainers.reporting import WorkerGroup

        out = loop_config.pop("out")
        where = WorkerGroup()
        rank = where.rank
        epoch_steps = training_steps(LoopInputs.from_loop_config(loop_config), where)
        record = []
        for epoch in range(2):
            steps, samples = epoch_steps(epoch)
            record.append({"samples": samples, "steps": [
                {"labels": micro.label.tolist(), "keys": micro.key.tolist()} for step in steps for micro in step]})
        Path(out, f"rank-{rank}.json").write_text(json.dumps(record))
        ray.train.report({"done": 1})

    config = tiny_config(**IPC50, **{"train.workers": 2})
    data = prepare_data(config)
    arrays = decoded_arrays(train_dataset(data.train.path, mode="L", num_rows=data.train.num_rows, image_size=28))
    by_class = np.argsort(arrays["label"], kind="stable")  # worst case: keys follow the classes
    arrays = {"image": arrays["image"][by_class], "label": arrays["label"][by_class],
              "key": np.arange(len(by_class))}
    trainer = TorchTrainer(
        record_rank_batches,
        train_loop_config={**LoopInputs(config, num_classes=10, train_arrays=ray.put(arrays)).to_loop_config(),
                           "out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name="rank-batches", storage_path=str(tmp_path / "ray")))
    trainer.fit()

    ranks = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in range(2)]
    for epoch in range(2):
        keys = [k for rank in ranks for step in rank[epoch]["steps"] for k in step["keys"]]
        assert sorted(keys) == sorted(arrays["key"].tolist())  # each image exactly once across ranks
        assert ranks[0][epoch]["samples"] == 500
        assert len(ranks[0][epoch]["steps"]) == len(ranks[1][epoch]["steps"]) == 4
    # 64 images per rank and step: a uniform shuffle of 10 classes x 50 gives 9.99 classes per batch.
    distinct = [len(set(step["labels"])) for rank in ranks for epoch in rank for step in epoch["steps"]
                if len(step["labels"]) == 64]
    assert len(distinct) == 12 and np.mean(distinct) >= 9.6 and min(distinct) >= 8, distinct
