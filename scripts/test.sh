#!/usr/bin/env bash
# The test command: install what the tests need, then run the whole suite (real Ray, real MLflow,
# real Fashion-MNIST images). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_BROWSER=1 bash scripts/install.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
exec python3 -m pytest -q --timeout=900 "$@" tests
