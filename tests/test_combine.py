"""Tests for pca.combine: tiling whole images, tile geometry, same-class grouping."""

from __future__ import annotations

import pytest
from PIL import Image

from pca.combine import combine_per_class, tile_boxes, tile_images

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def test_two_by_two_puts_each_colour_in_its_quadrant() -> None:
    images = [Image.new("RGB", (50, 30), colour) for colour in (RED, GREEN, BLUE, WHITE)]
    tiled = tile_images(images, grid=2, size=32)
    assert tiled.size == (32, 32) and tiled.mode == "RGB"
    # row-major: top-left, top-right, bottom-left, bottom-right; every pixel of a quadrant
    for colour, (top, left, height, width) in zip((RED, GREEN, BLUE, WHITE), tile_boxes(2, 32)):
        quadrant = tiled.crop((left, top, left + width, top + height))
        assert quadrant.getcolors() == [(width * height, colour)]


def test_whole_image_is_downsampled_not_cropped() -> None:
    # left half black, right half white: both halves must survive in the tile
    image = Image.new("L", (64, 64), 0)
    image.paste(255, (32, 0, 64, 64))
    tiled = tile_images([image] * 4, grid=2, size=32)
    assert tiled.mode == "L"
    assert tiled.getpixel((2, 8)) < 10 and tiled.getpixel((13, 8)) > 245


def test_tile_boxes_geometry() -> None:
    assert tile_boxes(2, 224) == [(0, 0, 112, 112), (0, 112, 112, 112), (112, 0, 112, 112), (112, 112, 112, 112)]
    assert tile_boxes(1, 224) == [(0, 0, 224, 224)]
    boxes = tile_boxes(3, 32)  # 32 is not a multiple of 3: edges 0, 10, 21, 32
    assert [b[:2] for b in boxes[:3]] == [(0, 0), (0, 10), (0, 21)]
    assert [b[3] for b in boxes[:3]] == [10, 11, 11]
    assert sum(h * w for _, _, h, w in boxes) == 32 * 32


def test_tile_images_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="needs 4 images"):
        tile_images([Image.new("RGB", (4, 4))] * 3, grid=2, size=8)
    with pytest.raises(ValueError, match="one mode"):
        tile_images([Image.new("RGB", (4, 4))] * 3 + [Image.new("L", (4, 4))], grid=2, size=8)


def test_combine_per_class_groups_same_class_and_pads_cyclically() -> None:
    tiles = combine_per_class({1: [10, 11, 12, 13, 14, 15], 0: [1, 2, 3, 4]}, grid=2)
    assert tiles == [
        (0, [1, 2, 3, 4]),
        (1, [10, 11, 12, 13]),
        (1, [14, 15, 14, 15]),
    ]
    assert combine_per_class({3: [7]}, grid=2) == [(3, [7, 7, 7, 7])]
    assert combine_per_class({0: [1, 2]}, grid=1) == [(0, [1]), (0, [2])]
    assert combine_per_class({0: []}, grid=2) == []
