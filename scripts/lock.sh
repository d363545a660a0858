#!/usr/bin/env bash
# Regenerate the two constraint files from pyproject.toml (needs uv: `pip install uv`):
#   requirements/ci.txt      the newest versions the ranges allow: the exact set CI tests;
#   requirements/lowest.txt  every direct dependency at its lower bound (torch stays at CI's build):
#                            CI's second step runs the fast tests on it.
# Both are for `pip install -c FILE -e ".[test]"` after torch is installed (scripts/test.sh). The CUDA
# packages that PyPI's torch wheel pulls in on Linux are left out, so neither file installs a CUDA
# wheel beside the CPU torch.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=2.13.0
common=(pyproject.toml --extra test --python-version 3.11 --python-platform x86_64-manylinux_2_28
        --custom-compile-command "bash scripts/lock.sh" --quiet)

# Packages that only the CUDA build of torch needs (nvidia-*, cuda-*, triton).
gpu_only=()
while read -r name; do gpu_only+=(--no-emit-package "$name"); done < <(
    echo "torch==$TORCH" | uv pip compile - --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
        --quiet --no-header --no-annotate | sed -n 's/^\(nvidia-[^=]*\|cuda-[^=]*\|triton\)==.*/\1/p')

uv pip compile "${common[@]}" "${gpu_only[@]}" --constraint <(echo "torch==$TORCH") -o requirements/ci.txt
uv pip compile "${common[@]}" "${gpu_only[@]}" --constraint <(echo "torch==$TORCH") \
    --resolution lowest-direct -o requirements/lowest.txt
grep -q "^torch==$TORCH\$" requirements/ci.txt
grep -q "^torch==$TORCH\$" requirements/lowest.txt
if grep -Eq '^(nvidia-|cuda-|triton)' requirements/*.txt; then echo "a CUDA package is in a constraints file" >&2; exit 1; fi
