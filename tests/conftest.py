"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest


@pytest.fixture()
def one_blas_thread():
    """Small fits: multi-threaded BLAS on a loaded 2-core machine only adds spin-wait time."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield
