#!/usr/bin/env bash
# Install chada with its test dependencies (CPU torch first, so nothing pulls a CUDA build) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
python -c "import torch, sys; sys.exit('a CUDA build of torch was installed' if torch.version.cuda else 0)"
ruff check src tests benchmarks
python -m pytest -q
