"""Image bytes in and out: decoding an HF image cell, encoding an image as PNG bytes.

A cell is what the benchmark schema's `image` column holds: a ``{"bytes", "path"}`` dict (bytes
first; the path only where the bytes were not embedded) or the raw encoded bytes.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from orchestrator.errors import DataError

NO_DATA = "an image cell has no data (neither bytes nor a path): reload the set with its images embedded"


def cell_source(cell) -> io.BytesIO | Path | None:
    """What PIL opens for a cell: its bytes, else its file; None when it holds neither."""
    if isinstance(cell, (bytes, bytearray)):
        return io.BytesIO(cell)
    if cell is None:
        return None
    if cell.get("bytes") is not None:
        return io.BytesIO(cell["bytes"])
    return Path(cell["path"]) if cell.get("path") else None


def decode_cell(cell, mode: str | None = None, *, no_data: str = NO_DATA) -> Image.Image:
    """One cell decoded, converted to `mode` (kept as stored when None); DataError(`no_data`) when empty."""
    source = cell_source(cell)
    if source is None:
        raise DataError(no_data)
    with Image.open(source) as image:
        return image.convert(mode) if mode else image.copy()


def png_bytes(image: Image.Image, **options) -> bytes:
    """The PNG encoding of `image`; `options` go to PIL's PNG writer (e.g. compress_level)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()
