#!/usr/bin/env bash
# Download the wheels scripts/gpu_check.sh installs on a bare GPU machine (Python 3.12,
# PyTorch preinstalled, no network) into .whl/ (ignored by git; carry it).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl gsplat==1.5.3 plyfile tyro docstring-parser shtab typeguard
ls -la .whl
