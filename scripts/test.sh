#!/usr/bin/env bash
# Install chada with its test dependencies at the versions CI tests, then lint and run every test.
#   bash scripts/test.sh            requirements/ci.txt (the exact set CI tests), ruff, every test
#   bash scripts/test.sh --lowest   requirements/lowest.txt (every dependency at its lowest declared
#                                   version), the fast tests (-m "not slow")
# Run it in a fresh virtual environment (`python3 -m venv .venv && . .venv/bin/activate`).
set -euo pipefail
cd "$(dirname "$0")/.."
lock=requirements/ci.txt
lowest=0
if [[ "${1:-}" == "--lowest" ]]; then
    lock=requirements/lowest.txt
    lowest=1
fi
torch_version=$(sed -n 's/^torch==\([^ ;]*\).*/\1/p' "$lock")
# torch first, with plain pip: whichever build pip finds (CUDA or CPU) is fine for the tests, and a
# torch already installed (e.g. the CPU wheel, see README) is kept. Installing it before the rest keeps
# any other package from pulling in a different build.
python -m pip install -q "torch==$torch_version"
python -m pip install -q -c "$lock" -e ".[test]"
python -m pip check
# Two pytest-xdist workers, each test file on one worker (a module's fixtures are built once), in the
# order tests/conftest.py collects them (longest files first). One process leaves half of 2 cores
# idle while tests wait on subprocesses; timings in docs/testing.md.
parallel=(-n 2 --dist loadfile --no-loadscope-reorder)
if [[ $lowest == 1 ]]; then
    # old releases warn about their own dependencies' deprecations (hundreds of lines): not ours to fix
    python -m pytest -q "${parallel[@]}" -m "not slow" -W ignore::DeprecationWarning
else
    ruff check src tests benchmarks
    ruff format --check src tests benchmarks scripts
    python -m pytest -q "${parallel[@]}"
fi
