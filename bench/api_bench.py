"""API benchmark (not a test): latency percentiles and throughput of ``GET /api/v1/jobs/{id}`` at N
concurrent keep-alive clients, with the trivial ``GET /healthz`` measured in the same run.

It starts its own API (uvicorn subprocess, httptools + uvloop, access log off) on a throwaway
database (SQLite by default, or ``--pg`` for a throwaway PostgreSQL database), migrates it, inserts
a realistic job row, then drives it with a minimal asyncio HTTP/1.1 client (so the load generator
costs little CPU next to the server). Writes ``--out`` JSON and a markdown table.

    python bench/api_bench.py --pg --clients 50 --seconds 10 --workers 1 --out bench/results/api_bench
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def seed_job(db_url: str) -> str:
    from storage.db import get_sessionmaker
    from storage.migrate import upgrade
    from storage.models import Job, JobEvent, utcnow

    upgrade(db_url)
    with get_sessionmaker(db_url)() as s:
        job = Job(kind="search", status="running", spec={"latency": {"budget_ms": 20.0, "height": 360, "width": 480}},
                  request={"budget": {"latency_ms": 20.0, "height": 360, "width": 480}}, attempts=1, max_attempts=3,
                  worker_id="bench:1", heartbeat_at=utcnow(), started_at=utcnow(),
                  progress={"phase": "search", "epoch": 7, "epochs": 20, "step": 120, "steps": 184,
                            "metrics": {"w_loss": 0.734, "a_loss": 1.21, "supernet_miou": 0.412},
                            "expected_latency_ms": 18.7, "attempt": 1})
        s.add(job)
        s.flush()
        s.add(JobEvent(job_id=job.id, type="claimed", message="bench"))
        from storage.auth import create_key, create_tenant

        create_tenant(s, "default", exist_ok=True)  # every API route but the probes needs a key
        AUTH["key"] = create_key(s, "default", "bench").key
        s.commit()
        return job.id


AUTH: dict[str, str] = {}


def _auth_line(path: str) -> str:
    return f"Authorization: Bearer {AUTH['key']}\r\n" if path.startswith("/api/") and AUTH else ""


async def _roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> int:
    """Send one keep-alive GET and read its whole answer; returns the status code."""
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return int(head[9:12])


async def _client(host: str, port: int, path: str, stop_at: float, lat: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n{_auth_line(path)}\r\n".encode()
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            status = await _roundtrip(reader, writer, req)
            lat.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(str(status))
    finally:
        writer.close()


async def _client_rate(host: str, port: int, path: str, start: float, stop_at: float, period: float,
                       lat: list[float], errors: list[str]) -> None:
    """Open-loop client: sends at fixed times; latency counts from the scheduled time (no coordinated omission)."""
    reader, writer = await asyncio.open_connection(host, port)
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n{_auth_line(path)}\r\n".encode()
    t_next = start
    try:
        while t_next < stop_at:
            delay = t_next - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            status = await _roundtrip(reader, writer, req)
            lat.append(time.perf_counter() - t_next)
            if status != 200:
                errors.append(str(status))
            t_next += period
    finally:
        writer.close()


async def _run_rate(host: str, port: int, path: str, clients: int, seconds: float, rate: float) -> dict:
    lat: list[float] = []
    errors: list[str] = []
    period = clients / rate
    t0 = time.perf_counter() + 0.2
    stop = t0 + seconds
    await asyncio.gather(*[_client_rate(host, port, path, t0 + i * period / clients, stop, period, lat, errors)
                           for i in range(clients)])
    wall = time.perf_counter() - t0
    lat.sort()
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return {"path": path, "mode": f"open loop, {rate:g} req/s offered", "clients": clients, "seconds": round(wall, 2),
            "requests": len(lat), "errors": len(errors), "rps": round(len(lat) / wall, 1),
            "p50_ms": round(q[49] * 1000, 2), "p90_ms": round(q[89] * 1000, 2), "p99_ms": round(q[98] * 1000, 2),
            "max_ms": round(lat[-1] * 1000, 2)}


async def _run(host: str, port: int, path: str, clients: int, seconds: float) -> dict:
    lat: list[float] = []
    errors: list[str] = []
    # warm-up
    warm_stop = time.perf_counter() + min(2.0, seconds / 4)
    await asyncio.gather(*[_client(host, port, path, warm_stop, [], []) for _ in range(clients)])
    t0 = time.perf_counter()
    stop = t0 + seconds
    await asyncio.gather(*[_client(host, port, path, stop, lat, errors) for _ in range(clients)])
    wall = time.perf_counter() - t0
    lat.sort()
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return {"path": path, "mode": "closed loop (saturation)", "clients": clients, "seconds": round(wall, 2),
            "requests": len(lat), "errors": len(errors),
            "rps": round(len(lat) / wall, 1), "p50_ms": round(q[49] * 1000, 2), "p90_ms": round(q[89] * 1000, 2),
            "p99_ms": round(q[98] * 1000, 2), "max_ms": round(lat[-1] * 1000, 2)}


def _arun(coro):
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--rate", type=float, default=800.0, help="offered load of the open-loop phase (req/s)")
    ap.add_argument("--pg", action="store_true", help="use a throwaway database on the local PostgreSQL")
    ap.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "api_bench"), help="output path without suffix")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gas-bench-"))
    pg_name = None
    if args.pg:
        import psycopg

        pg_name = f"gas_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.pg_admin, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{pg_name}"')
        db_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg_name}"
    else:
        db_url = f"sqlite:///{tmp / 'bench.db'}"
    job_id = seed_job(db_url)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAS_")}
    env.update(GAS_DATA_DIR=str(tmp), GAS_DATABASE_URL=db_url, GAS_LOG_LEVEL="warning", PYTHONPATH=str(REPO))
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", str(args.workers), "--no-access-log", "--log-level",
                               "warning", "--loop", "uvloop", "--http", "httptools"], env=env, cwd=str(REPO))
    try:
        import httpx

        deadline = time.time() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {AUTH['key']}"}).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                raise SystemExit("API did not start")
            time.sleep(0.2)
        results = {}
        for name, path in (("healthz", "/healthz"), ("get_job", f"/api/v1/jobs/{job_id}")):
            results[name] = _arun(_run("127.0.0.1", port, path, args.clients, args.seconds))
            results[name + "@rate"] = _arun(_run_rate("127.0.0.1", port, path, args.clients, args.seconds,
                                                            args.rate))
    finally:
        server.terminate()
        server.wait(15)
        if pg_name:
            import psycopg

            with psycopg.connect(args.pg_admin, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')

    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
               "os": platform.platform(), "database": "postgresql" if args.pg else "sqlite",
               "api_workers": args.workers, "note": "load generator on the same machine"}
    doc = {"device": f"{machine['cpu']}, {machine['cores']} cores (CPU)", "machine": machine, "targets": {"p99_ms": 25.0, "rps": 800.0}, "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2))
    rows = ["| endpoint | load | clients | requests | errors | req/s | p50 ms | p90 ms | p99 ms | max ms |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        ep = "GET /healthz" if name.startswith("healthz") else "GET /api/v1/jobs/{id}"
        rows.append(f"| {ep} | {r['mode']} | {r['clients']} | {r['requests']} | {r['errors']} | {r['rps']} | "
                    f"{r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['max_ms']} |")
    md = (f"Machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
          f"{machine['database']} database, {args.workers} uvicorn worker(s), load generator on the same machine.\n\n"
          + "\n".join(rows) + "\n")
    out.with_suffix(".md").write_text(md)
    print(md)
    sat, at_rate = results["get_job"], results["get_job@rate"]
    ok = sat["rps"] >= 800.0 and at_rate["p99_ms"] < 25.0 and at_rate["rps"] >= 0.97 * args.rate
    doc["target_met"] = ok
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2))
    print(f"GET job target (>= 800 req/s at saturation; p99 < 25 ms at {args.rate:g} req/s offered): "
          f"{'MET' if ok else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
