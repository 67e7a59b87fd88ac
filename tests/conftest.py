"""Shared test fixtures: small synthetic runs and studies. Tests keep torch to one thread (2-core CI)."""

from __future__ import annotations

import pytest

from causalgeom.testing import make_run  # noqa: F401 - tests import make_run from here (one copy: causalgeom.testing)

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture
def run_ds():
    return make_run()


@pytest.fixture
def make_run_fn():
    return make_run


def pytest_terminal_summary(terminalreporter):
    """Report how many malformed inputs the reliability corpus tried (issue 10)."""
    try:
        from tests.test_malformed import TRIED
    except ImportError:
        return
    if TRIED:
        terminalreporter.write_line(f"malformed inputs tried: {len(TRIED)} (each raised a causalgeom error)")
