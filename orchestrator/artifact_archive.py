"""`archive export-artifacts` / `import-artifacts`: a store's teachers and sealed training dynamics as files
kept in git (`results/artifacts/`), and back into any store.

On a new machine a sweep otherwise trains its teachers and score runs again (~25 min on 2 CPUs) and,
the new CPU summing in another order, gets other weights under the same keys
(docs/protocol.md §Teachers and caches): the sets it then distils and prunes differ from those the
archived cells were trained on.
Copied back, the sweep finds them (a teacher file by its key, dynamics verified against their manifest)
and trains none. Only sealed dynamics travel (a `manifest.json`: every epoch written, each file's
sha256), their manifest copied last. Export copies a file where the archive lacks it or holds other
bytes; import only where the store lacks it (or holds unsealed dynamics, what a broken run leaves), so it
never changes a teacher or sealed dynamics the store's cells used.
"""

from __future__ import annotations

import filecmp
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from orchestrator.errors import OrchestratorError

DEFAULT_ARTIFACTS = Path("results/artifacts")
MANIFEST = "manifest.json"


def artifact_files(root: Path) -> Iterator[Path]:
    """The teacher files and the files of sealed dynamics folders under `root` (a store or an archive),
    relative to it; each dynamics folder's manifest after its epochs."""
    yield from (path.relative_to(root) for path in sorted(root.glob("teachers/*/*.pt")))
    for manifest in sorted(root.glob(f"dynamics/*/{MANIFEST}")):
        epochs = sorted(path for path in manifest.parent.rglob("*") if path.is_file() and path != manifest)
        yield from (path.relative_to(root) for path in [*epochs, manifest])


def export_artifacts(output_dir: Path, folder: Path, wanted: list[Path]) -> list[Path]:
    """Copy the store's teacher files and sealed dynamics folders named in `wanted` (absolute paths, as
    `teacher_job.prerequisite_paths` gives them) into `folder`; the relative paths copied."""
    wanted = {path.resolve() for path in wanted}
    chosen = [rel for rel in artifact_files(output_dir) if _is_or_is_under((output_dir / rel).resolve(), wanted)]
    return [rel for rel in chosen if _copy(output_dir / rel, folder / rel, replace=True)]


def _is_or_is_under(path: Path, places: set[Path]) -> bool:
    return path in places or any(parent in places for parent in path.parents)


def sweep_prerequisites(sweep_path: Path, output_dir: Path) -> list[Path]:
    """What the sweep's cells need trained before they run (their teachers and dynamics), in this store."""
    from orchestrator.sweep_config import load_sweep
    from orchestrator.teacher_job import prerequisite_paths

    cells = load_sweep(sweep_path, {"output_dir": str(output_dir)}).cells
    return sorted({path for config in cells for path in prerequisite_paths(config)})


def import_artifacts(folder: Path, output_dir: Path) -> list[Path]:
    """Copy the archived teachers and dynamics the store lacks into it; the relative paths copied."""
    sealed_here = {path.parent.name for path in output_dir.glob(f"dynamics/*/{MANIFEST}")}
    copied = []
    for rel in artifact_files(folder):
        dynamics = rel.parts[0] == "dynamics"
        if dynamics and rel.parts[1] in sealed_here:
            continue
        if _copy(folder / rel, output_dir / rel, replace=dynamics):  # an unsealed folder here: a broken run's
            copied.append(rel)
    return copied


def _copy(source: Path, target: Path, *, replace: bool) -> bool:
    if target.is_file() and (not replace or filecmp.cmp(source, target, shallow=False)):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)  # a reader never sees half a file
    return True


def cmd_artifacts(args) -> int:
    output_dir, folder = Path(args.output_dir).resolve(), Path(args.folder)
    if args.archive_verb == "import-artifacts":
        copied = import_artifacts(folder, output_dir)
        print(f"{len(copied)} teacher and dynamics files of {folder} copied into {output_dir}")
        return 0
    if not args.sweep:
        raise OrchestratorError("export-artifacts needs --sweep configs/sweeps/NAME.yaml: it copies the teachers "
                                "and dynamics that sweep's cells need")
    wanted = [path for sweep in args.sweep for path in sweep_prerequisites(Path(sweep), output_dir)]
    copied = export_artifacts(output_dir, folder, wanted)
    print(f"{len(copied)} teacher and dynamics files of {output_dir} copied to {folder}")
    return 0


def add_artifact_verbs(verbs) -> None:
    """`archive export-artifacts` and `archive import-artifacts`, added to the `archive` verb's sub-parsers."""
    for verb, text in (("export-artifacts", "copy the teachers and sealed dynamics a sweep needs from a store"),
                       ("import-artifacts", "copy archived teachers and dynamics a store lacks into it")):
        parser = verbs.add_parser(verb, help=text)
        parser.add_argument("folder", nargs="?", default=str(DEFAULT_ARTIFACTS),
                            help=f"the artifacts folder (default {DEFAULT_ARTIFACTS})")
        parser.add_argument("--output-dir", default="outputs", help="the store's folder (default ./outputs)")
        if verb == "export-artifacts":
            parser.add_argument("--sweep", action="append", metavar="SWEEP_YAML",
                                help="copy what this sweep's cells need (repeatable)")
        parser.set_defaults(func=cmd_artifacts)
