"""Protocol details (issue 10 §6) over real HTTP on the PostgreSQL stack (the embedded mode's artifact
download is checked the same way in test_svc_embedded.py, on SQLite):

- HEAD on every GET route (probes, lists, one job, artifacts): the GET's status and headers, no body;
- a 405 names every method of its path in Allow (not only the first route's);
- artifact downloads: ETag/If-None-Match (304), one range (206), malformed/multi ranges ignored (200),
  416 as problem+json, content types as documented (and as the list says);
- the OpenAPI document states the limits the server enforces (page size cap, integer bounds) and the
  either-or rules (oneOf), so a client (or schemathesis) can build valid requests from it alone.
"""
from __future__ import annotations

import httpx
import pytest

from svc_helpers import check_download_protocol, fake_search_body, sqlite_stack

pytestmark = pytest.mark.services
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def finished_job(fake_stack, api, dataset_id) -> dict:
    r = api.post("/api/v1/jobs/search", json=fake_search_body(dataset_id, epochs=1, steps=1))
    assert r.status_code == 202, r.text
    return fake_stack.wait_status(r.json()["id"], "succeeded", 90)


def test_artifact_downloads_follow_rfc_9110(api, finished_job):
    arts = api.get(f"/api/v1/jobs/{finished_job['id']}/artifacts").json()["items"]
    assert {"genotype.json", "report.json"} <= {a["name"] for a in arts}
    documented = api.get("/openapi.json").json()["paths"]["/api/v1/jobs/{job_id}/artifacts/{name}"]["get"]["responses"]
    for a in arts:
        assert a["content_type"] == "application/json", a  # .json artifacts, as docs/SERVICE.md says
        assert a["content_type"] in documented["200"]["content"] and a["content_type"] in documented["206"]["content"]
        check_download_protocol(api, a["url"], api.get(a["url"]).content, a["content_type"])
    assert set(documented) >= {"200", "206", "304", "416"}
    assert PROBLEM in documented["416"]["content"]
    # HEAD of a missing artifact: the GET's 404, without a body
    r = api.head(f"/api/v1/jobs/{finished_job['id']}/artifacts/nope.json")
    assert r.status_code == 404 and r.content == b"" and r.headers["content-type"].startswith(PROBLEM)


def _head_matches_get(http: httpx.Client, path: str, status: int = 200) -> None:
    g, h = http.get(path), http.head(path)
    assert g.status_code == h.status_code == status, (path, g.status_code, h.status_code, g.text[:200])
    assert h.content == b"" and h.headers["content-type"] == g.headers["content-type"], (path, h.headers)
    if "content-length" in g.headers and path not in ("/metrics",):  # metrics change between two scrapes
        assert h.headers["content-length"] == g.headers["content-length"], (path, g.headers, h.headers)


def test_head_on_probes_and_every_get_route(fake_stack, api, dataset_id, finished_job):
    anon = httpx.Client(base_url=fake_stack.url, timeout=30)
    for path in ("/healthz", "/readyz", "/api/v1/healthz"):  # probes need no key
        _head_matches_get(anon, path)
    _head_matches_get(anon, "/api/v1/jobs", 401)
    assert anon.head("/api/v1/jobs").headers["www-authenticate"].startswith("Bearer")
    for path in ("/api/v1/datasets", f"/api/v1/datasets/{dataset_id}", "/api/v1/jobs", f"/api/v1/jobs/{finished_job['id']}",
                 f"/api/v1/jobs/{finished_job['id']}/events", f"/api/v1/jobs/{finished_job['id']}/artifacts",
                 "/openapi.json", "/metrics"):
        _head_matches_get(api, path)
    _head_matches_get(api, "/api/v1/jobs/nope", 404)
    _head_matches_get(api, "/api/v1/jobs?limit=0", 422)


@pytest.mark.parametrize("method,path,allow", [
    ("PUT", "/api/v1/datasets/x", "DELETE, GET, HEAD"),   # two routes (GET, DELETE) share the path
    ("OPTIONS", "/api/v1/datasets/x", "DELETE, GET, HEAD"),
    ("PATCH", "/api/v1/datasets", "GET, HEAD, POST"),
    ("DELETE", "/api/v1/jobs/search", "POST"),            # the submission resource, not a job named "search"
    ("GET", "/api/v1/jobs/x/cancel", "POST"),
    ("HEAD", "/api/v1/jobs/x/cancel", "POST"),
    ("POST", "/healthz", "GET, HEAD"),
    ("PUT", "/api/v1/jobs/x/artifacts/y", "GET, HEAD"),
])
def test_405_lists_every_method_of_the_path(api, method, path, allow):
    r = api.request(method, path)
    assert r.status_code == 405 and r.headers["allow"] == allow, (r.status_code, r.headers)
    if method != "HEAD":
        assert r.headers["content-type"].startswith(PROBLEM) and allow in r.json()["detail"]


def test_openapi_states_the_limits_and_the_either_or_rules(fake_stack, api):
    doc = api.get("/openapi.json").json()
    cap = int(fake_stack.env.get("GAS_PAGE_SIZE_MAX", 200))
    limits = [(path, p["schema"]) for path, ops in doc["paths"].items() for op in ops.values()
              for p in op.get("parameters", []) if p["name"] == "limit"]
    assert len(limits) >= 3
    for path, s in limits:
        ints = [x for x in [s, *s.get("anyOf", [])] if x.get("type") == "integer"]
        assert ints and all(x["maximum"] == cap and x["minimum"] == 1 for x in ints), (path, s)
        assert api.get(path.replace("{job_id}", "x"), params={"limit": cap + 1}).status_code in (404, 422)
    assert api.get("/api/v1/jobs", params={"limit": cap}).status_code == 200
    assert api.get("/api/v1/jobs", params={"limit": cap + 1}).status_code == 422
    schemas = doc["components"]["schemas"]
    for name, pair in {"BudgetIn": ("latency_ms", "fps"), "RetrainJobCreate": ("search_job_id", "genotype"),
                       "BenchmarkJobCreate": ("job_id", "genotype")}.items():
        one_of = schemas[name]["oneOf"]
        assert [b["required"] for b in one_of] == [[pair[0]], [pair[1]]], (name, one_of)
        assert "exactly one" in schemas[name]["description"]


def test_head_and_405_on_the_embedded_storage(tmp_path_factory, datasets_root):
    gen = sqlite_stack("proto-lite", tmp_path_factory, datasets_root)
    lite = next(gen)
    try:
        _head_matches_get(lite.http, "/healthz")
        _head_matches_get(lite.http, "/api/v1/jobs")
        r = lite.http.request("PUT", "/api/v1/datasets/x")
        assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET, HEAD"
    finally:
        next(gen, None)
