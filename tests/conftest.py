"""Session-wide settings of the test suite: where the read-only shared data lies."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (CI lays a copy there); GAS_SHARED overrides.
SHARED = Path(os.environ.get("GAS_SHARED", REPO.parent / "shared"))
CAMVID_DIR = SHARED / "datasets" / "camvid"


@pytest.fixture(scope="session")
def camvid_dir() -> Path:
    if not CAMVID_DIR.is_dir():
        pytest.fail(f"CamVid not found at {CAMVID_DIR} (set GAS_SHARED)")
    return CAMVID_DIR
