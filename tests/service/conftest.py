"""Fixtures of the service tests: throwaway PostgreSQL databases, an isolated Redis key prefix, a
tiny CamVid copy, and real service stacks (uvicorn API + Celery worker + sweeper subprocesses).
Helpers live in svc_helpers.py."""
from __future__ import annotations

import json

import pytest

from svc_helpers import copy_camvid_tiny, create_pg_db, drop_pg_db, fake_search_body, register_tiny, running_stack


@pytest.fixture
def empty_pg():
    name, url = create_pg_db()
    yield url
    drop_pg_db(name)


@pytest.fixture(scope="session")
def datasets_root(tmp_path_factory):
    """<root>/camvid_tiny: 8 frames per split copied from the shared read-only CamVid."""
    return copy_camvid_tiny(tmp_path_factory.mktemp("datasets"))


@pytest.fixture(scope="session")
def shared_lut_dir(tmp_path_factory):
    """One LUT directory for every real stack of the session: tables are reused across jobs."""
    return tmp_path_factory.mktemp("luts")


@pytest.fixture(scope="session")
def fake_stack(tmp_path_factory, datasets_root):
    """PostgreSQL + Redis stack whose search kind is the fast test-only fake (fake_core.py)."""
    overrides = json.dumps({"search": "tests.service.fake_core:fake_search",
                       "feasibility": "tests.service.fake_core:fake_feasibility"})
    yield from running_stack("fake", tmp_path_factory, datasets_root, None, job_kind_overrides=overrides)


@pytest.fixture(scope="session")
def real_stack(tmp_path_factory, datasets_root, shared_lut_dir):
    """PostgreSQL + Redis stack running the real core."""
    yield from running_stack("real", tmp_path_factory, datasets_root, shared_lut_dir)


@pytest.fixture(scope="module")
def api(fake_stack):
    """The HTTP client of the module's fake-core stack (shared by the API and hardening tests)."""
    return fake_stack.http


@pytest.fixture(scope="module")
def dataset_id(api):
    """The tiny CamVid copy registered once per module."""
    return register_tiny(api)


@pytest.fixture(scope="module")
def owner(fake_stack):
    """Tenant A (the stack's default tenant): a ready dataset and a finished search with its artifacts."""
    http = fake_stack.http
    ds = register_tiny(http)
    r = http.post("/api/v1/jobs/search", json=fake_search_body(ds, epochs=1, steps=1))
    assert r.status_code == 202, r.text
    job = fake_stack.wait_status(r.json()["id"], "succeeded", 90)
    arts = http.get(f"/api/v1/jobs/{job['id']}/artifacts").json()["items"]
    assert {"genotype.json", "report.json"} <= {a["name"] for a in arts}
    return {"dataset_id": ds, "job_id": job["id"], "name": "genotype.json"}
