"""Fixtures of the service tests: throwaway PostgreSQL databases, an isolated Redis key prefix, a
tiny CamVid copy, and real service stacks (uvicorn API + Celery worker + sweeper subprocesses).
Helpers live in svc_helpers.py."""
from __future__ import annotations

import json
import shutil

import pytest

from svc_helpers import CAMVID, create_pg_db, drop_pg_db, make_stack, redis_cleanup


@pytest.fixture
def empty_pg():
    name, url = create_pg_db()
    yield url
    drop_pg_db(name)


@pytest.fixture(scope="session")
def datasets_root(tmp_path_factory):
    """<root>/camvid_tiny: 8 frames per split copied from the shared read-only CamVid."""
    if not (CAMVID / "train.txt").is_file():
        pytest.fail(f"CamVid not found at {CAMVID} (set GAS_SHARED or GAS_TEST_CAMVID)")
    root = tmp_path_factory.mktemp("datasets")
    dst = root / "camvid_tiny"
    for split in ("train", "val", "test"):
        (dst / split).mkdir(parents=True)
        (dst / f"{split}annot").mkdir()
        for stem in (CAMVID / f"{split}.txt").read_text().split()[:8]:
            shutil.copy(CAMVID / split / f"{stem}.jpg", dst / split)
            shutil.copy(CAMVID / f"{split}annot" / f"{stem}.png", dst / f"{split}annot")
    return root


@pytest.fixture(scope="session")
def shared_lut_dir(tmp_path_factory):
    """One LUT directory for every real stack of the session: tables are reused across jobs."""
    return tmp_path_factory.mktemp("luts")


@pytest.fixture(scope="session")
def fake_stack(tmp_path_factory, datasets_root):
    """PostgreSQL + Redis stack whose search kind is the fast test-only fake (fake_core.py)."""
    overrides = json.dumps({"search": "tests.service.fake_core:fake_search"})
    stack, db_name, prefix = make_stack("fake", tmp_path_factory, datasets_root, None, job_kind_overrides=overrides)
    stack.start_worker()
    stack.start_sweeper()
    yield stack
    stack.stop()
    drop_pg_db(db_name)
    redis_cleanup(prefix)


@pytest.fixture(scope="session")
def real_stack(tmp_path_factory, datasets_root, shared_lut_dir):
    """PostgreSQL + Redis stack running the real core."""
    stack, db_name, prefix = make_stack("real", tmp_path_factory, datasets_root, shared_lut_dir)
    stack.start_worker()
    stack.start_sweeper()
    yield stack
    stack.stop()
    drop_pg_db(db_name)
    redis_cleanup(prefix)
