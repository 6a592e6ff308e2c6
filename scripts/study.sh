#!/usr/bin/env bash
# Runs long sweeps in the background, at low priority, from a fixed commit, resuming across machines:
#
#   bash scripts/study.sh study-cross-arch study-random-ipc      # names under configs/sweeps/
#
# - code: a git worktree at this checkout's HEAD (WORKTREE, default ../study), so edits here never change
#   the code under a running sweep;
# - priority: nice 19, and the process group's autogroup at nice 19 too: with the kernel's autogroup
#   scheduling (sched_autogroup_enabled = 1) plain nice only ranks processes of one session, so a sweep
#   started in its own session would otherwise take half the CPU from the interactive one;
# - results: the store OUT (default ../results/out); before each sweep the cells archived in ARCHIVE
#   (default this checkout's results/runs) are imported, so finished cells are not trained again; every
#   10 minutes and after each sweep, its finished cells are exported back there (commit them);
# - teachers and score-run dynamics: imported from ARTIFACTS (default results/artifacts) before the sweeps,
#   so a new machine trains none again (and its sets come from the same teachers); exported there with
#   the cells (commit them too).
# Stop: kill this script's process group with SIGINT (never SIGSTOP a Ray worker).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
worktree=${WORKTREE:-$repo/../study}
out=${OUT:-$repo/../results/out}
archive=${ARCHIVE:-$repo/results/runs}
artifacts=${ARTIFACTS:-$repo/results/artifacts}
[ $# -gt 0 ] || { echo "usage: scripts/study.sh SWEEP_NAME... (configs/sweeps/<name>.yaml)" >&2; exit 2; }
if [ ! -d "$worktree" ]; then
  git -C "$repo" worktree add --detach "$worktree" HEAD >/dev/null || exit 1
fi
echo 19 > "/proc/$$/autogroup" 2>/dev/null || true
renice -n 19 -p $$ >/dev/null
mkdir -p "$out" "$archive"
cd "$worktree" || exit 1
echo "study: $(git rev-parse --short HEAD) in $worktree, store $out, archive $archive"
[ -z "$(ls -A "$archive")" ] || python -m orchestrator archive import "$archive" --output-dir "$out"
[ ! -d "$artifacts" ] || python -m orchestrator archive import-artifacts "$artifacts" --output-dir "$out"

experiment_of() {
  python - "$1" <<'EOF'
import sys
from pathlib import Path

from orchestrator.sweep_config import load_sweep

print(load_sweep(Path(f"configs/sweeps/{sys.argv[1]}.yaml")).experiment)
EOF
}

export_cells() {  # EXPERIMENT SWEEP_NAME
  python -m orchestrator archive export --experiment "$1" --output-dir "$out" --to "$archive" 2>/dev/null | tail -1
  python -m orchestrator archive export-artifacts "$artifacts" --output-dir "$out" --sweep "configs/sweeps/$2.yaml" \
    2>/dev/null | tail -1
}

run_sweeps() {
  for name in "$@"; do
    experiment=$(experiment_of "$name") || exit 1
    echo "$name: $(python -m orchestrator sweep --config "configs/sweeps/$name.yaml" --output-dir "$out" --status | tail -1)"
    (while sleep 600; do export_cells "$experiment" "$name"; done) &
    exporter=$!
    python -m orchestrator sweep --config "configs/sweeps/$name.yaml" --output-dir "$out" > "$out/../$name.log" 2>&1
    kill "$exporter" 2>/dev/null
    export_cells "$experiment" "$name"
  done
}

# one line: bash has read it whole before the sweeps start, so editing this file under a running study
# (bash reads a script as it goes) changes nothing of it
run_sweeps "$@"; exit $?
