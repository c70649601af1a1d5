"""Trust: API keys (401 everywhere but the probes), tenant isolation walked over the app's route
table (another tenant's objects answer 404 on every route; lists show none of them), keys stored
hashed and revocable, per-tenant quotas (429 + Retry-After, 409), artifact paths taken from the
database only. Real HTTP against the fake-core stack (PostgreSQL, Redis, Celery worker)."""
from __future__ import annotations

import re
import subprocess
import threading
import uuid

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import select, text

from storage.models import ApiKey, Artifact
from svc_helpers import (PY, REPO, db_session, fake_search_body, register_tiny, settings_of, wait_dataset,
                         wait_until)

pytestmark = pytest.mark.services
PROBLEM = "application/problem+json"
# Open without a key: liveness and readiness (probes; no tenant data, failures named by type only),
# and the API description (the public contract, no tenant data).
PUBLIC = {"/healthz", "/readyz", "/api/v1/healthz", "/api/v1/readyz", "/openapi.json", "/docs",
          "/docs/oauth2-redirect", "/redoc"}


def admin(stack, *args) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "api.admin", *args], env=stack.env, cwd=str(REPO), capture_output=True,
                          text=True, timeout=60)


@pytest.fixture(scope="module")
def app_routes(fake_stack) -> list[tuple[str, object]]:
    """(full path, route) of every route of the app, included routers flattened."""
    from api.app import create_app

    out = []
    for r in create_app(settings_of(fake_stack)).routes:
        if hasattr(r, "effective_route_contexts"):  # an included router (FastAPI >= 0.160)
            out += [(ctx.path, ctx.original_route) for ctx in r.effective_route_contexts()]
        else:
            out.append((getattr(r, "path", None), r))
    # the dashboard's pages (/ui) authenticate with a session cookie, not a key header: their walk of
    # the route table (no session -> sign-in page, another tenant -> 404 page) is test_svc_dashboard.py's
    return [(path, r) for path, r in out if not (path or "").startswith(UI_PREFIX)]


@pytest.fixture(scope="module")
def other(fake_stack):
    """Tenant B: a key of its own, no objects."""
    tenant = f"b-{uuid.uuid4().hex[:6]}"
    key = fake_stack.create_key(tenant)
    with fake_stack.client(key) as c:
        yield c


SHARED = ("/api/v1/latency-tables",)
"""Routes of objects shared by every tenant by design (latency tables are per worker device, api/latency.py):
any tenant reads them, only operator tenants delete them; test_svc_latency.py checks exactly that."""
UI_PREFIX = "/ui"


def _concrete(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: values[m.group(1)], path)


def _methods(route) -> list[str]:
    return sorted(m for m in (getattr(route, "methods", None) or ()) if m not in ("HEAD", "OPTIONS"))


def test_every_route_but_the_probes_needs_a_key(fake_stack, app_routes):
    checked = 0
    with httpx.Client(base_url=fake_stack.url, timeout=30) as anon:
        for path, route in app_routes:
            if path is None or path in PUBLIC:
                continue
            url = _concrete(path, {p: str(uuid.uuid4()) for p in re.findall(r"\{(\w+)", path)})
            for method in _methods(route):
                for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": "gas_0123456789ab_" + "x" * 43},
                                {"Authorization": "Basic dXNlcjpwYXNz"}):
                    r = anon.request(method, url, headers=headers)
                    assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
                    assert r.headers["content-type"].startswith(PROBLEM)
                    assert r.headers["www-authenticate"].startswith("Bearer")
                    checked += 1
        for path in ("/healthz", "/readyz"):
            assert anon.get(path).status_code == 200
    assert checked >= 4 * 12, checked
    print(f"401 without a valid key: {checked} requests over the route table")


def test_key_in_either_header_works(fake_stack):
    key = fake_stack.api_key
    with httpx.Client(base_url=fake_stack.url, timeout=30) as c:
        assert c.get("/api/v1/jobs", headers={"X-API-Key": key}).status_code == 200
        assert c.get("/api/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert c.get("/metrics", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_other_tenant_gets_404_on_every_route_with_a_path_parameter(fake_stack, app_routes, owner, other):
    checked = []
    for path, route in app_routes:
        if not isinstance(route, APIRoute) or "{" not in path or path.startswith(SHARED):
            continue
        params = re.findall(r"\{(\w+)", path)
        missing = [p for p in params if p not in owner]
        assert not missing, f"{path}: give the owner fixture an object for {missing} so isolation is tested"
        url = _concrete(path, owner)
        for method in _methods(route):
            assert route.body_field is None or method in ("GET", "DELETE"), \
                f"{method} {path} takes a body: extend this test with a valid body for it"
            r = other.request(method, url)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
            assert r.headers["content-type"].startswith(PROBLEM)
            checked.append(f"{method} {path}")
    assert len(checked) >= 6, checked
    # and the owner still sees everything (nothing was changed by B's requests)
    http = fake_stack.http
    assert http.get(f"/api/v1/jobs/{owner['job_id']}").status_code == 200
    assert http.get(f"/api/v1/datasets/{owner['dataset_id']}").status_code == 200
    assert http.get(f"/api/v1/jobs/{owner['job_id']}/artifacts/genotype.json").status_code == 200
    print(f"cross-tenant 404 on {len(checked)} operations: {checked}")


def test_other_tenant_lists_show_none_of_the_owners_items(fake_stack, app_routes, owner, other):
    mine = set()
    for path in ("/api/v1/jobs", "/api/v1/datasets"):
        mine |= {i["id"] for i in fake_stack.http.get(path, params={"limit": 200}).json()["items"]}
    assert owner["job_id"] in mine and owner["dataset_id"] in mine
    lists = 0
    for path, route in app_routes:
        if not isinstance(route, APIRoute) or "{" in path or "GET" not in route.methods:
            continue
        if not path.startswith("/api/v1/") or path.startswith(SHARED):
            continue
        r = other.get(path, params={"limit": 200})
        assert r.status_code == 200, (path, r.text)
        if not r.headers["content-type"].startswith("application/json"):
            continue  # /api/v1/metrics: service-wide aggregates, no ids
        body = r.json()
        if isinstance(body, dict) and "items" in body:
            lists += 1
            assert not ({i.get("id") for i in body["items"]} & mine), path
            assert body["items"] == [], path  # B owns nothing
    assert lists >= 2


def test_other_tenant_cannot_reference_the_owners_objects_in_bodies(fake_stack, owner, other):
    body = fake_search_body(owner["dataset_id"])
    r = other.post("/api/v1/jobs/search", json=body)
    assert r.status_code == 422 and "dataset_id" in {e["field"] for e in r.json()["errors"]}, r.text
    r = other.post("/api/v1/jobs/retrain", json={"dataset_id": owner["dataset_id"], "search_job_id": owner["job_id"]})
    assert r.status_code == 422, r.text
    r = other.post("/api/v1/jobs/benchmark", json={"job_id": owner["job_id"], "height": 64, "width": 96})
    assert r.status_code == 422 and "job_id" in {e["field"] for e in r.json()["errors"]}, r.text
    assert other.get("/api/v1/jobs").json()["items"] == []


def test_keys_are_stored_hashed_listed_by_prefix_and_revocable(fake_stack):
    tenant = f"k-{uuid.uuid4().hex[:6]}"
    key = fake_stack.create_key(tenant, name="laptop")
    prefix = key.split("_")[1]
    with db_session(fake_stack) as s:
        row = s.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
        assert row.tenant_id == tenant and row.hash != key and len(row.hash) == 64
        dump = s.execute(text("select * from api_keys")).fetchall()
        assert key not in repr(dump) and key.split("_", 2)[2] not in repr(dump)  # the secret is nowhere
    with fake_stack.client(key) as c:
        assert c.get("/api/v1/jobs").status_code == 200
        out = admin(fake_stack, "keys", "list", tenant)
        assert out.returncode == 0 and prefix in out.stdout and key not in out.stdout and '"last_used_at": "' in out.stdout
        out = admin(fake_stack, "keys", "revoke", prefix)
        assert out.returncode == 0, out.stderr
        ttl = float(fake_stack.env.get("GAS_AUTH_CACHE_TTL_S", "5"))
        wait_until(lambda: c.get("/api/v1/jobs").status_code == 401, ttl + 5, "revoked key refused")
    assert admin(fake_stack, "keys", "revoke", prefix).returncode == 2  # already revoked
    assert admin(fake_stack, "keys", "create", "no-such-tenant").returncode == 2


def _cancel_all(c: httpx.Client) -> None:
    for j in c.get("/api/v1/jobs", params={"limit": 200}).json()["items"]:
        if j["status"] in ("queued", "running", "cancelling"):
            c.post(f"/api/v1/jobs/{j['id']}/cancel")


def test_concurrent_jobs_quota_is_429_with_retry_after(fake_stack):
    tenant = f"q-{uuid.uuid4().hex[:6]}"
    out = admin(fake_stack, "tenants", "create", tenant, "--max-concurrent-jobs", "2")
    assert out.returncode == 0, out.stderr
    key = fake_stack.create_key(tenant)
    with fake_stack.client(key) as c:
        ds = register_tiny(c)
        long = fake_search_body(ds, epochs=50, steps=5, batch=2)
        try:
            ids = [c.post("/api/v1/jobs/search", json=long).json()["id"] for _ in range(2)]
            r = c.post("/api/v1/jobs/search", json=long)
            assert r.status_code == 429, r.text
            assert r.headers["content-type"].startswith(PROBLEM) and int(r.headers["retry-after"]) > 0
            body = r.json()
            assert body["quota"] == "concurrent_jobs" and body["limit"] == 2 and body["used"] == 2
            assert "concurrent jobs quota" in body["detail"]
            searches = [j for j in c.get("/api/v1/jobs").json()["items"] if j["kind"] == "search"]
            assert len(searches) == 2  # the refused request created nothing
            for jid in ids:
                c.post(f"/api/v1/jobs/{jid}/cancel")
            for jid in ids:
                wait_until(lambda: c.get(f"/api/v1/jobs/{jid}").json()["status"] == "cancelled", 30, "cancelled")
            # concurrent submissions are counted one after the other: exactly the quota is accepted
            codes, barrier = [], threading.Barrier(6)

            def post():
                with fake_stack.client(key) as cc:
                    barrier.wait()
                    codes.append(cc.post("/api/v1/jobs/search", json=long).status_code)
            threads = [threading.Thread(target=post) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(codes) == [202, 202, 429, 429, 429, 429], codes
        finally:
            _cancel_all(c)
    print(f"concurrent-jobs quota 2: 6 racing submissions -> {sorted(codes)}")


def test_storage_quota_is_409_and_counts_artifacts(fake_stack, owner):
    http = fake_stack.http
    with db_session(fake_stack) as s:
        used = sum(a.size for a in s.scalars(select(Artifact).where(Artifact.tenant_id == "default")))
    assert used > 0
    body = fake_search_body(owner["dataset_id"], epochs=1, steps=1)
    try:
        assert admin(fake_stack, "tenants", "set-quota", "default", "--max-storage-bytes", str(used)).returncode == 0
        r = http.post("/api/v1/jobs/search", json=body)
        assert r.status_code == 409 and r.headers["content-type"].startswith(PROBLEM), r.text
        p = r.json()
        assert p["quota"] == "storage_bytes" and p["used"] >= used and p["limit"] == used and "storage quota" in p["detail"]
        assert admin(fake_stack, "tenants", "set-quota", "default", "--max-storage-bytes", str(used + 10**6)).returncode == 0
        r = http.post("/api/v1/jobs/search", json=body)
        assert r.status_code == 202, r.text
        fake_stack.wait_status(r.json()["id"], "succeeded", 60)
    finally:
        assert admin(fake_stack, "tenants", "set-quota", "default", "--max-storage-bytes", "default").returncode == 0


def test_artifact_paths_come_from_the_database_only(fake_stack, owner):
    http, jid = fake_stack.http, owner["job_id"]
    store = settings_of(fake_stack).artifacts_path
    planted = store / "default" / jid / "planted.txt"  # a file in the job's store folder with no row
    planted.write_text("not an artifact")
    for name in ("planted.txt", "..%2F..%2F..%2Fetc%2Fpasswd", "%2E%2E", ".genotype.json", "genotype.json%00"):
        r = http.get(f"/api/v1/jobs/{jid}/artifacts/{name}")
        assert r.status_code == 404, (name, r.status_code)
    r = http.get(f"/api/v1/jobs/{jid}/artifacts/../../../../etc/passwd")
    assert r.status_code == 404 and "root:" not in r.text
    # the row's key decides which file is served: point genotype.json's row at report.json's file
    with db_session(fake_stack) as s:
        rows = {a.name: a for a in s.scalars(select(Artifact).where(Artifact.job_id == jid))}
        original = rows["genotype.json"].key
        rows["genotype.json"].key = rows["report.json"].key
        s.commit()
    try:
        served = http.get(f"/api/v1/jobs/{jid}/artifacts/genotype.json").content
        assert served == http.get(f"/api/v1/jobs/{jid}/artifacts/report.json").content
    finally:
        with db_session(fake_stack) as s:
            s.get(Artifact, rows["genotype.json"].id).key = original
            s.commit()
    assert b'"fake": true' in http.get(f"/api/v1/jobs/{jid}/artifacts/genotype.json").content


def test_openapi_declares_the_key_schemes_on_every_protected_operation(fake_stack):
    spec = httpx.get(f"{fake_stack.url}/openapi.json").json()  # the API description itself is public
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerKey"]["scheme"] == "bearer" and schemes["headerKey"]["name"] == "X-API-Key"
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if path in ("/healthz", "/readyz"):
                assert "security" not in op, path
            else:
                assert op["security"] == [{"bearerKey": []}, {"headerKey": []}], (method, path)
                assert "401" in op["responses"], (method, path)


def test_storage_quota_refuses_an_upload_past_it_and_leaves_nothing(fake_stack, datasets_root, tmp_path):
    import io
    import zipfile

    def zipped(limit: int) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            src = datasets_root / "camvid_tiny"
            for p in sorted(src.rglob("*")):
                if p.is_file():
                    zf.write(p, f"camvid_tiny/{p.relative_to(src)}")
            zf.writestr("camvid_tiny/README.txt", "x" * limit)  # makes the archives differ
        return buf.getvalue()
    tenant = f"s-{uuid.uuid4().hex[:6]}"
    a, b = zipped(1), zipped(2)
    assert admin(fake_stack, "tenants", "create", tenant, "--max-storage-bytes", str(len(a))).returncode == 0
    with fake_stack.client(fake_stack.create_key(tenant)) as c:
        up = lambda data: c.post("/api/v1/datasets/uploads", params={"name": "q"}, content=data,  # noqa: E731
                                 headers={"Content-Type": "application/octet-stream"})
        r = up(a)  # fills the quota exactly: accepted
        assert r.status_code == 201, r.text
        r = up(b)  # would go past it
        assert r.status_code == 409 and r.json()["quota"] == "storage_bytes", r.text
        # refused before a byte is streamed (issue 10): what is stored, and what the upload declares
        assert r.json()["used"] == len(a) and r.json()["declared"] == len(b) and r.json()["limit"] == len(a)
        assert [d["size_bytes"] for d in c.get("/api/v1/datasets").json()["items"]] == [len(a)]
        ds_id = wait_dataset(c, c.get("/api/v1/datasets").json()["items"][0]["id"])["id"]
        r = c.post("/api/v1/jobs/search", json=fake_search_body(ds_id))  # and no job can be added either
        assert r.status_code == 409 and r.json()["quota"] == "storage_bytes", r.text
    uploads = settings_of(fake_stack).upload_path / tenant
    assert len([p for p in uploads.iterdir() if not p.name.startswith(".")]) == 1  # the refused archive left nothing
