"""Dashboard benchmark (not a test): server time of a search job page with a long history.

Builds a throwaway SQLite service (migrated), a tenant, and two search jobs of the default network
(10 cells, 4 nodes: 14 edges, 8 ops) with ``--epochs`` epochs of history, α' included:
  * ``finished``: the history in its report.json artifact (the page reads and caches it);
  * ``running``: the history in its epoch-end progress events (what the page reads while a job runs).
Then times ``GET /ui/jobs/{id}`` in process (Starlette TestClient: no network), cold (first request:
report read and parsed) and warm, and ``GET /ui/jobs/{id}/heatmap?epoch=N``.

    python bench/dashboard_render.py --epochs 200 --repeats 30 --out bench/results/dashboard_render
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

OPS = ["none", "skip_connect", "max_pool_3x3", "conv_3x3", "sep_conv_3x3", "dil_conv_3x3", "dil_sep_conv_3x3_r2",
       "dil_sep_conv_3x3_r4"]
CELLS, NODES, REDUCTION = 10, 4, [3, 7]


def alphas(rng: random.Random) -> list:
    out = []
    for _ in range(CELLS):
        cell = []
        for _ in range(sum(2 + i for i in range(NODES))):
            raw = [rng.random() ** 3 for _ in OPS]
            s = sum(raw)
            cell.append([round(v / s, 4) for v in raw])
        out.append(cell)
    return out


def history(epochs: int) -> list[dict]:
    rng = random.Random(0)
    return [{"epoch": e, "phase": "warmup" if e <= 10 else "search", "supernet_miou": round(0.1 + 0.5 * e / epochs, 4),
             "expected_latency_ms": 30 - 10 * e / epochs, "mean": {"w_loss": 2 - e / epochs, "a_ce": 2.1 - e / epochs,
                                                                  "latency_penalty": 0.05, "a_loss": 2.2 - e / epochs},
             "alphas": alphas(rng)} for e in range(1, epochs + 1)]


def genotype() -> dict:
    cells = [{"reduction": k in REDUCTION, "nodes": [[{"input": 0, "op": "sep_conv_3x3"}, {"input": 1 + i, "op": "skip_connect"}]
                                                     for i in range(NODES)]} for k in range(CELLS)]
    return {"format": "gas-genotype", "version": 1, "ops": OPS, "cells": cells,
            "network": {"num_cells": CELLS, "nodes": NODES, "reduction_cells": REDUCTION}}


def setup(base: Path, epochs: int) -> tuple[str, str, str]:
    env = {**os.environ, "GAS_DATA_DIR": str(base), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "storage.migrate", "upgrade", "head"], env=env, cwd=REPO, check=True,
                   capture_output=True)
    key = subprocess.run([sys.executable, "-m", "api.admin", "keys", "create", "bench", "--create-tenant"], env=env,
                         cwd=REPO, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    os.environ["GAS_DATA_DIR"] = str(base)
    from storage.artifacts import artifact_key, get_store
    from storage.db import get_sessionmaker
    from storage.models import Artifact, Dataset, Job, JobEvent
    from storage.settings import ServiceSettings

    settings = ServiceSettings()
    store = get_store(settings.artifacts_path)
    hist = history(epochs)
    spec = {"network": {"num_cells": CELLS, "nodes": NODES, "reduction_cells": REDUCTION},
            "latency": {"budget_ms": 25.0, "height": 360, "width": 480}}
    with get_sessionmaker(settings.db_url)() as s:
        ds = Dataset(tenant_id="bench", name="camvid", layout="camvid", root="/x", num_classes=11, ignore_index=255, stats={})
        s.add(ds)
        s.flush()
        done = Job(tenant_id="bench", kind="search", status="succeeded", spec=spec, dataset_id=ds.id,
                   request={"budget": {"latency_ms": 25.0, "height": 360, "width": 480}},
                   progress={"phase": "done", "epoch": epochs, "epochs": epochs, "message": "succeeded"},
                   result={"summary": {"miou": 0.6, "latency_ms": 22.0, "budget_ms": 25.0, "budget_met": True}})
        running = Job(tenant_id="bench", kind="search", status="running", spec=spec, dataset_id=ds.id,
                      request={"budget": {"latency_ms": 25.0, "height": 360, "width": 480}},
                      progress={"phase": "search", "epoch": epochs, "epochs": epochs + 10, "step": 3, "steps": 50})
        s.add_all([done, running])
        s.flush()
        report = {"kind": "search", "history": hist, "budget_ms": 25.0, "expected_latency_ms": 20.0,
                  "predicted_latency_ms": 21.0, "measured_latency_ms": 22.0, "budget_met": True,
                  "repair": {"repaired": False, "measurements": []}}
        tmp = base / "tmp"
        tmp.mkdir(exist_ok=True)
        for name, doc in (("report.json", report), ("genotype.json", genotype())):
            p = tmp / name
            p.write_text(json.dumps(doc))
            k = artifact_key("bench", done.id, name)
            size, sha = store.put_file(k, p)
            s.add(Artifact(job_id=done.id, tenant_id="bench", name=name, key=k, size=size, sha256=sha,
                           content_type="application/json"))
        for h in hist:
            s.add(JobEvent(job_id=running.id, tenant_id="bench", type="progress", message=f"epoch {h['epoch']} done",
                           data={"phase": h["phase"], "epoch": h["epoch"], "epochs": epochs + 10,
                                 "metrics": {"supernet_miou": h["supernet_miou"], **h["mean"]},
                                 "expected_latency_ms": h["expected_latency_ms"], "alphas": h["alphas"], "ops": OPS}))
        s.commit()
        return key, done.id, running.id, len(json.dumps(report))


def timed(client, url: str, n: int) -> dict:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(url)
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, (url, r.status_code, r.text[:300])
    times.sort()
    return {"median_ms": round(statistics.median(times), 2), "p90_ms": round(times[int(0.9 * (len(times) - 1))], 2),
            "min_ms": round(times[0], 2), "n": n, "bytes": len(r.content)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="gas-dash-bench-"))
    key, done, running, report_bytes = setup(base, a.epochs)
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app()) as c:
        page = c.get("/ui/signin")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        assert c.post("/ui/signin", data={"api_key": key, "csrf": token}, follow_redirects=False).status_code == 303
        rows = {"finished page, cold (report read + parsed)": timed(c, f"/ui/jobs/{done}", 1),
                "finished page, warm": timed(c, f"/ui/jobs/{done}", a.repeats),
                "finished heatmap of one epoch": timed(c, f"/ui/jobs/{done}/heatmap?epoch={a.epochs // 2}", a.repeats),
                "running page (history from events)": timed(c, f"/ui/jobs/{running}", a.repeats),
                "running page, ?live=poll progress fragment": timed(c, f"/ui/jobs/{running}/progress", a.repeats),
                "jobs list": timed(c, "/ui/jobs", a.repeats)}
    res = {"epochs": a.epochs, "cells": CELLS, "edges": sum(2 + i for i in range(NODES)), "ops": len(OPS),
           "device": f"CPU ({platform.machine()}, {os.cpu_count()} cpus), in-process rendering", "report_bytes": report_bytes, "python": platform.python_version(), "machine": platform.machine(),
           "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "rows": rows}
    md = [f"{a.epochs} epochs × {CELLS} cells × {res['edges']} edges × {len(OPS)} ops of α' "
          f"(report.json {report_bytes / 1e6:.1f} MB); in-process TestClient, SQLite; load average {res['load_avg_1m']:.1f} "
          f"on {res['cpus']} CPUs", "", "| request | median ms | p90 ms | min ms | n | HTML bytes |", "|---|---|---|---|---|---|"]
    md += [f"| {k} | {v['median_ms']} | {v['p90_ms']} | {v['min_ms']} | {v['n']} | {v['bytes']:,} |" for k, v in rows.items()]
    print("\n".join(md))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out + ".json").write_text(json.dumps(res, indent=1))
        Path(a.out + ".md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
