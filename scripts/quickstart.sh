#!/usr/bin/env bash
# The main job on the embedded default (local Ray, SQLite MLflow under outputs/, Fashion-MNIST):
# install everything, run the quick-start sweep (it trains the teacher / training dynamics first),
# then print and save the paper-style report. Re-running it resumes and skips finished cells.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
python3 -m orchestrator sweep --config configs/sweeps/quickstart.yaml --output-dir outputs "$@"
python3 -m orchestrator report --experiment quickstart --output-dir outputs --summary
