"""HTTP API over real HTTP against a real stack: validation (4xx problem+json naming the problem and
changing nothing), 404s, datasets root confinement, idempotency, pagination, OpenAPI, health."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid

import httpx
import pytest

from svc_helpers import PY, REPO, fake_search_body, free_port, wait_dataset, wait_until

pytestmark = pytest.mark.services
PROBLEM = "application/problem+json"


def _problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def _fields(body: dict) -> set[str]:
    return {e["field"] for e in body.get("errors", [])}


def _count_jobs(api) -> int:
    n, offset = 0, 0
    while True:
        page = api.get("/api/v1/jobs", params={"limit": 200, "offset": offset}).json()
        n += len(page["items"])
        if page["next_offset"] is None:
            return n
        offset = page["next_offset"]


def test_register_dataset_defaults_and_get(api, dataset_id):
    ds = api.get(f"/api/v1/datasets/{dataset_id}").json()
    assert ds["num_classes"] == 11 and ds["ignore_index"] == 11 and ds["class_names"][0] == "sky"
    assert ds["stats"]["images"] == {"train": 8, "val": 8, "test": 8}
    assert ds["path"] == "camvid_tiny"
    assert any(d["id"] == dataset_id for d in api.get("/api/v1/datasets").json()["items"])


@pytest.mark.parametrize("path,status", [("../", 403), ("/etc", 403), ("camvid_tiny/../../..", 403),
                                         ("does_not_exist", 422), ("camvid_tiny/train", 422)])
def test_register_dataset_path_confinement(api, path, status):
    before = len(api.get("/api/v1/datasets", params={"limit": 200}).json()["items"])
    body = _problem(api.post("/api/v1/datasets", json={"name": "x", "path": path}), status)
    assert "path" in _fields(body)
    assert len(api.get("/api/v1/datasets", params={"limit": 200}).json()["items"]) == before


def test_register_dataset_symlink_escape_is_403(api, fake_stack, tmp_path):
    root = fake_stack.env["GAS_DATASETS_ROOT"]
    link = os.path.join(root, f"escape-{uuid.uuid4().hex[:6]}")
    os.symlink(str(tmp_path), link)
    _problem(api.post("/api/v1/datasets", json={"name": "x", "path": os.path.basename(link)}), 403)


def test_register_dataset_bad_class_names_422(api):
    body = _problem(api.post("/api/v1/datasets", json={"name": "x", "path": "camvid_tiny", "num_classes": 3,
                                                       "class_names": ["a", "b"]}), 422)
    assert "class_names" in body["detail"]


@pytest.mark.parametrize("budget,field", [
    ({"latency_ms": -5, "height": 64, "width": 96}, "budget.latency_ms"),
    ({"latency_ms": 0, "height": 64, "width": 96}, "budget.latency_ms"),
    ({"latency_ms": 1e12, "height": 64, "width": 96}, "budget.latency_ms"),
    ({"fps": 0, "height": 64, "width": 96}, "budget.fps"),
    ({"fps": 1e9, "height": 64, "width": 96}, "budget.fps"),
    ({"latency_ms": 10, "height": 0, "width": 96}, "budget.height"),
    ({"latency_ms": 10, "height": 64, "width": 99999}, "budget.width"),
    ({"latency_ms": 10, "height": 64, "width": 96, "precision": "int3"}, "budget.precision"),
    ({"latency_ms": "fast", "height": 64, "width": 96}, "budget.latency_ms"),
    ({"latency_ms": 10, "fps": 30}, "budget"),
    ({"height": 64, "width": 96}, "budget"),
])
def test_impossible_budgets_are_422_naming_the_field(api, dataset_id, budget, field):
    before = _count_jobs(api)
    body = _problem(api.post("/api/v1/jobs/search", json={"dataset_id": dataset_id, "budget": budget}), 422)
    assert field in _fields(body), body
    assert _count_jobs(api) == before


@pytest.mark.parametrize("settings,field", [
    ({"epochs": 0}, "settings.epochs"), ({"nodes": 9}, "settings.nodes"), ({"gamma": -1}, "settings.gamma"),
    ({"lambda": -1}, "settings.lambda"), ({"batch_size": "big"}, "settings.batch_size"),
    ({"warmup_epochs": 5, "epochs": 2}, "settings.warmup_epochs"), ({"unknown_knob": 1}, "settings.unknown_knob"),
    ({"cells": 3, "reduction_cells": [7]}, "settings.network"),
    ({"advanced": {"search": {"w_lr": -1}}}, "settings.advanced.search.w_lr"),
])
def test_invalid_search_settings_are_422(api, dataset_id, settings, field):
    before = _count_jobs(api)
    body = _problem(api.post("/api/v1/jobs/search", json={"dataset_id": dataset_id, "settings": settings,
                                                          "budget": {"latency_ms": 10}}), 422)
    assert any(f.startswith(field) for f in _fields(body)), body
    assert _count_jobs(api) == before


def test_unknown_dataset_and_malformed_json(api):
    body = _problem(api.post("/api/v1/jobs/search", json={"dataset_id": str(uuid.uuid4()), "budget": {"fps": 30}}), 422)
    assert "dataset_id" in _fields(body)
    _problem(api.post("/api/v1/jobs/search", content=b"{not json", headers={"content-type": "application/json"}), 422)
    body = _problem(api.post("/api/v1/jobs/search", json={"budget": {"fps": 30}}), 422)
    assert "dataset_id" in _fields(body)


def test_retrain_and_benchmark_validation(api, dataset_id):
    body = _problem(api.post("/api/v1/jobs/retrain", json={"dataset_id": dataset_id}), 422)
    assert "search_job_id" in body["detail"]
    body = _problem(api.post("/api/v1/jobs/retrain", json={"dataset_id": dataset_id, "search_job_id": "nope"}), 422)
    assert "search_job_id" in _fields(body)
    body = _problem(api.post("/api/v1/jobs/retrain", json={"dataset_id": dataset_id, "genotype": {}}), 422)
    assert "genotype" in _fields(body)
    body = _problem(api.post("/api/v1/jobs/benchmark", json={"job_id": "nope", "height": 64, "width": 96}), 422)
    assert "job_id" in _fields(body)
    body = _problem(api.post("/api/v1/jobs/benchmark", json={"genotype": {"a": 1}, "iters": 1}), 422)
    assert "iters" in _fields(body)


@pytest.mark.parametrize("path", ["/api/v1/jobs/{x}", "/api/v1/jobs/{x}/events", "/api/v1/jobs/{x}/artifacts",
                                  "/api/v1/jobs/{x}/artifacts/genotype.json", "/api/v1/datasets/{x}"])
def test_unknown_ids_are_404(api, path):
    _problem(api.get(path.format(x=uuid.uuid4())), 404)


def test_cancel_unknown_is_404(api):
    _problem(api.post(f"/api/v1/jobs/{uuid.uuid4()}/cancel"), 404)


def test_idempotency_key_returns_the_same_job(api, dataset_id):
    key = f"k-{uuid.uuid4()}"
    req = {"dataset_id": dataset_id, "budget": {"latency_ms": 50, "height": 64, "width": 96},
           "settings": {"epochs": 1, "warmup_epochs": 0, "batch_size": 1}}
    r1 = api.post("/api/v1/jobs/search", json=req, headers={"Idempotency-Key": key})
    assert r1.status_code == 202 and r1.headers["location"] == f"/api/v1/jobs/{r1.json()['id']}"
    before = _count_jobs(api)
    r2 = api.post("/api/v1/jobs/search", json=req, headers={"Idempotency-Key": key})
    assert r2.status_code == 202 and r2.json()["id"] == r1.json()["id"]
    assert r2.headers["location"] == r1.headers["location"] and r2.headers["idempotent-replayed"] == "true"
    other = dict(req, settings={"epochs": 2, "warmup_epochs": 0, "batch_size": 1})
    _problem(api.post("/api/v1/jobs/search", json=other, headers={"Idempotency-Key": key}), 409)
    assert _count_jobs(api) == before


def test_list_jobs_pagination_filters_and_cap(api, dataset_id):
    for _ in range(3):
        assert api.post("/api/v1/jobs/search", json={"dataset_id": dataset_id, "budget": {"latency_ms": 50},
                                                    "settings": {"epochs": 1, "warmup_epochs": 0, "batch_size": 1}}).status_code == 202
    page = api.get("/api/v1/jobs", params={"limit": 2, "kind": "search"}).json()
    assert len(page["items"]) == 2 and page["next_offset"] == 2
    page2 = api.get("/api/v1/jobs", params={"limit": 2, "offset": 2, "kind": "search"}).json()
    assert not {j["id"] for j in page["items"]} & {j["id"] for j in page2["items"]}
    assert api.get("/api/v1/jobs", params={"kind": "retrain"}).json()["items"] == [] or all(
        j["kind"] == "retrain" for j in api.get("/api/v1/jobs", params={"kind": "retrain"}).json()["items"])
    body = _problem(api.get("/api/v1/jobs", params={"limit": 100000}), 422)
    assert "limit" in _fields(body)
    _problem(api.get("/api/v1/jobs", params={"status": "sleeping"}), 422)


def test_openapi_is_served_and_accurate(api):
    spec = api.get("/openapi.json").json()
    paths = spec["paths"]
    for p in ("/api/v1/datasets", "/api/v1/jobs/search", "/api/v1/jobs/retrain", "/api/v1/jobs/benchmark",
              "/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/cancel", "/api/v1/jobs/{job_id}/events",
              "/api/v1/jobs/{job_id}/artifacts", "/api/v1/jobs/{job_id}/artifacts/{name}", "/healthz", "/readyz", "/metrics"):
        assert p in paths, p
    post = paths["/api/v1/jobs/search"]["post"]
    assert "202" in post["responses"] and "422" in post["responses"]
    assert any(prm["name"] == "Idempotency-Key" for prm in post["parameters"])
    assert "BudgetIn" in spec["components"]["schemas"]


def test_health_ready_metrics(api):
    assert api.get("/healthz").json()["status"] == "ok"
    r = api.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "broker": "ok"}
    m = api.get("/metrics")
    assert m.status_code == 200 and "gas_http_requests_total" in m.text and 'gas_jobs{status=' in m.text


def test_readyz_is_503_when_database_and_broker_are_down(fake_stack):
    env = dict(fake_stack.env, GAS_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/nope",
               GAS_BROKER_URL="redis://127.0.0.1:1/0", GAS_READINESS_TIMEOUT_S="1")
    port = free_port()
    p = subprocess.Popen([PY, "-m", "uvicorn", "api.app:create_app", "--factory", "--port", str(port),
                          "--log-level", "warning"], env=env, cwd=str(REPO), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as c:
            def up():
                try:
                    return c.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False
            wait_until(up, 30, "API up")
            body = _problem(c.get("/readyz"), 503)
            assert body["checks"]["database"].startswith("down") and body["checks"]["broker"].startswith("down")
            assert "database" in body["detail"] and "broker" in body["detail"]
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(15)


def test_get_job_fast_path_matches_the_schema_path(api, dataset_id):
    jid = api.post("/api/v1/jobs/search", json={"dataset_id": dataset_id, "budget": {"fps": 20, "height": 64, "width": 96},
                                               "settings": {"epochs": 1, "warmup_epochs": 0, "batch_size": 1}}).json()["id"]
    from_list = next(j for j in api.get("/api/v1/jobs", params={"limit": 200}).json()["items"] if j["id"] == jid)
    one = api.get(f"/api/v1/jobs/{jid}").json()
    volatile = {"status", "progress", "attempts", "updated_at", "started_at", "finished_at", "result"}
    assert {k: v for k, v in one.items() if k not in volatile} == {k: v for k, v in from_list.items() if k not in volatile}
    assert set(one) == set(from_list)
    assert one["budget"] == {"fps": 20.0, "height": 64, "width": 96}
    assert one["created_at"].endswith("Z")


GENOTYPE = {"format": "gas-genotype", "version": 1, "ops": ["none", "skip_connect", "sep_conv_3x3"],
            "network": {"num_cells": 2, "reduction_cells": [1], "nodes": 1, "init_channels": 8, "stem_channels": 8,
                        "head_channels": 16},
            "cells": [{"reduction": False, "nodes": [[{"input": 0, "op": "skip_connect"}, {"input": 1, "op": "sep_conv_3x3"}]]},
                      {"reduction": True, "nodes": [[{"input": 0, "op": "sep_conv_3x3"}, {"input": 1, "op": "skip_connect"}]]}]}


def _bad(mutate) -> dict:
    import copy

    g = copy.deepcopy(GENOTYPE)
    mutate(g)
    return g


@pytest.mark.parametrize("genotype,field", [
    (_bad(lambda g: g["cells"].pop()), "genotype.cells"),
    (_bad(lambda g: g["cells"][0]["nodes"][0][0].update(op="none")), "genotype.cells.0.nodes.0.0.op"),
    (_bad(lambda g: g["cells"][0]["nodes"][0][0].update(op="conv_99x99")), "genotype.cells.0.nodes.0.0.op"),
    (_bad(lambda g: g["cells"][0]["nodes"][0][1].update(input=5)), "genotype.cells.0.nodes.0.1.input"),
    (_bad(lambda g: g["cells"][1].update(reduction=False)), "genotype.cells.1.reduction"),
    (_bad(lambda g: g["network"].update(nodes=0)), "genotype.network.nodes"),
    (_bad(lambda g: g.update(format="onnx")), "genotype.format"),
    (_bad(lambda g: g.update(evil=1)), "genotype.evil"),
])
def test_inline_genotype_is_validated_without_torch(api, dataset_id, genotype, field):
    before = _count_jobs(api)
    body = _problem(api.post("/api/v1/jobs/retrain", json={"dataset_id": dataset_id, "genotype": genotype}), 422)
    assert field in _fields(body), body
    body = _problem(api.post("/api/v1/jobs/benchmark", json={"genotype": genotype, "height": 64, "width": 96}), 422)
    assert field in _fields(body), body
    assert _count_jobs(api) == before


def test_valid_inline_genotype_is_accepted(api, dataset_id):
    r = api.post("/api/v1/jobs/benchmark", json={"genotype": GENOTYPE, "height": 64, "width": 96, "iters": 5})
    assert r.status_code == 202, r.text
    assert api.post(f"/api/v1/jobs/{r.json()['id']}/cancel").status_code in (200, 202)


def test_concurrent_posts_with_one_idempotency_key_create_one_job(fake_stack, dataset_id):
    import threading

    key = f"race-{uuid.uuid4()}"
    req = {"dataset_id": dataset_id, "budget": {"latency_ms": 50, "height": 64, "width": 96},
           "settings": {"epochs": 1, "warmup_epochs": 0, "batch_size": 1}}
    ids, codes, barrier = [], [], threading.Barrier(8)

    def post():
        with fake_stack.client() as c:
            barrier.wait()
            r = c.post("/api/v1/jobs/search", json=req, headers={"Idempotency-Key": key})
            codes.append(r.status_code)
            ids.append(r.json().get("id"))
    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [202] * 8 and len(set(ids)) == 1


def _make_folder_dataset(root, name: str, masks_missing: int = 0):
    import shutil
    from pathlib import Path

    src = Path(root) / "camvid_tiny"
    dst = Path(root) / name
    for split in ("train", "val"):
        (dst / split / "images").mkdir(parents=True)
        (dst / split / "masks").mkdir(parents=True)
        for i, img in enumerate(sorted((src / split).iterdir())[:4]):
            shutil.copy(img, dst / split / "images" / img.name)
            if not (split == "train" and i < masks_missing):
                shutil.copy(src / f"{split}annot" / (img.stem + ".png"), dst / split / "masks" / (img.stem + ".png"))
    return dst


def test_register_folder_layout_detected_and_checked(api, fake_stack):
    root = fake_stack.env["GAS_DATASETS_ROOT"]
    name = f"folder-{uuid.uuid4().hex[:6]}"
    _make_folder_dataset(root, name)
    body = _problem(api.post("/api/v1/datasets", json={"name": "f", "path": name}), 422)  # folder has no class count
    assert "num_classes" in _fields(body)
    r = api.post("/api/v1/datasets", json={"name": "f", "path": name, "num_classes": 11})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["layout"] == "folder" and ds["stats"]["images"] == {"train": 4, "val": 4} and ds["ignore_index"] == 11
    assert r.headers["location"] == f"/api/v1/datasets/{ds['id']}"
    # wrong layout named explicitly
    body = _problem(api.post("/api/v1/datasets", json={"name": "f", "path": name, "layout": "camvid"}), 422)
    assert "path" in _fields(body)


def test_dataset_with_missing_masks_is_invalid_without_server_paths(api, fake_stack):
    root = fake_stack.env["GAS_DATASETS_ROOT"]
    name = f"holes-{uuid.uuid4().hex[:6]}"
    _make_folder_dataset(root, name, masks_missing=1)
    r = api.post("/api/v1/datasets", json={"name": "h", "path": name, "num_classes": 11})
    assert r.status_code == 201 and r.json()["status"] == "validating", r.text
    ds = wait_dataset(api, r.json()["id"], want="invalid")
    assert ds["report"]["bad_counts"] == {"missing_mask": 1}
    bad = ds["report"]["bad_files"]["missing_mask"][0]
    # the file named is where the mask was expected (relative to the dataset), so the user knows what to add
    assert bad["file"].startswith("train/masks/") and bad["file"].endswith(".png"), bad
    assert root not in json.dumps(ds)


@pytest.mark.parametrize("damage,kind", [("values", "mask_values"), ("size", "size_mismatch"), ("decode", "image_decode")])
def test_dataset_with_bad_files_is_invalid_naming_them_and_refuses_jobs(api, fake_stack, damage, kind):
    import numpy as np
    from PIL import Image

    root = fake_stack.env["GAS_DATASETS_ROOT"]
    name = f"bad-{damage}-{uuid.uuid4().hex[:6]}"
    dst = _make_folder_dataset(root, name)
    img = sorted((dst / "train" / "images").iterdir())[1]
    mask = dst / "train" / "masks" / (img.stem + ".png")
    if damage == "values":
        m = np.array(Image.open(mask))
        m[0, :10] = 200
        Image.fromarray(m).save(mask)
    elif damage == "size":
        Image.open(mask).resize((32, 24), Image.NEAREST).save(mask)
    else:
        img.write_bytes(b"not an image at all")
    r = api.post("/api/v1/datasets", json={"name": "b", "path": name, "num_classes": 11})
    assert r.status_code == 201, r.text
    ds = wait_dataset(api, r.json()["id"], want="invalid")
    rep = ds["report"]
    assert rep["bad_counts"] == {kind: 1}, rep
    assert rep["bad_files"][kind][0]["file"].startswith("train/"), rep
    assert rep["splits"]["train"]["valid"] == 3 and rep["splits"]["val"]["valid"] == 4
    assert root not in json.dumps(ds)
    body = _problem(api.post("/api/v1/jobs/search", json=fake_search_body(ds["id"])), 409)
    assert body["dataset_status"] == "invalid" and "validation" in body["detail"]
