"""PCA's Prune and Combine steps (docs/protocol.md §PCA) as one method: `pca_subset(config, dataset)`.

1. Prune: IPC * grid^2 images per class, the EASIEST by ``prune.pca_rule`` (reversed rule; el2n by
   default), ranked easiest first. The rules without an easy end (``random``, ``ccs``) choose as
   they do as methods: the ablation of easy-first selection inside PCA.
2. Combine: each class's images, in that order, are grouped grid^2 at a time
   (``pca.combine.combine_per_class``) and each group is tiled, whole images downsampled and never
   cropped, into ONE image of the storage size ``data.image_size`` (``pca.combine.tile_images``).

The result holds exactly IPC stored images per class in the benchmark schema: PNG bytes,
``class_id``, ``sample_id`` "pca/<class>/<k>" and ``index`` = running position 0.. (the stored
images are new, so they get new keys). The Augment step (crops constrained to one tile) belongs to
the training pipeline (``prune.pca_views`` "whole" leaves it out: crops then span the combined image).
With ``prune.pca_grid`` 1, PCA is reversed-rule pruning (source rows kept).

Images are decoded one class at a time, so memory holds one class's pruned images, not the set's.
"""

from __future__ import annotations

import datasets
import numpy as np
from PIL import Image

from orchestrator.config import Config
from orchestrator.data.images import decode_cell, png_bytes
from orchestrator.data.select import INDEXED_FEATURES, arrow_column, class_id_array
from orchestrator.errors import ConfigError, DataError
from orchestrator.method_spec import require_ipc, with_index
from pca.combine import combine_per_class, tile_images
from pca.pruning import Selection, select_rows
from pca.select import easy_first

NO_PRUNED_IMAGE = "a pruned image has no data: reload the training set (its bytes must be embedded)"


def check_pca_config(config: Config) -> None:
    grid, size = config.prune.pca_grid, config.data.image_size
    if config.prune.reverse:
        raise ConfigError("pca always keeps the easiest samples of prune.pca_rule: leave prune.reverse false "
                          "(--reverse applies to forgetting, el2n and aum)")
    if size < grid:
        raise ConfigError(f"prune.pca_grid {grid} does not fit data.image_size {size}: lower the grid")


def pca_selection(config: Config, dataset: datasets.Dataset) -> Selection:
    """The PCA set plus the pruned source keys and each stored image's tile members (see module)."""
    check_pca_config(config)
    dataset = with_index(dataset)
    ipc, grid = require_ipc(config), config.prune.pca_grid
    per_class = ipc * grid * grid
    _check_class_sizes(dataset, per_class, ipc, grid)
    rule = config.prune.pca_rule
    positions, keys, frame = select_rows(config, dataset, rule=rule, ipc=per_class, reverse=easy_first(rule))
    if grid == 1:
        return Selection(dataset.select(positions.tolist()), keys[positions], frame, None)
    labels = class_id_array(dataset)
    by_class: dict[int, list[int]] = {}
    for position in positions.tolist():  # ordered by class, easiest first within a class
        by_class.setdefault(int(labels[position]), []).append(position)
    groups = combine_per_class(by_class, grid)
    images, class_ids, sample_ids, tiles = [], [], [], []
    current, decoded, k = None, {}, 0
    for class_id, members in groups:  # classes ascending; one class decoded at a time
        if class_id != current:
            current, k = class_id, 0
            decoded = _decode_rows(dataset, by_class[class_id], config.data.mode)
        tiled = tile_images([decoded[m] for m in members], grid=grid, size=config.data.image_size)
        images.append({"bytes": png_bytes(tiled), "path": None})
        class_ids.append(class_id)
        sample_ids.append(f"pca/{class_id}/{k}")
        tiles.append([int(keys[m]) for m in members])
        k += 1
    subset = datasets.Dataset.from_dict(
        {"image": images, "class_id": class_ids, "sample_id": sample_ids,
         "index": list(range(len(images)))},
        features=INDEXED_FEATURES)
    return Selection(subset, keys[positions], frame, tiles)


def pca_subset(config: Config, dataset: datasets.Dataset) -> datasets.Dataset:
    """Exactly IPC tiled images per class at the storage size (see the module docstring)."""
    return pca_selection(config, dataset).subset


def _check_class_sizes(dataset: datasets.Dataset, per_class: int, ipc: int, grid: int) -> None:
    classes, counts = np.unique(class_id_array(dataset), return_counts=True)
    if counts.size and counts.min() < per_class:
        small = int(classes[np.argmin(counts)])
        raise DataError(
            f"PCA at IPC {ipc} with a {grid}x{grid} grid needs {per_class} images per class, but class "
            f"{small} has {int(counts.min())}: lower --ipc or prune.pca_grid")


def _decode_rows(dataset: datasets.Dataset, positions: list[int], mode: str) -> dict[int, Image.Image]:
    """Decoded images (converted to `mode`) of the given row positions."""
    cells = arrow_column(dataset.select(positions), "image").to_pylist()
    return {position: decode_cell(cell, mode, no_data=NO_PRUNED_IMAGE) for position, cell in zip(positions, cells)}
