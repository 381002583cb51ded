"""Shared fixtures. Real data comes from ../shared/data (or $STREAMCAD_DATA); tests that need
it skip cleanly when it is absent, so the suite also runs on a fresh machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path | None:
    env = os.environ.get("STREAMCAD_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def data_root() -> Path:
    """../shared/data: BUSI/, BUS-BRA/, video/. Skips the test when absent."""
    root = _data_root()
    if root is None:
        pytest.skip("real data not found (../shared/data or $STREAMCAD_DATA)")
    return root


@pytest.fixture(scope="session")
def video_dir(data_root: Path) -> Path:
    d = data_root / "video"
    if not d.is_dir():
        pytest.skip("../shared/data/video absent")
    return d


@pytest.fixture(scope="session")
def busbra_dir(data_root: Path) -> Path:
    d = data_root / "BUS-BRA"
    if not d.is_dir():
        pytest.skip("../shared/data/BUS-BRA absent")
    return d


@pytest.fixture(scope="session")
def busi_dir(data_root: Path) -> Path:
    d = data_root / "BUSI"
    if not d.is_dir():
        pytest.skip("../shared/data/BUSI absent")
    return d


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
