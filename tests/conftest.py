"""Shared test fixtures: small synthetic runs and studies. Tests keep torch to one thread (2-core CI)."""

from __future__ import annotations

import pytest

from causalgeom.testing import make_run, make_study
from tests._helpers import STUDY_STORAGE

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


@pytest.fixture(scope="module", params=list(STUDY_STORAGE))
def study(request, tmp_path_factory):
    """A `cg.testing.make_study` study (4 runs: ``ce-s0``, ``ce-s1``, ``ls-s2``, ``ls-s3``; 120 samples, 8
    features, 4 classes; treated features shrunk by 0.3), stored each way of `STUDY_STORAGE`.

    Request it by name (``def test_x(study)``); never import it. A test module that needs other runs defines its
    own fixture of another name.
    """
    return make_study(tmp_path_factory.mktemp(f"study-{request.param}") / "study", **STUDY_STORAGE[request.param])


def pytest_terminal_summary(terminalreporter):
    """Report how many malformed inputs the reliability corpus tried (issue 10)."""
    try:
        from tests.test_malformed import TRIED
    except ImportError:
        return
    if TRIED:
        terminalreporter.write_line(f"malformed inputs tried: {len(TRIED)} (each raised a causalgeom error)")
