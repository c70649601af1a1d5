"""Issue 11 over HTTP with the real core: choosing a budget (feasibility jobs, SDK and CLI), latency
tables listed, inspected and deleted (shared per worker device; operators delete), and one measuring
job per device when two workers take two jobs at once.

A stack of its own (PostgreSQL, Redis, API, real Celery workers) with its own LUT directory, so that
what is measured or reused here does not depend on the order of other modules."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from client import GasClient
from core.timing import cpu_model_name
from svc_helpers import PY, REPO, db_session, running_stack

pytestmark = pytest.mark.services
PROBLEM = "application/problem+json"
OPERATOR = "operator"
# a tiny search space at a tiny resolution; checks that always pass: these tests are about the service
# (what is measured, reused, shown, deleted, serialised), not about this shared host's load
SETTINGS = {"cells": 3, "nodes": 2, "init_channels": 8,
            "advanced": {"network": {"stem_channels": 8, "head_channels": 16, "low_level_channels": 8},
                         "latency": {"warmup_runs": 1, "repeats": 5, "e2e_repeats": 5, "lut_check_networks": 2,
                                     "noise_max_ratio": 1e9, "noise_max_median_ratio": 1e9, "lut_max_error": 100.0, "lut_min_rank_corr": -1.0,
                                     "noise_retry_pause_s": 0.0},
                         "repeats": 5, "typical_samples": 8}}
H, W = 32, 48


@pytest.fixture(scope="module")
def stack(tmp_path_factory, datasets_root):
    lut_dir = tmp_path_factory.mktemp("lat-luts")
    yield from running_stack("lat", tmp_path_factory, datasets_root, lut_dir, operator_tenants=OPERATOR)


@pytest.fixture(scope="module")
def first(stack):
    """The first feasibility request of the module, through the SDK: it measures the table."""
    with GasClient(stack.url, api_key=stack.api_key) as c:
        return c.feasibility(height=H, width=W, num_classes=11, settings=SETTINGS, timeout=300)


def _cli(stack, *args: str, key: str | None = None) -> subprocess.CompletedProcess:
    env = {**stack.env, "GAS_URL": stack.url, "GAS_API_KEY": key or stack.api_key}
    return subprocess.run([PY, "-m", "client.cli", *args], env=env, cwd=str(REPO), capture_output=True, text=True,
                          timeout=300)


def _no_server_path(stack, text: str) -> None:
    for secret in (str(stack.base), stack.env["GAS_LUT_DIR"], str(REPO)):
        assert secret not in text


def test_feasibility_gives_the_cheapest_typical_and_dearest_network_and_reuses_the_validated_table(stack, first):
    f = first
    nets = f["networks"]
    assert set(nets) == {"cheapest", "typical", "dearest"}
    lo, hi = f["typical_lut_range_ms"]
    # the cheapest/dearest are the LUT's extremes over every derivable network: no random one beats them
    assert nets["cheapest"]["lut_ms"] <= lo <= nets["typical"]["lut_ms"] <= hi <= nets["dearest"]["lut_ms"]
    assert nets["cheapest"]["lut_ms"] < nets["dearest"]["lut_ms"]
    for n in nets.values():  # measured end to end too (the default), with its spread
        m = n["measured"]
        assert 0 < m["min"] <= m["median"] <= m["p90"] and n["measured_fps"] > 0
    assert nets["cheapest"]["measured"]["min"] < nets["dearest"]["measured"]["min"]
    assert f["resolution"] == [H, W] and f["runtime"] == "torch-eager" and f["device"] == cpu_model_name()
    assert f["table"]["trusted"] and f["table"]["saved"] and not f["table"]["cached"]
    assert f["table"]["median_rel_error"] is not None and f["table"]["rank_correlation"] is not None
    assert "no network of this space runs under" in f["advice"]
    job = stack.job(f["job_id"])
    assert job["kind"] == "feasibility" and job["result"]["feasibility"]["table"]["id"] == f["table"]["id"]
    _no_server_path(stack, json.dumps(job))

    # the same question through the CLI: answered from the cached, validated table (nothing re-measured)
    r = _cli(stack, "feasibility", "--height", str(H), "--width", str(W), "--num-classes", "11", "--cells", "3",
             "--nodes", "2", "--init-channels", "8", "--advanced", json.dumps(SETTINGS["advanced"]))
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads(r.stdout)
    assert again["table"]["id"] == f["table"]["id"] and again["table"]["cached"] and not again["table"]["validated_now"]
    assert again["networks"]["cheapest"]["genotype_hash"] == nets["cheapest"]["genotype_hash"]
    phases = {e["data"].get("phase") for e in stack.events(again["job_id"])}
    assert "latency_table" not in phases and "validate_lut" not in phases
    arts = {a["name"] for a in stack.http.get(f"/api/v1/jobs/{again['job_id']}/artifacts").json()["items"]}
    assert {"report.json", "feasibility.json", "genotype_cheapest.json", "genotype_dearest.json"} <= arts


def test_bad_feasibility_requests_are_4xx_naming_the_field(stack):
    http = stack.http
    before = len(http.get("/api/v1/jobs", params={"kind": "feasibility"}).json()["items"])
    for body, field in (({"height": 8}, "height"), ({"dataset_id": "nope"}, "dataset_id"),
                        ({"num_classes": 11, "dataset_id": "x"}, ""),
                        ({"settings": {"advanced": {"latency": {"height": 64}}}}, "height"),
                        ({"settings": {"advanced": {"workdir": "/tmp"}}}, "workdir")):
        r = http.post("/api/v1/jobs/feasibility", json=body)
        assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM), (body, r.text)
        assert field in json.dumps(r.json()), (body, r.text)
    assert len(http.get("/api/v1/jobs", params={"kind": "feasibility"}).json()["items"]) == before


def test_tables_are_listed_and_inspected_by_every_tenant_without_server_paths(stack, first):
    table_id = first["table"]["id"]
    for key in (stack.api_key, stack.create_key(f"t-{uuid.uuid4().hex[:6]}")):
        with stack.client(key) as c:
            items = c.get("/api/v1/latency-tables").json()["items"]
            assert table_id in {t["id"] for t in items}
            r = c.get(f"/api/v1/latency-tables/{table_id}")
            assert r.status_code == 200, r.text
            t = r.json()
            _no_server_path(stack, r.text)
            assert t["height"] == H and t["width"] == W and t["runtime"] == "torch-eager" and t["precision"] == "fp32"
            assert t["threads"]["intra_op"] == 1 and t["versions"]["torch"]
            assert t["entries"] == len(t["entry_list"]) > 0 and t["validated"]
            assert all(e["min_ms"] <= e["median_ms"] <= e["p90_ms"] for e in t["entry_list"])
            assert any(v["passed"] and v["samples"] == 2 and v["networks"] for v in t["validations"])
    assert stack.http.get("/api/v1/latency-tables", params={"height": H + 1}).json()["items"] == []
    for bad in ("0" * 16, "../../etc/passwd", "lut-" + table_id):
        r = stack.http.get(f"/api/v1/latency-tables/{bad}")
        assert r.status_code == 404 and r.headers["content-type"].startswith(PROBLEM), bad
    r = _cli(stack, "luts", "show", table_id)
    assert r.returncode == 0 and json.loads(r.stdout)["id"] == table_id


def test_only_an_operator_deletes_a_shared_table_and_the_next_job_measures_it_again(stack, first):
    from sqlalchemy import select

    from storage.models import LatencyTable

    table_id = first["table"]["id"]
    path = os.path.join(stack.env["GAS_LUT_DIR"], f"lut-{table_id}.json")
    assert os.path.isfile(path)
    with db_session(stack) as s:  # the worker recorded the file it wrote
        assert s.scalar(select(LatencyTable.id).where(LatencyTable.path == path)) is not None
    r = stack.http.delete(f"/api/v1/latency-tables/{table_id}")  # the default tenant is no operator
    assert r.status_code == 403 and r.headers["content-type"].startswith(PROBLEM)
    assert "GAS_OPERATOR_TENANTS" in r.json()["detail"] and os.path.isfile(path)
    r = _cli(stack, "luts", "delete", table_id)
    assert r.returncode == 2 and "operator" in r.stderr and os.path.isfile(path)

    op_key = stack.create_key(OPERATOR)
    assert _cli(stack, "luts", "delete", "f" * 16, key=op_key).returncode == 2  # unknown: 404
    r = _cli(stack, "luts", "delete", table_id, key=op_key)
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(path)
    assert table_id not in {t["id"] for t in stack.http.get("/api/v1/latency-tables").json()["items"]}
    with db_session(stack) as s:
        assert s.scalar(select(LatencyTable.id).where(LatencyTable.path == path)) is None

    with GasClient(stack.url, api_key=stack.api_key) as c:
        f = c.feasibility(height=H, width=W, num_classes=11, settings={**SETTINGS, "advanced": {
            **SETTINGS["advanced"], "measure": False}}, timeout=300)
    assert f["table"]["id"] == table_id and not f["table"]["cached"] and f["table"]["validated_now"]
    assert "measured" not in f["networks"]["typical"] and f["basis"].startswith("LUT")
    assert os.path.isfile(path)


def test_two_workers_never_measure_on_the_device_at_once(stack, first):
    """Two jobs taken at once by two workers on one host: their timing phases (recorded in each report)
    do not overlap; the one that found the device busy waited for it."""
    stack.start_worker("worker2")
    longer = {**SETTINGS, "advanced": {**SETTINGS["advanced"], "repeats": 300}}  # seconds of timing each
    try:
        with GasClient(stack.url, api_key=stack.api_key) as c:
            ids = [c.submit_feasibility(height=H, width=W, num_classes=11, settings=longer)["id"] for _ in range(2)]
            jobs = [c.wait(i, timeout=300, poll=0.5) for i in ids]
            assert all(j["status"] == "succeeded" for j in jobs), jobs
            reports = []
            for i in ids:
                c.download(i, "report.json", stack.base / f"report-{i}.json")
                reports.append(json.loads((stack.base / f"report-{i}.json").read_text()))
    finally:
        stack.stop_worker(key="worker2")
    from storage.models import Job

    with db_session(stack) as s:
        rows = [s.get(Job, i) for i in ids]
        workers = {r.worker_id for r in rows}
        spans = [(r.started_at, r.finished_at) for r in rows]
    assert len(workers) == 2, workers  # one job per worker...
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans  # ...running at the same time
    holds = [r["device_lock"]["holds"] for r in reports]
    assert all({h["phase"] for h in hs} == {"latency_table", "end_to_end"} for hs in holds), holds
    for a in holds[0]:
        for b in holds[1]:  # yet their timings never overlapped
            assert not (a["acquired_at"] < b["released_at"] and b["acquired_at"] < a["released_at"]), (a, b)
    assert reports[0]["device_lock"]["device_key"] == reports[1]["device_lock"]["device_key"]
    print(f"two feasibility jobs on {len(workers)} workers; waited "
          f"{[r['device_lock']['waited_s'] for r in reports]} s; holds {holds}")
