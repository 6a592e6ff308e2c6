"""PCA's Combine step (docs/protocol.md §PCA): tile whole, downsampled images into one stored image.

Owns the tile geometry and the grouping of same-class images into tiles. A ``grid`` x ``grid``
tiling puts grid**2 pruned images, each resized WHOLE (no cropping, aspect ratio not kept) to its
tile, into the storage of one ``size`` x ``size`` image, row-major.

Geometry: tile boundaries are at ``i * size // grid`` for i = 0..grid, so the tiles cover the
whole image. When ``grid`` divides ``size`` (224 with grid 2 or 4) every tile is
``size // grid`` square; otherwise tiles differ by at most one pixel. ``tile_boxes`` gives the
exact boxes, which the Augment step uses to keep each crop inside a single tile.
"""

from __future__ import annotations

from PIL import Image

Box = tuple[int, int, int, int]  # top, left, height, width


def _edges(grid: int, size: int) -> list[int]:
    if grid < 1 or size < grid:
        raise ValueError(f"need grid >= 1 and size >= grid, got grid={grid}, size={size}")
    return [i * size // grid for i in range(grid + 1)]


def tile_boxes(grid: int, size: int) -> list[Box]:
    """(top, left, height, width) of each tile of a ``size`` x ``size`` image, row-major."""
    edges = _edges(grid, size)
    return [
        (edges[r], edges[c], edges[r + 1] - edges[r], edges[c + 1] - edges[c])
        for r in range(grid)
        for c in range(grid)
    ]


def tile_images(images: list[Image.Image], *, grid: int, size: int) -> Image.Image:
    """One ``size`` x ``size`` image holding ``grid * grid`` whole images, resized, row-major.

    All images must share one mode; the result has that mode.
    """
    if len(images) != grid * grid:
        raise ValueError(f"a {grid}x{grid} tile needs {grid * grid} images, got {len(images)}")
    modes = {image.mode for image in images}
    if len(modes) != 1:
        raise ValueError(f"images must share one mode, got {sorted(modes)}: convert them first")
    canvas = Image.new(images[0].mode, (size, size))
    for image, (top, left, height, width) in zip(images, tile_boxes(grid, size)):
        canvas.paste(image.resize((width, height), Image.Resampling.BICUBIC), (left, top))
    return canvas


def combine_per_class(indices_by_class: dict[int, list[int]], grid: int) -> list[tuple[int, list[int]]]:
    """Group each class's images into tiles of ``grid * grid`` members of that class only.

    Returns ``(class_id, member indices)`` per tile, classes ascending, members in the given
    order. A short last group is padded by repeating its own members cyclically
    (e.g. [a, b] -> [a, b, a, b] for grid 2), so every tile is full and holds one class only.
    """
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    per_tile = grid * grid
    tiles: list[tuple[int, list[int]]] = []
    for class_id in sorted(indices_by_class):
        members = list(indices_by_class[class_id])
        for start in range(0, len(members), per_tile):
            group = members[start : start + per_tile]
            tiles.append((class_id, _pad_cyclic(group, per_tile)))
    return tiles


def _pad_cyclic(group: list[int], length: int) -> list[int]:
    return [group[i % len(group)] for i in range(length)]
