#!/usr/bin/env bash
# docs/protocol.md §Precision, memory format and compilation: what `auto` buys here, one after the other.
#   1. bench's step variants (compiled ones included) and the 10,000-image evaluation per precision;
#   2. one 300-epoch IPC 10 hard cell (configs/fmnist-hard.yaml, 2 threads) in fp32, then with every speed
#      switch on auto twice: the first with a cold calibration and compile cache, the second (another
#      seed, same shapes) warm.
# Run it on an otherwise idle machine: `bash scripts/speed_auto.sh [OUT]` (default /tmp/speed-auto).
set -euo pipefail
OUT=${1:-/tmp/speed-auto}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
CELL=(python3 -m orchestrator run --config configs/fmnist-hard.yaml --method random --ipc 10 --output-dir "$OUT")
AUTO=(--set train.precision=auto --set eval.precision=auto --set train.channels_last=auto --set train.compile=auto)

lscpu | grep -E "^Model name" | tee "$OUT/cpu.txt"
lscpu | grep -o -E "avx512_bf16|amx_bf16|amx_tile|avx512f " | sort -u | tr '\n' ' ' | tee -a "$OUT/cpu.txt"
echo

timed() {  # NAME COMMAND...: run, and append "NAME seconds" to $OUT/wall.txt
  local name=$1; shift
  local start=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  echo "$name $((SECONDS - start))" | tee -a "$OUT/wall.txt"
}

: > "$OUT/wall.txt"
timed warmup "${CELL[@]}" --seed 9 --epochs 1                 # prepares the data cache; not a figure
timed fp32-s0 "${CELL[@]}" --seed 0
timed auto-cold-s0 "${CELL[@]}" --seed 0 "${AUTO[@]}"
timed auto-warm-s1 "${CELL[@]}" --seed 1 "${AUTO[@]}"
timed fp32-s1 "${CELL[@]}" --seed 1
timed bench python3 -m orchestrator bench --only train_step eval --output-dir "$OUT" --json "$OUT/bench.json"
grep -h "top-1 final" "$OUT"/*-s?.log
