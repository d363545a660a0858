"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest


@pytest.fixture()
def one_blas_thread():
    """Small fits: multi-threaded BLAS on a loaded 2-core machine only adds spin-wait time."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


# The test files that take minutes on 2 cores (`pytest --durations`), longest first. They are
# collected first, so that under pytest-xdist (scripts/test.sh: `--dist loadfile
# --no-loadscope-reorder`, which hands out files in collection order) a worker starts on them at
# once; collected last, they would run alone at the end while the other worker idles.
LONG_FIRST = (
    "tests/ssl/test_rehearsal.py",
    "tests/pipeline/test_quickstart.py",
    "tests/crosscutting/test_gpu_check.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(LONG_FIRST)}
    # a stable sort: the other files keep their order
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
