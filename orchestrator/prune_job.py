"""`orchestrator prune`: write one pruned (or PCA) subset of the full training set to a folder.

    python -m orchestrator prune --config configs/fmnist-hard.yaml --rule el2n --ipc 10 [--reverse] [--out DIR]

The folder holds ``data.parquet`` (benchmark schema: image, class_id, sample_id), ``manifest.json``
(source, rule, IPC, direction, parameters, chosen source ids and their scores, fingerprint) and
``dataset_info.json`` (class names), so ``data.train=DIR/data.parquet`` with method ``full`` (or
``first``) trains on it. Scores come from the verified training dynamics of the score runs
(``prune.score_runs`` runs of the teacher recipe; the manifest records their ``dynamics_key``);
no Ray is needed. Damaged or missing dynamics are a DataError with the fix before any scoring
(docs/protocol.md §Pruning scores, §Teachers and caches).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from orchestrator.config import Config, replace
from orchestrator.data.prepare import DATASET_INFO_FILE
from orchestrator.data.select import fingerprint, write_parquet
from orchestrator.errors import ConfigError, did_you_mean
from orchestrator.files import write_text
from orchestrator.methods import tile_grid
from pca.methods import PRUNE_METHODS, selection_for, subset_manifest

MANIFEST_FILE = "manifest.json"
DATA_FILE = "data.parquet"


def prune(config: Config, *, rule: str, ipc: int, reverse: bool = False, out_dir: Path | None = None) -> Path:
    """Select `ipc` images per class of the full training set by `rule`; write them; return the folder.

    The default folder is ``config.out / "subsets" / "<rule>-ipc<ipc>-<fingerprint>"``.
    """
    from orchestrator.method_spec import load_train_source, with_index

    if rule not in list(PRUNE_METHODS):
        raise ConfigError(f"unknown pruning rule '{rule}': {did_you_mean(rule, PRUNE_METHODS)}"
                          f"choose one of {list(PRUNE_METHODS)}")
    config = replace(config, {"data.method": rule, "data.ipc": ipc, "prune.reverse": bool(reverse),
                              "data.source_template": None})
    source = load_train_source(replace(config, {"data.method": "full", "data.ipc": None}))
    dataset = with_index(source.dataset)
    selection = selection_for(config, dataset)
    digest = fingerprint(selection.subset)
    folder = Path(out_dir) if out_dir is not None else config.out / "subsets" / f"{rule}-ipc{ipc}-{digest}"
    manifest = subset_manifest(config, selection.indices, selection.scores, dataset=dataset,
                               subset=selection.subset, tiles=selection.tiles, classes=source.classes)
    write_parquet(selection.subset, folder / DATA_FILE)
    _write_json(folder / DATASET_INFO_FILE, {
        "name": f"{rule}-ipc{ipc}", "classes": source.classes, "image_size": config.data.image_size,
        "mode": config.data.mode, "num_rows": {"train": len(selection.subset)}, "source": source.spec})
    _write_json(folder / MANIFEST_FILE, manifest)
    return folder


def _write_json(path: Path, payload: dict) -> None:
    write_text(path, json.dumps(payload, indent=2))


def cmd_prune(args: argparse.Namespace) -> int:
    from orchestrator.cli_args import config_from_args

    config = config_from_args(args)
    rule = args.rule or config.data.method
    if config.data.ipc is None:
        raise ConfigError("prune needs an IPC: pass --ipc N")
    reverse = bool(args.reverse or config.prune.reverse)
    out_dir = Path(args.out).expanduser() if args.out else None
    folder = prune(config, rule=rule, ipc=config.data.ipc, reverse=reverse, out_dir=out_dir)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    print(f"{rule} subset: {manifest['num_images']} images ({config.data.ipc} per class), "
          f"fingerprint {manifest['fingerprint']}, written to {folder}")
    if tile_grid(replace(config, {"data.method": rule})) > 1:
        print("benchmark it with --method pca (tile-constrained crops need the method; this folder is "
              "the same set, cached by fingerprint)")
    else:
        print(f"train on it with --set data.train={folder / DATA_FILE} --method full")
    return 0


def add_prune_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `prune` verb to the CLI's sub-parsers."""
    from orchestrator.cli_args import add_config_args

    parser = subparsers.add_parser("prune", help="write a pruned (or PCA) subset with its manifest")
    add_config_args(parser)
    parser.add_argument("--rule", help=f"pruning rule, one of {list(PRUNE_METHODS)} (default: data.method)")
    parser.add_argument("--reverse", action="store_true",
                        help="keep the easiest samples instead of the hardest (forgetting, el2n, aum)")
    parser.add_argument("--out", help="output folder (default <output_dir>/subsets/<rule>-ipc<N>-<fingerprint>)")
    parser.set_defaults(func=cmd_prune)
    return parser
