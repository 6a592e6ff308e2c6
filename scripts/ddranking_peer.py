"""DD-Ranking 0.2's hard-label evaluator on one of our compressed Fashion-MNIST sets: the peer that
`python -m orchestrator bench --only peer` times our cell against.

Runs in DD-Ranking's own environment (it pins other packages than ours):

    python -m venv --system-site-packages /tmp/ddr && /tmp/ddr/bin/pip install ddranking==0.2.0
    /tmp/ddr/bin/python scripts/ddranking_peer.py --set SET.parquet --test TEST.parquet --epochs 300

DD-Ranking has no Fashion-MNIST loader; this script hands its evaluator the same images our cell
trains on (the set's parquet) and the 10,000 test images, as 3-channel tensors padded to 32 x 32 (its
ConvNet is built for 3 channels and takes 28 px only with 1; the classic DC ConvNet pads MNIST the
same way), normalised with the Fashion-MNIST mean/std. Everything else is DD-Ranking's own
hard-label recipe (its configs/ hard-label YAML): ConvNet-3, SGD lr 0.01 momentum 0.9 wd 5e-4, step
decay at half the epochs, DSA augmentation, batch 128, a test pass every 10 epochs. Prints one JSON
line: wall seconds of the evaluation, best top-1, epochs.
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

MEAN, STD = 0.2860, 0.3530
DSA_PARAMS = {"flip": 0.5, "rotate": 15.0, "saturation": 2.0, "brightness": 1.0, "contrast": 0.5,
              "scale": 1.2, "crop": 0.125, "cutout": 0.5}


def tensors(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, 32, 32) normalised float images (28 px padded with black) and int64 labels of a
    benchmark-schema parquet file."""
    table = pq.read_table(path, columns=["image", "class_id"])
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("L"))
                       for cell in table.column("image").to_pylist()])
    pixels = np.pad(pixels, ((0, 0), (2, 2), (2, 2)))  # 32 x 32: DD-Ranking's ConvNet takes 28 px only for 1 channel
    images = (torch.from_numpy(pixels).float() / 255.0 - MEAN) / STD
    labels = torch.from_numpy(table.column("class_id").to_numpy().astype(np.int64))
    return images[:, None].expand(-1, 3, -1, -1).contiguous(), labels


def patch_dataset(train: tuple, test: tuple) -> None:
    """Answer DD-Ranking's get_dataset for our images (it knows CIFAR, TinyImageNet, ImageNet only)."""
    import ddranking.metrics.hard_label as hard_label
    from ddranking.utils import TensorDataset

    identity = {c: c for c in range(10)}

    def get_dataset(dataset, data_path, im_size, use_zca, custom_val_trans, device):
        test_set = TensorDataset(*test)
        return 3, (32, 32), [MEAN] * 3, [STD] * 3, 10, TensorDataset(*train), test_set, test_set, identity, identity

    hard_label.get_dataset = get_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", required=True, help="the compressed set (benchmark-schema parquet)")
    parser.add_argument("--test", required=True, help="the test split (benchmark-schema parquet)")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train, test = tensors(args.set), tensors(args.test)
    patch_dataset(train, test)
    from ddranking.metrics import LabelRobustScoreHard

    ipc = len(train[1]) // 10
    evaluator = LabelRobustScoreHard(  # "CIFAR10": the name under which it takes a tensor dataset as is
        dataset="CIFAR10", real_data_path="", ipc=ipc, model_name="ConvNet-3", data_aug_func="dsa",
        aug_params=dict(DSA_PARAMS), optimizer="sgd", lr_scheduler="step", step_size=max(1, args.epochs // 2),
        weight_decay=0.0005, momentum=0.9, num_eval=1, im_size=(32, 32), num_epochs=args.epochs,
        real_batch_size=256, syn_batch_size=128, num_workers=0, device="cpu", save_path="/tmp/ddranking-peer/x.csv")
    started = time.perf_counter()
    top1, lr = evaluator._compute_hard_label_metrics_helper(image_tensor=train[0], image_path=None,
                                                            hard_labels=train[1], lr=0.01, mode="syn")
    seconds = time.perf_counter() - started
    print(json.dumps({"peer": "ddranking==0.2.0", "wall_s": round(seconds, 2), "top1_best": float(top1),
                      "epochs": args.epochs, "images": len(train[1]), "threads": args.threads}))


if __name__ == "__main__":
    main()
