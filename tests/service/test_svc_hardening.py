"""Hardening (issue 10) over real HTTP: a tenant cannot make the service read outside its data, learn
server paths, or get a 500 with odd input; the concurrent-jobs quota holds under racing submissions.

- paths a tenant chooses: split names are one path component and one of the dataset's own splits
  (search ``train_split``, retrain ``train_splits``/``eval_split``); ``settings.advanced`` is an
  allow-list (server-owned or unknown keys: 422 saying what to do); a split linked outside the
  dataset root is refused at registration and by the core when a job reads it;
- no server path in a job's error, events or report.json;
- integers past 2^63, one class name, archive members thousands of directories deep, NaN/Infinity
  (PostgreSQL and SQLite): 422, never 500;
- the concurrent-jobs quota under 10 simultaneous submissions, on PostgreSQL and on SQLite.
"""
from __future__ import annotations

import copy
import io
import json
import re
import shutil
import subprocess
import tarfile
import threading
import uuid
from pathlib import Path

import httpx
import pytest

from svc_helpers import PY, REPO, sqlite_stack, wait_dataset, wait_until

pytestmark = pytest.mark.services
PROBLEM = "application/problem+json"
GENOTYPE = {"format": "gas-genotype", "version": 1, "ops": ["none", "skip_connect", "sep_conv_3x3"],
            "network": {"num_cells": 2, "reduction_cells": [1], "nodes": 1, "init_channels": 8, "stem_channels": 8,
                        "head_channels": 16},
            "cells": [{"reduction": False, "nodes": [[{"input": 0, "op": "skip_connect"}, {"input": 1, "op": "sep_conv_3x3"}]]},
                      {"reduction": True, "nodes": [[{"input": 0, "op": "sep_conv_3x3"}, {"input": 1, "op": "skip_connect"}]]}]}
RETRAIN_SETTINGS = {"epochs": 1, "batch_size": 2, "height": 64, "width": 96, "dataset_limit": 2,
                    "advanced": {"fps_iters": 5}}
ABS_PATH = re.compile(r"(?<![\w.~:/\\>…-])/(tmp|var|home|srv|data|work|etc|opt|usr|root|proc)\b")


def _problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    body = r.json()
    assert body["status"] == status and body["detail"]
    return body


def _fields(body: dict) -> dict[str, str]:
    return {e["field"]: e["msg"] for e in body.get("errors", [])}


def _search(dataset_id: str, advanced: dict) -> dict:
    return {"dataset_id": dataset_id, "budget": {"latency_ms": 50, "height": 64, "width": 96},
            "settings": {"epochs": 1, "warmup_epochs": 0, "advanced": advanced}}


def _no_server_path(text: str, *roots: Path) -> None:
    for root in roots:
        assert str(root) not in text, f"{root} in {text[:2000]}"
    m = ABS_PATH.search(text)
    assert m is None, f"absolute path at {m.start()}: {text[max(0, m.start() - 200):m.start() + 200]}"


def _copy_dataset(datasets_root: Path) -> str:
    """A fresh copy of the tiny CamVid under the datasets root; returns its relative path."""
    name = f"copy_{uuid.uuid4().hex[:8]}"
    shutil.copytree(datasets_root / "camvid_tiny", datasets_root / name)
    return name


# ------------------------------------------------------------------------ 1. paths a tenant chooses
@pytest.mark.parametrize("split", ["../../etc", "..", "/etc", "train/../../x", "train+../x", "val/..", "nosuch",
                                   "train+nosuch", "tra in", ""])
def test_search_train_split_is_one_of_the_datasets_splits(api, dataset_id, split):
    body = _problem(api.post("/api/v1/jobs/search", json=_search(dataset_id, {"train_split": split})), 422)
    assert "settings.advanced.train_split" in _fields(body), body


@pytest.mark.parametrize("train", [{"train_splits": ["../camvid_tiny/train"]}, {"train_splits": ["train", "/etc"]},
                                   {"eval_split": "../../x"}, {"eval_split": "nosuch"}, {"train_splits": ["nosuch"]},
                                   {"eval_split": "val/../../.."}])
def test_retrain_splits_are_among_the_datasets_splits(api, dataset_id, train):
    r = api.post("/api/v1/jobs/retrain", json={"dataset_id": dataset_id, "genotype": GENOTYPE,
                                               "settings": {"advanced": {"train": train}}})
    fields = _fields(_problem(r, 422))
    assert any(f.startswith("settings.advanced.train.") and f.split(".")[3] in train for f in fields), fields


@pytest.mark.parametrize("kind,advanced,field,says", [
    ("search", {"dataset": {"root": "/etc", "layout": "camvid"}}, "settings.advanced.dataset", "dataset_id"),
    ("search", {"latency": {"budget_ms": 1e9}}, "settings.advanced.latency.budget_ms", "budget"),
    ("search", {"latency": {"height": 4096}}, "settings.advanced.latency.height", "budget.height"),
    ("search", {"network": {"num_classes": 2}}, "settings.advanced.network.num_classes", "dataset"),
    ("search", {"data_root": "/srv"}, "settings.advanced.data_root", "remove it"),
    ("search", {"search": {"devices": "cuda:1"}}, "settings.advanced.search.devices", "remove it"),
    ("retrain", {"dataset": {"root": "/"}}, "settings.advanced.dataset", "dataset_id"),
    ("retrain", {"genotype": GENOTYPE}, "settings.advanced.genotype", "top level"),
    ("retrain", {"height": 2048}, "settings.advanced.height", "settings.height"),
    ("retrain", {"workdir": "/tmp"}, "settings.advanced.workdir", "remove it"),
])
def test_advanced_is_an_allow_list(api, dataset_id, kind, advanced, field, says):
    body = (_search(dataset_id, advanced) if kind == "search" else
            {"dataset_id": dataset_id, "genotype": GENOTYPE, "settings": {"advanced": advanced}})
    fields = _fields(_problem(api.post(f"/api/v1/jobs/{kind}", json=body), 422))
    assert field in fields and says in fields[field] and "remove it" in fields[field], fields


def test_advanced_knobs_still_work(api, dataset_id):
    r = api.post("/api/v1/jobs/search", json=_search(dataset_id, {
        "train_split": "train+val", "search": {"steps_per_epoch": 1, "a_betas": [0.5, 0.9]},
        "network": {"stem_channels": 8}, "latency": {"repeats": 3}, "ggm": {"gamma": 0.2}, "fps_iters": 5}))
    assert r.status_code == 202, r.text
    api.post(f"/api/v1/jobs/{r.json()['id']}/cancel")


def test_split_linked_outside_the_dataset_is_refused_at_registration(api, datasets_root, tmp_path):
    outside = tmp_path / "outside"  # a directory outside the datasets root with a valid split in it
    shutil.copytree(datasets_root / "camvid_tiny" / "train", outside)
    name = _copy_dataset(datasets_root)
    shutil.rmtree(datasets_root / name / "train")
    (datasets_root / name / "train").symlink_to(outside, target_is_directory=True)
    body = _problem(api.post("/api/v1/datasets", json={"name": "linked", "path": name}), 422)
    assert "outside the dataset root" in body["detail"], body
    _no_server_path(json.dumps(body), tmp_path, datasets_root)


def _retrain(api, ds: str) -> dict:
    r = api.post("/api/v1/jobs/retrain", json={"dataset_id": ds, "genotype": GENOTYPE, "settings": RETRAIN_SETTINGS})
    assert r.status_code == 202, r.text
    return r.json()


def test_core_refuses_a_split_linked_outside_after_validation(fake_stack, api, datasets_root, tmp_path):
    """The directory changes after its validation: the core itself resolves every split directory and
    file and refuses what lies outside the dataset root (the retrain kind runs the REAL core)."""
    name = _copy_dataset(datasets_root)
    ds = wait_dataset(api, api.post("/api/v1/datasets", json={"name": "swap", "path": name}).json()["id"])["id"]
    outside = tmp_path / "elsewhere"
    shutil.copytree(datasets_root / name / "train", outside)
    shutil.rmtree(datasets_root / name / "train")
    (datasets_root / name / "train").symlink_to(outside, target_is_directory=True)
    job = fake_stack.wait_status(_retrain(api, ds)["id"], {"failed", "succeeded"}, 180)
    assert job["status"] == "failed" and "outside the dataset root" in job["error"], job
    _no_server_path(json.dumps(job) + json.dumps(fake_stack.events(job["id"])), tmp_path, datasets_root)


def test_a_failed_jobs_error_and_events_name_no_server_path(fake_stack, api, datasets_root):
    name = _copy_dataset(datasets_root)
    ds = wait_dataset(api, api.post("/api/v1/datasets", json={"name": "gone", "path": name}).json()["id"])["id"]
    shutil.rmtree(datasets_root / name / "train")  # vanishes after validation: the core's error names it
    job = fake_stack.wait_status(_retrain(api, ds)["id"], {"failed", "succeeded"}, 180)
    assert job["status"] == "failed" and "train" in job["error"], job
    _no_server_path(json.dumps(job) + json.dumps(fake_stack.events(job["id"])), datasets_root, fake_stack.base)


def test_reports_and_artifacts_name_no_server_path(fake_stack, api, dataset_id, datasets_root):
    job = fake_stack.wait_status(_retrain(api, dataset_id)["id"], {"failed", "succeeded"}, 300)
    assert job["status"] == "succeeded", job
    texts = [json.dumps(job), json.dumps(fake_stack.events(job["id"]))]
    for art in api.get(f"/api/v1/jobs/{job['id']}/artifacts").json()["items"]:
        if art["name"].endswith(".json"):
            texts.append(api.get(art["url"]).text)
    assert any('"settings"' in t for t in texts)  # report.json was read
    _no_server_path("\n".join(texts), datasets_root, fake_stack.base)


# ------------------------------------------------------------------- 5. answers that were 500
def _int_query_params(http: httpx.Client) -> list[tuple[str, str, str]]:
    """(method, path, name) of every integer query parameter; asserts every integer and number a
    client can send (parameters and request bodies) has both bounds in the OpenAPI document."""
    schema = http.get("/openapi.json").json()
    unbounded = []

    def walk(s, where):
        if not isinstance(s, dict):
            return
        if s.get("type") in ("integer", "number") and not (
                {"maximum", "exclusiveMaximum"} & set(s) and {"minimum", "exclusiveMinimum"} & set(s)):
            unbounded.append(where)
        for k in ("anyOf", "oneOf", "allOf", "prefixItems"):
            for x in s.get(k) or []:
                walk(x, where)
        for k, v in (s.get("properties") or {}).items():
            walk(v, f"{where}.{k}")
        walk(s.get("items"), f"{where}[]")

    int_params = []
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            for p in op.get("parameters", []):
                walk(p["schema"], f"{method} {path} {p['name']}")
                if "integer" in json.dumps(p["schema"]) and p["in"] == "query":
                    int_params.append((method, path, p["name"]))
    for name, s in schema["components"]["schemas"].items():
        if name.endswith(("In", "Create", "Tunable", "Params")):
            walk(s, name)
    assert not unbounded, unbounded
    assert int_params
    return int_params


def _probe_integers(http: httpx.Client, ids: dict[str, str]) -> None:
    for method, path, param in _int_query_params(http):
        url = re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)
        for value in (2**63, 2**64, -(2**63) - 1, 10**30):
            r = http.request(method.upper(), url, params={param: str(value)}, content=b"" if method == "post" else None)
            assert r.status_code == 422, (method, path, param, value, r.status_code, r.text[:300])
            assert r.headers["content-type"].startswith(PROBLEM)
    for body in ({"genotype": GENOTYPE, "iters": 2**64}, {"genotype": GENOTYPE, "height": 2**63},
                 {"genotype": {**GENOTYPE, "version": 2**64}}):
        r = http.post("/api/v1/jobs/benchmark", json=body)
        assert r.status_code == 422, (body, r.text)


def test_integers_past_int64_are_422_on_postgresql(api, dataset_id):
    job = api.post("/api/v1/jobs/search", json=_search(dataset_id, {"search": {"steps_per_epoch": 1}})).json()
    api.post(f"/api/v1/jobs/{job['id']}/cancel")
    _probe_integers(api, {"job_id": job["id"], "dataset_id": dataset_id, "name": "report.json"})
    for body_field in ({"dataset_limit": 2**64}, {"seed": 2**63}, {"reduction_cells": [2**63]}):
        r = api.post("/api/v1/jobs/search", json={**_search(dataset_id, {}), "settings": body_field})
        assert r.status_code == 422, (body_field, r.text)


def test_integers_past_int64_are_422_on_sqlite(lite):
    ds = lite.http.post("/api/v1/datasets", json={"name": "tiny", "path": "camvid_tiny"})
    assert ds.status_code == 201, ds.text
    job = lite.http.post("/api/v1/jobs/benchmark", json={"genotype": GENOTYPE, "iters": 5})
    assert job.status_code == 202, job.text
    lite.http.post(f"/api/v1/jobs/{job.json()['id']}/cancel")
    _probe_integers(lite.http, {"job_id": job.json()["id"], "dataset_id": ds.json()["id"], "name": "report.json"})


@pytest.mark.parametrize("params", [{"class_names": ["only"]}, {"class_names": ["a"], "num_classes": None},
                                    {"class_names": [""] * 2}])
def test_one_class_name_is_422_not_500(api, params):
    body = {"name": "one", "path": "camvid_tiny", **{k: v for k, v in params.items() if v is not None}}
    b = _problem(api.post("/api/v1/datasets", json=body), 422)
    assert any(f.startswith("class_names") for f in _fields(b)), b
    up = httpx.QueryParams([("name", "x"), *[("class_names", c) for c in params["class_names"]]])
    b = _problem(api.post("/api/v1/datasets/uploads", params=up, content=b"PK\x03\x04"), 422)
    assert any("class_names" in f for f in _fields(b)), b


def _tar(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for n in names:
            info = tarfile.TarInfo(n)
            info.size = 4
            tf.addfile(info, io.BytesIO(b"data"))
    return buf.getvalue()


@pytest.mark.parametrize("member,reason", [("a/" * 1500 + "x.png", {"name_too_long", "too_deep"}),
                                           ("d/" * 100 + "x.png", {"too_deep"}),
                                           ("n" * 300 + "/x.png", {"name_too_long"}),
                                           ("x/" + "y" * 5000 + ".png", {"name_too_long"})])
def test_deep_or_long_archive_member_names_are_refused_without_a_flood_of_log(fake_stack, api, member, reason):
    log = fake_stack.logs / "api.log"
    before = log.stat().st_size
    body = _problem(api.post("/api/v1/datasets/uploads", params={"name": "deep"},
                             content=_tar(["ok/train/a.png", member])), 422)
    assert body["reason"] in reason and len(body["detail"]) < 1000, body
    _no_server_path(json.dumps(body), fake_stack.base)
    assert log.stat().st_size - before < 20_000, fake_stack.log_tail("api", 2000)
    assert not [p for p in (fake_stack.base / "data" / "uploads").rglob(".extract-*")]


def _non_finite_bodies(dataset_id: str) -> list[tuple[str, str, str]]:
    """(path, raw JSON body with a NaN/Infinity literal, the field it is in)."""
    g = copy.deepcopy(GENOTYPE)
    g["provenance"] = {"budget_ms": "@NAN@"}
    out = [("/api/v1/jobs/benchmark", json.dumps({"genotype": g}).replace('"@NAN@"', "NaN"), "genotype"),
           ("/api/v1/jobs/benchmark", json.dumps({"genotype": GENOTYPE, "budget_ms": "@X@"}).replace('"@X@"', "Infinity"),
            "budget_ms")]
    if dataset_id:
        out += [("/api/v1/jobs/search", json.dumps(_search(dataset_id, {"search": {"a_betas": ["@X@", 0.9]}}))
                 .replace('"@X@"', "NaN"), "settings.advanced.search.a_betas.0"),
                ("/api/v1/jobs/search", json.dumps(_search(dataset_id, {"ggm": {"gamma": "@X@"}}))
                 .replace('"@X@"', "-Infinity"), "settings.advanced.ggm.gamma"),
                ("/api/v1/jobs/retrain", json.dumps({"dataset_id": dataset_id, "genotype": GENOTYPE,
                                                     "settings": {"lr": "@X@"}}).replace('"@X@"', "NaN"),
                 "settings.lr")]
    return out


def _assert_non_finite_refused(http: httpx.Client, dataset_id: str | None) -> None:
    for path, raw, field in _non_finite_bodies(dataset_id):
        r = http.post(path, content=raw, headers={"content-type": "application/json"})
        body = _problem(r, 422)
        assert any(f.startswith(field) for f in _fields(body)), (path, field, body)


def test_non_finite_numbers_are_422_on_postgresql(api, dataset_id):
    _assert_non_finite_refused(api, dataset_id)


# every number field of every request body in the OpenAPI document (generated: a field added later is
# covered without touching this test), each with NaN, Infinity or -Infinity in an otherwise valid body
def _number_fields(doc: dict, s: dict, path: tuple = ()) -> list[tuple]:
    if "$ref" in s:
        return _number_fields(doc, doc["components"]["schemas"][s["$ref"].rsplit("/", 1)[-1]], path)
    out = [path] if s.get("type") == "number" else []
    for branch in s.get("anyOf", []):
        out += [p for p in _number_fields(doc, branch, path) if p not in out]
    for k, v in (s.get("properties") or {}).items():
        out += _number_fields(doc, v, (*path, k))
    if isinstance(s.get("items"), dict):
        out += _number_fields(doc, s["items"], (*path, 0))
    for i, item in enumerate(s.get("prefixItems") or []):
        out += _number_fields(doc, item, (*path, i))
    return out


def _with(body: dict, path: tuple, marker: str) -> dict:
    body = copy.deepcopy(body)
    node = body
    for here, nxt in zip(path, (*path[1:], None)):
        leaf = nxt is None
        if isinstance(here, int):  # a list: valid numbers around the probed position
            node[:] = [0.5] * here + [marker if leaf else {}]
            node = node[here]
            continue
        if leaf:
            node[here] = marker
        else:
            node = node.setdefault(here, [] if isinstance(nxt, int) else {})
            if not isinstance(node, (dict, list)):
                return body
    return body


def _every_number_field_refuses_non_finite(http: httpx.Client, dataset_id: str) -> int:
    doc = http.get("/openapi.json").json()
    bases = {"/api/v1/jobs/search": _search(dataset_id, {}), "/api/v1/datasets": {"name": "n", "path": "camvid_tiny"},
             "/api/v1/jobs/retrain": {"dataset_id": dataset_id, "genotype": GENOTYPE, "settings": {}},
             "/api/v1/jobs/benchmark": {"genotype": GENOTYPE, "iters": 5},
             "/api/v1/jobs/feasibility": {"num_classes": 3, "height": 64, "width": 96}}
    sent, literals = 0, ("NaN", "Infinity", "-Infinity")
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            body_schema = (op.get("requestBody") or {}).get("content", {}).get("application/json", {}).get("schema")
            if body_schema is None:
                continue
            assert path in bases, f"{method} {path} takes JSON: give it a valid base body here"
            for field in _number_fields(doc, body_schema):
                raw = json.dumps(_with(bases[path], field, "@X@")).replace('"@X@"', literals[sent % 3])
                r = http.request(method.upper(), path, content=raw, headers={"content-type": "application/json"})
                name = ".".join(str(x) for x in field)
                fields = _fields(_problem(r, 422))
                assert any(f.startswith(name) for f in fields), (path, name, raw[:300], fields)
                sent += 1
    return sent


def test_every_number_field_refuses_nan_and_infinity_on_postgresql(api, dataset_id):
    assert _every_number_field_refuses_non_finite(api, dataset_id) >= 20


# --------------------------------------------------------------------------- the embedded storage
@pytest.fixture(scope="module")
def lite(tmp_path_factory, datasets_root):
    yield from sqlite_stack("lite", tmp_path_factory, datasets_root)


def test_non_finite_numbers_are_422_on_sqlite(lite):
    _assert_non_finite_refused(lite.http, None)


def test_every_number_field_refuses_nan_and_infinity_on_sqlite(lite):
    ds = lite.http.post("/api/v1/datasets", json={"name": "nan", "path": "camvid_tiny"})
    assert ds.status_code == 201, ds.text
    assert _every_number_field_refuses_non_finite(lite.http, ds.json()["id"]) >= 20


# ----------------------------------------------------------------------- 3. quotas under a race
def _race(stack, n: int = 10, quota: int = 2) -> list[int]:
    tenant = f"race-{uuid.uuid4().hex[:6]}"
    out = subprocess.run([PY, "-m", "api.admin", "tenants", "create", tenant, "--max-concurrent-jobs", str(quota)],
                         env=stack.env, cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    key = stack.create_key(tenant)
    codes: list[int] = []
    barrier = threading.Barrier(n)

    def post(i: int) -> None:
        with stack.client(key) as c:
            barrier.wait()
            codes.append(c.post("/api/v1/jobs/benchmark", json={"genotype": GENOTYPE, "iters": 5, "height": 32,
                                                                "width": 32, "budget_ms": 1000 + i}).status_code)
    threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with stack.client(key) as c:
        jobs = c.get("/api/v1/jobs", params={"kind": "benchmark"}).json()["items"]
        for j in jobs:
            c.post(f"/api/v1/jobs/{j['id']}/cancel")
    assert len(jobs) == codes.count(202), (codes, len(jobs))
    return sorted(codes)


def test_concurrent_jobs_quota_holds_under_10_racing_submissions_on_sqlite(lite):
    codes = _race(lite)
    assert codes == [202] * 2 + [429] * 8, codes


def test_concurrent_jobs_quota_holds_under_10_racing_submissions_on_postgresql(fake_stack):
    codes = _race(fake_stack)
    assert codes == [202] * 2 + [429] * 8, codes


# --------------------------------------------------------------------------- 2. body size caps
def test_json_body_past_the_cap_is_413_declared_or_chunked(fake_stack, api, dataset_id):
    cap = 1 << 20  # GAS_JSON_MAX_BYTES default
    big = json.dumps({**_search(dataset_id, {}), "padding": "x" * (cap + 10)}).encode()
    for content in (big, iter([big[i:i + 65536] for i in range(0, len(big), 65536)])):  # Content-Length / chunked
        body = _problem(api.post("/api/v1/jobs/search", content=content, headers={"content-type": "application/json"}),
                        413)
        assert body["limit"] == cap and "GAS_JSON_MAX_BYTES" in body["detail"], body
    ok = api.post("/api/v1/jobs/benchmark", json={"genotype": GENOTYPE, "iters": 5, "height": 32, "width": 32})
    assert ok.status_code == 202, ok.text  # small bodies pass the cap untouched
    api.post(f"/api/v1/jobs/{ok.json()['id']}/cancel")


def test_inline_genotype_has_its_own_cap(api):
    g = copy.deepcopy(GENOTYPE)
    g["ops"] = g["ops"] + [f"op_{i}_" + "x" * 1000 for i in range(300)]  # ~300 kB, otherwise valid
    fields = _fields(_problem(api.post("/api/v1/jobs/benchmark", json={"genotype": g, "iters": 5}), 422))
    assert "genotype" in fields and "at most" in fields["genotype"], fields


# ------------------------------------------------------- strings PostgreSQL cannot store or compare
def test_nul_characters_and_lone_surrogates_are_4xx_not_500(fake_stack, api, dataset_id):
    for path in ("/api/v1/jobs/%00", "/api/v1/datasets/a%00b", "/api/v1/jobs/%00/events", "/api/v1/jobs/x%00/artifacts"):
        _problem(api.get(path), 404)
    g = copy.deepcopy(GENOTYPE)
    g["provenance"] = {"source": "a\x00b"}
    for path, body, field in [
            ("/api/v1/datasets", {"name": "a\x00b", "path": "camvid_tiny"}, "name"),
            ("/api/v1/datasets", {"name": "n", "path": "camvid_tiny", "class_names": ["a\x00"] * 11}, "class_names"),
            ("/api/v1/jobs/search", {"dataset_id": "\x00", "budget": {"fps": 1}}, "dataset_id"),
            ("/api/v1/jobs/benchmark", {"genotype": g}, "genotype"),
            ("/api/v1/jobs/benchmark", {"genotype": {**GENOTYPE, "ops": GENOTYPE["ops"] + ["x\x00"]}}, "genotype")]:
        fields = _fields(_problem(api.post(path, json=body), 422))
        assert any(f.startswith(field) for f in fields), (body, fields)
    raw = json.dumps({"genotype": {**GENOTYPE, "ops": GENOTYPE["ops"] + ["@S@"]}}).replace("@S@", "\\ud800")
    r = api.post("/api/v1/jobs/benchmark", content=raw, headers={"content-type": "application/json"})
    assert "genotype" in _fields(_problem(r, 422))
    _problem(api.post("/api/v1/datasets/uploads", params={"name": "a\x00"}, content=b"PK\x03\x04"), 422)
