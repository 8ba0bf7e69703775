"""Shared fixtures: paths to the team's shared test material."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# CI clones the repository with ../shared beside it; so does every developer checkout.
SHARED = REPO.parent / "shared"
MLPERF = SHARED / "mlperf-tiny"


@pytest.fixture(scope="session")
def mlperf_dir() -> Path:
    if not MLPERF.is_dir():
        pytest.fail(f"shared test material not found at {MLPERF} (../shared beside the repository)")
    return MLPERF
