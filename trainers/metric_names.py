"""The MLflow metric keys a cell logs, in one place.

The training loop writes the per-epoch keys, the cell (`orchestrator/cell.py`) the final ones and
distillation methods their generation cost; `orchestrator/report/runs.py` reads them back. Each side
imports the names from here, so a key cannot be spelt two ways. Imports nothing: the worker side
(trainers/) and the driver side both use it.
"""

from __future__ import annotations

# Per epoch, written by the training loop (rank 0), step = epoch.
TRAIN_LOSS = "train/loss"
TRAIN_LR = "train/lr"
TRAIN_EPOCH_S = "train/epoch_s"
TRAIN_IMAGES_PER_S = "train/images_per_s"
TRAIN_OPTIMIZER_STEPS = "train/optimizer_steps"
TRAIN_SAMPLES_SEEN = "train/samples_seen"
VAL_TOP1 = "val/top1"
VAL_TOP5 = "val/top5"
VAL_LOSS = "val/loss"
VAL_EVAL_S = "val/eval_s"

#: the evaluation summary's keys (trainers/evaluate.py) -> the epoch metric each is logged as
EVALUATION_METRICS = {"top1": VAL_TOP1, "top5": VAL_TOP5, "loss": VAL_LOSS}

# Once per cell, written by the cell after training, step = epochs done.
VAL_TOP1_FINAL = "val/top1_final"
VAL_TOP5_FINAL = "val/top5_final"
VAL_TOP1_BEST = "val/top1_best"
VAL_TOP5_BEST = "val/top5_best"
VAL_BEST_EPOCH = "val/best_epoch"
TIME_TRAIN_S = "time/train_s"
TIME_WALL_S = "time/wall_s"
THROUGHPUT_IMAGES_PER_S = "throughput/images_per_s"
STORAGE_IMAGE_BYTES = "storage/image_bytes"
STORAGE_SOFT_LABEL_BYTES = "storage/soft_label_bytes"
DATA_NUM_IMAGES = "data/num_images"

# Once per cell of a distilled set (its method's generation cost), logged with the final metrics.
DISTILL_GENERATION_S = "distill/generation_s"
DISTILL_GENERATION_IMAGES = "distill/generation_images"

EPOCH_METRICS = (TRAIN_LOSS, TRAIN_LR, TRAIN_EPOCH_S, TRAIN_IMAGES_PER_S, TRAIN_OPTIMIZER_STEPS, TRAIN_SAMPLES_SEEN,
                 VAL_TOP1, VAL_TOP5, VAL_LOSS, VAL_EVAL_S)
FINAL_METRICS = (VAL_TOP1_FINAL, VAL_TOP5_FINAL, VAL_TOP1_BEST, VAL_TOP5_BEST, VAL_BEST_EPOCH, TIME_TRAIN_S,
                 TIME_WALL_S, THROUGHPUT_IMAGES_PER_S, STORAGE_IMAGE_BYTES, STORAGE_SOFT_LABEL_BYTES, DATA_NUM_IMAGES)
GENERATION_METRICS = (DISTILL_GENERATION_S, DISTILL_GENERATION_IMAGES)
ALL_METRICS = EPOCH_METRICS + FINAL_METRICS + GENERATION_METRICS
