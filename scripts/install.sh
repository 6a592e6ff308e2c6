#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine: the Fashion-MNIST Debian package
# and the Python package with its pinned dependencies (torch 2.14.1 / torchvision 0.29.1 from this
# machine's disk, ray[default,train,tune], mlflow 3.17.2, timm, datasets, ...). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
# FASHION_MNIST_DIR: where the Debian package puts the files (tests point it elsewhere to exercise
# the branch a fresh machine takes).
DATASET_DIR=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
if [ ! -f "$DATASET_DIR/train-images-idx3-ubyte.gz" ]; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
fi
# Headless Chromium, only for the tests (they open the MLflow UI and the HTML report in a real browser).
if [ "${WITH_BROWSER:-0}" = 1 ] && ! command -v chromium >/dev/null; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
PYTHON=${PYTHON:-python3}
# ruff (a dev extra) is a command-line tool, so it is checked by running it rather than importing it.
if ! $PYTHON -c "import orchestrator, ray, mlflow, rich, tabulate, timm, torchvision, hypothesis, pytest_timeout" 2>/dev/null \
   || ! $PYTHON -m ruff --version >/dev/null 2>&1 \
   || [ pyproject.toml -nt .install-stamp ]; then
  $PYTHON -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[dev]'
  touch .install-stamp
fi
