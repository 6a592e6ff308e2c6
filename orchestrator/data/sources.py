"""Loading a dataset split from any supported source into the benchmark schema.

Owns: turning a spec (registered name, image folder, `save_to_disk` folder, parquet file or
folder, HF hub key) into a `Source` whose dataset has columns `image` (datasets.Image),
`class_id` (int64) and `sample_id` (string); checking that images decode; and checking that a
training and a validation source share the same classes.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.table import InMemoryTable
from PIL import Image

from orchestrator.config import Config, DataConfig
from orchestrator.data.images import cell_source
from orchestrator.data.prepare import DATASET_INFO_FILE, REGISTERED, resolve_registered
from orchestrator.data.select import BENCHMARK_FEATURES, arrow_column, class_id_array
from orchestrator.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
SPLIT_FOLDER_NAMES = frozenset({"train", "val", "valid", "validation", "test"})
IMAGE_COLUMN_NAMES = ("image", "img")
LABEL_COLUMN_NAMES = ("class_id", "label", "labels")
HUB_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHOWN = 5  # how many offending paths or ids an error message lists
# The keys that choose a split: a source is read with one of them, and its error names both.
SPLIT_FIX = "set data.val_split (for data.val) or data.train_split (for data.train) to one of those"


@dataclass(frozen=True)
class Source:
    """One loaded split: the dataset in the benchmark schema, its class names and where it came from."""

    dataset: datasets.Dataset
    classes: list[str] | None
    spec: str
    split: str

    @property
    def prepared_here(self) -> bool:
        """A registered dataset (Fashion-MNIST): its PNGs were encoded by `prepare` from the raw files."""
        return self.spec in REGISTERED

    @property
    def num_classes(self) -> int:
        if self.classes:
            return len(self.classes)
        ids = class_id_array(self.dataset)
        return int(ids.max()) + 1 if ids.size else 0


def _shown(items: list, limit: int = _SHOWN) -> str:
    text = ", ".join(str(i) for i in items[:limit])
    return text + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def dataset_from_table(table: pa.Table) -> datasets.Dataset:
    """An in-memory (or memory-mapped) HF dataset in the benchmark schema from an arrow table."""
    table = table.cast(BENCHMARK_FEATURES.arrow_schema)
    return datasets.Dataset(InMemoryTable(table))


# ---------------------------------------------------------------- schema normalisation


def _image_column(ds: datasets.Dataset, origin: str) -> str:
    for name in IMAGE_COLUMN_NAMES:
        if name in ds.column_names:
            return name
    image_like = [n for n, f in ds.features.items() if isinstance(f, datasets.Image)]
    if len(image_like) == 1:
        return image_like[0]
    raise DataError(
        f"{origin} has no image column (columns: {ds.column_names}): "
        f"name the image column 'image' (an HF datasets.Image feature)"
    )


def _check_image_feature(ds: datasets.Dataset, column: str, origin: str) -> None:
    feature = ds.features[column]
    is_struct = isinstance(feature, dict) and set(feature) == {"bytes", "path"}
    if not (isinstance(feature, datasets.Image) or is_struct):
        raise DataError(
            f"{origin}: column '{column}' holds {feature}, not encoded images: "
            f"store images as an HF datasets.Image column (PNG/JPEG bytes)"
        )


def _label_column(ds: datasets.Dataset, origin: str) -> str:
    for name in LABEL_COLUMN_NAMES:
        if name in ds.column_names:
            return name
    raise DataError(
        f"{origin} has no label column (columns: {ds.column_names}): "
        f"add an integer class column named 'class_id' or 'label'"
    )


def _label_names(ds: datasets.Dataset, column: str, origin: str) -> list[str] | None:
    feature = ds.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    if isinstance(feature, datasets.Value) and pa.types.is_integer(feature.pa_type):
        return None
    raise DataError(
        f"{origin}: label column '{column}' has type {feature}, not integer class ids: "
        f"convert labels to integers 0..C-1 (e.g. with datasets.ClassLabel)"
    )


def _check_labelled(ds: datasets.Dataset, origin: str) -> None:
    ids = class_id_array(ds)
    negative = int((ids < 0).sum())
    if negative:
        raise DataError(
            f"{origin} has {negative} rows with a negative class id (unlabelled, e.g. -1): "
            f"use a labelled split (for ImageNet, the validation split rather than test)"
        )


def _sample_ids(table: pa.Table, split: str) -> pa.Array | pa.ChunkedArray:
    if "sample_id" in table.column_names:
        return table.column("sample_id").cast(pa.string())
    return pa.array([f"{split}/{i}" for i in range(table.num_rows)], type=pa.string())


def normalise_schema(ds: datasets.Dataset, split: str, origin: str) -> tuple[datasets.Dataset, list[str] | None]:
    """Columns (image, class_id, sample_id) in the benchmark schema, plus any class names.

    Works on arrow columns (zero-copy for memory-mapped data): nothing is decoded or rewritten.
    """
    image_col = _image_column(ds, origin)
    label_col = _label_column(ds, origin)
    names = _label_names(ds, label_col, origin)
    _check_image_feature(ds, image_col, origin)
    table = ds.with_format("arrow")[:]
    normalised = pa.table(
        {
            "image": table.column(image_col),
            "class_id": table.column(label_col).cast(pa.int64()),
            "sample_id": _sample_ids(table, split),
        }
    )
    ds = dataset_from_table(normalised)
    _check_labelled(ds, origin)
    return ds, names


# ---------------------------------------------------------------- parquet and save_to_disk


def _read_parquet_files(files: list[Path], origin: str) -> datasets.Dataset:
    tables = []
    for file in files:
        try:
            tables.append(pq.read_table(file, memory_map=True))
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{file} is not a readable parquet file ({exc}): re-create or re-download it") from exc
    try:
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    except pa.ArrowInvalid as exc:
        raise DataError(
            f"the parquet files of {origin} have different schemas ({exc}): "
            f"keep only the files of one split in the folder"
        ) from exc
    return datasets.Dataset(InMemoryTable(table))


def _info_classes(folder: Path) -> list[str] | None:
    """Class names from a dataset_info.json written by prepare.py, if any."""
    try:
        info = json.loads((folder / DATASET_INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    classes = info.get("classes") if isinstance(info, dict) else None
    return [str(c) for c in classes] if isinstance(classes, list) else None


def _split_parquet_files(folder: Path, split: str) -> list[Path]:
    patterns = [
        [folder / f"{split}.parquet"],
        sorted(folder.glob(f"{split}-*.parquet")),
        sorted((folder / "data").glob(f"{split}-*.parquet")),
        sorted((folder / split).glob("*.parquet")),
    ]
    for files in patterns:
        existing = [f for f in files if f.is_file()]
        if existing:
            return existing
    return []


def _available_parquet_splits(folder: Path) -> list[str]:
    files = list(folder.glob("*.parquet")) + list((folder / "data").glob("*.parquet"))
    stems = [f.name[: -len(".parquet")] for f in files]
    nested = [d.name for d in folder.iterdir() if d.is_dir() and d.name != "data" and any(d.glob("*.parquet"))]
    return sorted({s.split("-")[0] for s in stems} | set(nested))


def _has_parquet(folder: Path) -> bool:
    return any(folder.glob("*.parquet")) or any((folder / "data").glob("*.parquet"))


def _load_parquet_dir(folder: Path, split: str) -> tuple[datasets.Dataset, list[str] | None]:
    files = _split_parquet_files(folder, split)
    if not files:
        raise DataError(
            f"no parquet files for split '{split}' in {folder} (available splits: "
            f"{_available_parquet_splits(folder)}): {SPLIT_FIX}, or name the files "
            f"'{split}.parquet' or 'data/{split}-*.parquet'"
        )
    origin = f"{folder} (split '{split}')"
    ds, names = normalise_schema(_read_parquet_files(files, origin), split, origin)
    return ds, names or _info_classes(folder)


def _load_parquet_file(file: Path, split: str) -> tuple[datasets.Dataset, list[str] | None]:
    ds, names = normalise_schema(_read_parquet_files([file], str(file)), split, str(file))
    return ds, names or _info_classes(file.parent)


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _load_saved(folder: Path, split: str) -> tuple[datasets.Dataset, list[str] | None]:
    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as exc:  # load_from_disk raises many kinds; all mean the same to the user
        raise DataError(
            f"{folder} looks like a datasets.save_to_disk folder but cannot be loaded ({exc}): "
            f"save it again with Dataset.save_to_disk / DatasetDict.save_to_disk"
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(
                f"{folder} has no split '{split}' (available splits: {sorted(loaded)}): {SPLIT_FIX}"
            )
        loaded = loaded[split]
    origin = f"{folder} (split '{split}')"
    return normalise_schema(loaded, split, origin)


# ---------------------------------------------------------------- image folders


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _class_folders(root: Path) -> list[Path]:
    root_images = sorted(p.name for p in root.iterdir() if _is_image_file(p))
    if root_images:
        raise DataError(
            f"{root} holds {len(root_images)} image files directly ({_shown(root_images, 3)}): "
            f"an image folder needs one sub-folder per class, e.g. {root}/n01440764/xxx.JPEG "
            f"(ImageNet val layout); move each image into its class folder"
        )
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(
            f"{root} has no class sub-folders: an image folder needs one sub-folder per class, "
            f"e.g. {root}/n01440764/xxx.JPEG; point the source at such a folder"
        )
    return folders


def _folder_class_names(root: Path, folder_names: list[str], classes: list[str] | None) -> list[str]:
    if classes is None:
        return folder_names
    duplicates = sorted(name for name, count in Counter(classes).items() if count > 1)
    if duplicates:
        raise DataError(f"data.classes lists {duplicates} more than once: list each class folder once")
    unlisted = [f for f in folder_names if f not in classes]
    missing = [c for c in classes if c not in folder_names]
    if unlisted or missing:
        raise DataError(
            f"the class folders of {root} do not match data.classes: folders not in the list: "
            f"[{_shown(unlisted)}]; listed classes with no folder: [{_shown(missing)}]. "
            f"Fix: make data.classes the folder names in class-id order, or add/remove folders"
        )
    return list(classes)


def _class_image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_image_file(p))


def _verify_image(data: bytes) -> str | None:
    """None when PIL can open and verify the bytes, else the reason."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception as exc:  # PIL raises many types for bad files
        return f"{type(exc).__name__}: {exc}"
    return None


def _read_class_chunk(root: Path, files: list[Path], class_id: int, bad: list[str]) -> pa.Table:
    """Bytes of one class's images as an arrow table; unreadable files are appended to `bad`."""
    blobs, sample_ids = [], []
    for file in files:
        rel = file.relative_to(root).as_posix()
        try:
            data = file.read_bytes()
        except OSError as exc:
            bad.append(f"{rel} ({exc})")
            continue
        reason = _verify_image(data)
        if reason is not None:
            bad.append(f"{rel} ({reason})")
            continue
        blobs.append({"bytes": data, "path": None})
        sample_ids.append(rel)
    return pa.table(
        {
            "image": pa.array(blobs, type=BENCHMARK_FEATURES.arrow_schema.field("image").type),
            "class_id": pa.array([class_id] * len(blobs), type=pa.int64()),
            "sample_id": pa.array(sample_ids, type=pa.string()),
        }
    )


def _load_image_folder(root: Path, classes: list[str] | None) -> tuple[datasets.Dataset, list[str]]:
    folders = {f.name: f for f in _class_folders(root)}
    names = _folder_class_names(root, sorted(folders), classes)
    files = {name: _class_image_files(folders[name]) for name in names}
    empty = [name for name in names if not files[name]]
    if empty:
        raise DataError(
            f"{len(empty)} class folders of {root} hold no images ({_shown(empty)}; image "
            f"extensions: {sorted(IMAGE_EXTENSIONS)}): add images or remove those folders"
        )
    bad: list[str] = []
    chunks = [_read_class_chunk(root, files[name], cid, bad) for cid, name in enumerate(names)]
    if bad:
        total = sum(len(f) for f in files.values())
        raise DataError(
            f"{len(bad)} of {total} images in {root} cannot be opened: {_shown(bad, 3)}. "
            f"Fix: delete or replace these files (or re-extract the archive)"
        )
    return dataset_from_table(pa.concat_tables(chunks)), names


def _split_subfolder(root: Path, split: str) -> Path:
    """`root/split` when root is a folder of split folders (train/, val/), else root itself."""
    subdirs = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not subdirs or not set(subdirs) <= SPLIT_FOLDER_NAMES:
        return root
    if split not in subdirs:
        raise DataError(f"{root} has no split folder '{split}' (available: {sorted(subdirs)}): {SPLIT_FIX}")
    return root / split


# ---------------------------------------------------------------- registered names and the hub


def _load_registered(name: str, split: str, data_root: Path, image_size: int,
                     mode: str) -> tuple[datasets.Dataset, list[str]]:
    entry = REGISTERED[name]
    if split not in entry.splits:
        raise DataError(
            f"registered dataset '{name}' has no split '{split}' (splits: {list(entry.splits)}): "
            f"{SPLIT_FIX} (its validation split is '{entry.splits[-1]}')"
        )
    folder = resolve_registered(name, Path(data_root), image_size, mode)
    origin = f"{name} (split '{split}')"
    ds, _ = normalise_schema(_read_parquet_files([folder / f"{split}.parquet"], origin), split, origin)
    return ds, list(entry.classes)


def _is_connection_problem(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return isinstance(exc, (ConnectionError, TimeoutError)) or any(
        word in text for word in ("offline", "connect", "unreachable", "timed out", "network")
    )


def _load_hub(key: str, split: str) -> tuple[datasets.Dataset, list[str] | None]:
    fix = (
        f"Fix: on a machine with network run `datasets.load_dataset('{key}').save_to_disk(DIR)` "
        f"and pass DIR instead"
    )
    try:
        ds = datasets.load_dataset(key, split=split)
    except Exception as exc:  # the hub client raises many kinds; all are reported the same way
        reason = f"{type(exc).__name__}: {exc}"
        where = "The hub is unreachable (offline?)" if _is_connection_problem(exc) else (
            f"Check the key and the split on huggingface.co (there is no local folder '{key}' either)"
        )
        raise DataError(f"cannot load hub dataset '{key}': {reason} (split '{split}'). {where}. {fix}") from exc
    if isinstance(ds, datasets.DatasetDict):  # defensive: split=... returns a Dataset
        ds = ds[split]
    return normalise_schema(ds, split, f"hub dataset '{key}' (split '{split}')")


# ---------------------------------------------------------------- entry points


def _load_local(path: Path, split: str, classes: list[str] | None) -> tuple[datasets.Dataset, list[str] | None]:
    if path.is_file():
        if path.suffix.lower() != ".parquet":
            raise DataError(
                f"{path} is a file but not parquet: pass a .parquet file, a datasets.save_to_disk "
                f"folder, a folder of parquet files, or an image folder with one sub-folder per class"
            )
        return _load_parquet_file(path, split)
    if _is_saved_dataset(path):
        return _load_saved(path, split)
    if _has_parquet(path):
        return _load_parquet_dir(path, split)
    return _load_image_folder(_split_subfolder(path, split), classes)


def _load_any(spec: str, split: str, data_root: Path, image_size: int, mode: str,
              classes: list[str] | None) -> tuple[datasets.Dataset, list[str] | None]:
    if spec in REGISTERED:
        return _load_registered(spec, split, data_root, image_size, mode)
    path = Path(spec).expanduser()
    if path.exists():
        return _load_local(path, split, classes)
    if HUB_KEY.match(spec):
        return _load_hub(spec, split)
    raise DataError(
        f"no such dataset folder or file: {path.resolve()} (and '{spec}' is neither a registered "
        f"name {sorted(REGISTERED)} nor an HF hub key 'owner/name'): fix the path"
    )


def class_differences(first: list[str], second: list[str], *, counts: str) -> list[str]:
    """Where two class lists differ: "i: 'a' vs 'b'" per position, then `counts` (a format of the two
    lengths) when their lengths differ."""
    diffs = [f"{i}: '{a}' vs '{b}'" for i, (a, b) in enumerate(zip(first, second)) if a != b]
    if len(first) != len(second):
        diffs.append(counts.format(len(first), len(second)))
    return diffs


def _reconcile_classes(own: list[str] | None, given: list[str] | None, spec: str) -> list[str] | None:
    if given is None or own is None:
        return own if given is None else list(given)
    if list(own) == list(given):
        return list(own)
    diffs = class_differences(own, given, counts="{} classes in the source vs {} in data.classes")
    raise DataError(
        f"the class names of {spec} differ from data.classes (source vs data.classes: "
        f"{_shown(diffs)}): remove data.classes to use the source's own names, or make them match"
    )


def _check_ids_in_range(ds: datasets.Dataset, names: list[str] | None, spec: str) -> None:
    ids = class_id_array(ds)
    if names is not None and ids.size and int(ids.max()) >= len(names):
        raise DataError(
            f"{spec} has class id {int(ids.max())} but only {len(names)} class names: "
            f"pass the full class list with data.classes"
        )


def load_source(
    spec: str,
    split: str = "train",
    *,
    data_root: Path,
    image_size: int = 28,
    mode: str = "L",
    classes: list[str] | None = None,
) -> Source:
    """Load one split of `spec` in the benchmark schema.

    spec: a registered name (prepared on demand under data_root with image_size/mode), an
    existing path (image folder, save_to_disk folder, parquet file or folder) or an HF hub key.
    classes: explicit class names in class-id order (folder names for image folders).
    """
    ds, own = _load_any(spec, split, Path(data_root), image_size, mode, classes)
    names = _reconcile_classes(own, classes, spec)
    _check_ids_in_range(ds, names, spec)
    return Source(dataset=ds, classes=names, spec=spec, split=split)


def _decode_problem(cell: dict | None) -> str | None:
    source = cell_source(cell)
    if source is None:
        return "no image data"
    try:
        with Image.open(source) as image:
            image.load()
    except Exception as exc:  # PIL raises many types for bad images
        return f"{type(exc).__name__}: {exc}"
    return None


def check_images(ds: datasets.Dataset, *, limit: int | None = None) -> None:
    """Decode every image (or the first `limit`) with PIL; corrupt ones raise DataError."""
    rows = len(ds) if limit is None else min(limit, len(ds))
    subset = ds.select(range(rows)) if rows < len(ds) else ds
    sample_ids = arrow_column(subset, "sample_id").to_pylist()
    bad, row = [], 0
    for chunk in arrow_column(subset, "image").chunks:
        for cell in chunk.to_pylist():
            problem = _decode_problem(cell)
            if problem is not None:
                bad.append(f"{sample_ids[row]} ({problem})")
            row += 1
    if bad:
        raise DataError(
            f"{len(bad)} of {rows} images cannot be decoded: {_shown(bad, 3)}. "
            f"Fix: re-create the dataset from intact files or drop these samples"
        )


def _describe_ids(ids: list[int], names: list[str] | None) -> str:
    labelled = [f"{i} ('{names[i]}')" if names and 0 <= i < len(names) else str(i) for i in ids]
    return f"[{_shown(labelled, 10)}]"


def normalisation_warning(config: Config) -> str | None:
    """A note when a set other than Fashion-MNIST is normalised with its mean/std (the built-in default)."""
    data, default = config.data, DataConfig()
    uses_default = (tuple(data.mean), tuple(data.std)) == (default.mean, default.std)
    if not uses_default or (data.train in REGISTERED and not data.source_template):
        return None
    return (f"warning: data.train {data.source_template or data.train} is normalised with Fashion-MNIST's "
            f"mean {list(data.mean)} and std {list(data.std)} (the defaults): set data.mean and data.std "
            f"to that set's per-channel values")


def check_class_sets(train: Source, val: Source) -> list[str] | None:
    """Require the same class ids (and names, where both have them) in train and val; return the names."""
    hint = (
        "Fix: pass an explicit class list with data.classes (class names in class-id order) "
        "or use a validation set with the same classes"
    )
    if train.classes and val.classes and list(train.classes) != list(val.classes):
        diffs = class_differences(train.classes, val.classes, counts="{} vs {} classes")
        only_train = [c for c in train.classes if c not in set(val.classes)]
        only_val = [c for c in val.classes if c not in set(train.classes)]
        if only_train:
            diffs.append(f"only in training: {_shown([repr(c) for c in only_train])}")
        if only_val:
            diffs.append(f"only in validation: {_shown([repr(c) for c in only_val])}")
        raise DataError(
            f"class names differ between training {train.spec} ({train.split}) and validation "
            f"{val.spec} ({val.split}) (train vs val: {_shown(diffs)}). {hint}"
        )
    names = train.classes or val.classes
    train_ids = set(np.unique(class_id_array(train.dataset)).tolist())
    val_ids = set(np.unique(class_id_array(val.dataset)).tolist())
    if train_ids != val_ids:
        no_val = sorted(train_ids - val_ids)
        no_train = sorted(val_ids - train_ids)
        raise DataError(
            f"training {train.spec} ({train.split}) and validation {val.spec} ({val.split}) have "
            f"different classes: {len(no_val)} training classes have no validation images "
            f"{_describe_ids(no_val, names)}; {len(no_train)} validation classes are not in "
            f"training {_describe_ids(no_train, names)}. {hint}"
        )
    return list(names) if names else None
