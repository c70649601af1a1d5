"""The whole story with the REAL core over real HTTP, PostgreSQL, Redis and a Celery worker
subprocess: register -> search -> genotype -> retrain -> checkpoint download -> report (SDK and
CLI), a benchmark, and a worker SIGKILLed mid-search finishing on its next attempt from the
checkpoint."""
from __future__ import annotations

import copy
import hashlib
import io
import json
import re
import signal
import subprocess

import pytest
from sqlalchemy import select

from client import GasClient
from core.timing import cpu_model_name
from storage.models import FpsReport, Genotype, LatencyTable
from svc_helpers import PY, REPO, TINY_BUDGET, TINY_SEARCH, db_session, ui_client, wait_until

pytestmark = pytest.mark.services
RETRAIN = {"epochs": 1, "batch_size": 2, "dataset_limit": 8, "advanced": {"fps_iters": 5}}


def cli(stack, *args) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "client.cli", "--url", stack.url, "--json", *args], cwd=str(REPO), capture_output=True,
                          text=True, timeout=300, env=stack.env)


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_whole_story_register_search_retrain_download(real_stack, tmp_path):
    stack = real_stack
    out = cli(stack, "datasets", "register", "tiny", "camvid_tiny")
    assert out.returncode == 0, out.stderr
    ds = json.loads(out.stdout)["id"]
    with GasClient(stack.url, api_key=stack.api_key) as c:
        job = c.submit_search(ds, settings=TINY_SEARCH, **TINY_BUDGET)
        assert job["status"] == "queued" and job["budget"]["latency_ms"] == TINY_BUDGET["latency_ms"]
        bar = io.StringIO()
        done = c.watch(job["id"], poll=0.5, file=bar, timeout=240)
        assert done["status"] == "succeeded", (done, stack.log_tail("worker"))
        # the bar followed the job; it samples every 0.5 s, so a tiny search's few epochs can fall between two
        # polls (more so since the measurement phases grew): the epochs are checked in the job's events
        assert "running" in bar.getvalue() and "succeeded" in bar.getvalue()
        assert any((e.get("data") or {}).get("epoch") for e in c.iter_events(job["id"]) if e["type"] == "progress")
        r = done["result"]
        assert r["latency_ms"] > 0 and r["fps"] > 0 and r["budget_ms"] == TINY_BUDGET["latency_ms"]
        assert isinstance(r["budget_met"], bool) and r["expected_latency_ms"] > 0 and r["device"] == cpu_model_name()
        kinds = [e["type"] for e in c.iter_events(job["id"])]
        assert kinds[0] == "queued" and kinds[-1] == "succeeded" and "progress" in kinds
        names = {a["name"] for a in c.artifacts(job["id"])}
        assert {"genotype.json", "report.json"} <= names
        gpath = c.download(job["id"], "genotype.json", tmp_path)
        genotype = json.loads(gpath.read_text())
        assert genotype["provenance"]["search_job"] == job["id"]  # the genotype names the search that found it
        report = json.loads(c.download(job["id"], "report.json", tmp_path).read_text())
        assert report["kind"] == "search" and report["budget_ms"] == TINY_BUDGET["latency_ms"]
        # one device string: the summary, the report, its latency table and its FPS report name the same device
        assert r["device"] == report["device"] == report["lut"]["context"]["device"] == report["fps"]["device"]

        # the prepared data (decoded, resized uint8) is cached once per dataset and resolution ...
        cache = stack.base / "data" / "cache"
        prepared = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.safetensors")}
        assert [n for n in prepared if n.startswith("train_64x96_")], prepared

        rt = c.submit_retrain(ds, search_job_id=job["id"], settings=RETRAIN)
        assert rt["parent_job_id"] == job["id"]
        rdone = c.wait(rt["id"], timeout=240, poll=0.5)
        assert rdone["status"] == "succeeded", (rdone, stack.log_tail("worker"))
        assert 0.0 <= rdone["result"]["miou"] <= 1.0 and rdone["result"]["fps"] > 0
        # the same architecture keeps one id: the search's genotype and its retrain's are one row
        assert rdone["result"]["genotype_id"] == r["genotype_id"] is not None
        # the retrain's dashboard page: curves per epoch, the confusion matrix and the sample predictions,
        # each sample an image/png artifact the page can show
        with ui_client(stack) as ui:
            page = ui.get(f"/ui/jobs/{rt['id']}")
            assert page.status_code == 200
            assert 'class="curves" data-curves=' in page.text and '"miou"' in page.text
            assert page.text.count('class="cm-cell"') == 11 * 11
            srcs = re.findall(r'<img class="sample" src="([^"]+)"', page.text)
            assert srcs and all(src.startswith(f"/ui/jobs/{rt['id']}/artifacts/sample_") for src in srcs)
            img = ui.get(srcs[0])
            assert img.status_code == 200 and img.headers["content-type"] == "image/png"
            assert img.content[:8] == b"\x89PNG\r\n\x1a\n"
        # ... and the retrain at the same resolution reused it instead of decoding the JPEGs again
        after = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.safetensors")}
        assert all(after[n] == m for n, m in prepared.items()), (prepared, after)
        assert any(n.startswith("val_64x96_") for n in set(after) - set(prepared))
        arts = {a["name"]: a for a in c.artifacts(rt["id"])}
        assert "checkpoint.safetensors" in arts and "report.json" in arts
        ck = arts["checkpoint.safetensors"]

        # CLI download, then a resumed (Range) SDK download of the same checkpoint
        out = cli(stack, "download", rt["id"], "checkpoint.safetensors", "-o", str(tmp_path / "cli.safetensors"))
        assert out.returncode == 0, out.stderr
        assert sha(tmp_path / "cli.safetensors") == ck["sha256"]
        dest = tmp_path / "resumed.safetensors"
        half = (tmp_path / "cli.safetensors").read_bytes()[: ck["size"] // 2]
        (tmp_path / "resumed.safetensors.part").write_bytes(half)
        c.download(rt["id"], "checkpoint.safetensors", dest)
        assert sha(dest) == ck["sha256"] and dest.stat().st_size == ck["size"]
        from safetensors import safe_open  # weights only, loadable

        with safe_open(str(dest), "np") as f:
            assert len(list(f.keys())) > 0
        rreport = json.loads(c.download(rt["id"], "report.json", tmp_path / "rreport.json").read_text())
        assert rreport["kind"] == "retrain" and rreport["genotype_hash"] == report["genotype_hash"]
        assert rreport["train"]["device"] == rreport["fps"]["device"] == r["device"]

        # inline genotype retrain is accepted too; benchmark of the search job
        inline = c.submit_retrain(ds, genotype=genotype, settings=RETRAIN)
        assert inline["status"] == "queued" and c.cancel(inline["id"])["status"] in ("cancelled", "cancelling")
        bm = c.submit_benchmark(job_id=job["id"], height=64, width=96, iters=5, budget_ms=50)
        bdone = c.wait(bm["id"], timeout=120, poll=0.5)
        assert bdone["status"] == "succeeded" and bdone["result"]["fps"] > 0
        listed = c.jobs(kind="retrain")["items"]
        assert {rt["id"], inline["id"]} <= {j["id"] for j in listed}

    with db_session(stack) as s:
        luts = s.scalars(select(LatencyTable)).all()
        assert luts and luts[0].device == cpu_model_name() and (luts[0].height, luts[0].width) == (64, 96)
        assert luts[0].entries and luts[0].entries > 0
        assert s.scalar(select(Genotype).where(Genotype.job_id == job["id"])).document == genotype
        rep = s.scalar(select(FpsReport).where(FpsReport.job_id == job["id"]))
        assert rep.latency_ms == pytest.approx(r["latency_ms"]) and rep.budget_ms == TINY_BUDGET["latency_ms"]


def test_worker_sigkilled_mid_search_finishes_from_checkpoint(real_stack):
    stack = real_stack
    with GasClient(stack.url, api_key=stack.api_key) as c:
        ds = c.register_dataset("tiny-kill", "camvid_tiny")["id"]
        settings = copy.deepcopy(TINY_SEARCH)
        settings.update(epochs=4, warmup_epochs=1)
        job = c.submit_search(ds, settings=settings, **TINY_BUDGET)

        def past_first_epoch():
            evs = list(c.iter_events(job["id"]))
            return any("epoch 1/4 done" in e["message"] for e in evs) or c.job(job["id"])["status"] != "running"
        wait_until(past_first_epoch, 240, "first epoch checkpoint", lambda: c.job(job["id"]))
        assert c.job(job["id"])["status"] == "running"
        stack.stop_worker(signal.SIGKILL)
        reclaimed = stack.wait_status(job["id"], "queued", 30)
        assert reclaimed["attempts"] == 1
        stack.start_worker()
        done = c.wait(job["id"], timeout=240, poll=0.5)
        assert done["status"] == "succeeded", (done, stack.log_tail("worker"))
        assert done["attempts"] == 2
        report = c.http.get(f"/api/v1/jobs/{job['id']}/artifacts/report.json").json()
        assert report["resumed_from_epoch"] is not None and report["resumed_from_epoch"] >= 1
        types = [e["type"] for e in c.iter_events(job["id"])]
        assert "reclaimed" in types and types.count("claimed") == 2
