#!/usr/bin/env bash
# The test command: install what the tests need, lint, then run the whole suite (real Ray, real MLflow,
# real Fashion-MNIST images). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_BROWSER=1 bash scripts/install.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
# the linter first (configured in pyproject.toml): a lint finding fails the run
python3 -m ruff check orchestrator trainers pca tests scripts
exec python3 -m pytest -q --timeout=900 "$@" tests
