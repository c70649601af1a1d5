"""Python SDK over httpx for the GAS service HTTP API (/api/v1)."""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

TERMINAL = {"succeeded", "failed", "cancelled"}
UPLOAD_CHUNK = 1 << 20  # bytes per read while streaming an upload


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class GasError(Exception):
    """An error answer of the service; ``problem`` is its problem+json body."""

    def __init__(self, status: int, problem: dict):
        self.status, self.problem = status, problem
        super().__init__(f"HTTP {status}: {problem.get('detail') or problem.get('title') or problem}")


class GasClient:
    def __init__(self, base_url: str | None = None, *, api_key: str | None = None, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None):
        """``api_key`` defaults to ``$GAS_API_KEY`` (sent as ``Authorization: Bearer``)."""
        self.base_url = (base_url or os.environ.get("GAS_URL") or "http://127.0.0.1:8000").rstrip("/")
        key = api_key or os.environ.get("GAS_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport, headers=headers)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "GasClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------------------------- plumbing
    def _req(self, method: str, path: str, **kw) -> httpx.Response:
        r = self.http.request(method, path, **kw)
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"detail": r.text[:500]}
            raise GasError(r.status_code, body)
        return r

    def _post_job(self, kind: str, body: dict, idempotency_key: str | None) -> dict:
        key = idempotency_key or str(uuid.uuid4())  # retries of this call are safe
        return self._req("POST", f"/api/v1/jobs/{kind}", json=body, headers={"Idempotency-Key": key}).json()

    # -------------------------------------------------------------------------------- datasets
    def register_dataset(self, name: str, path: str, layout: str | None = None, num_classes: int | None = None,
                         class_names: list[str] | None = None, ignore_index: int | None = None, *,
                         label_map: dict | str | None = None, wait: bool = True, timeout: float = 3600.0) -> dict:
        """Register a directory under the server's datasets root (layout detected when not given).
        ``label_map``: how raw mask values become class ids, a dict (``{"values": {"0": 0, "255": 1}}``)
        or the compact text ``"0=0,255=1"`` (docs/SERVICE.md). With ``wait`` it returns once validation
        has ended (status ``ready`` or ``invalid``)."""
        body = {"name": name, "path": path}
        for k, v in (("layout", layout), ("num_classes", num_classes), ("class_names", class_names),
                     ("ignore_index", ignore_index), ("label_map", label_map)):
            if v is not None:
                body[k] = v
        ds = self._req("POST", "/api/v1/datasets", json=body).json()
        return self.wait_dataset(ds["id"], timeout=timeout) if wait else ds

    def upload_dataset(self, archive: str | Path, name: str, layout: str | None = None,
                       num_classes: int | None = None, class_names: list[str] | None = None,
                       ignore_index: int | None = None, *, label_map: dict | str | None = None, wait: bool = True,
                       timeout: float = 3600.0) -> dict:
        """Upload a zip/tar/tar.gz archive (streamed from disk). The same archive with the same parameters is
        the same dataset; with other parameters, a new dataset over the same stored files. ``label_map`` as in
        :meth:`register_dataset`."""
        params: dict[str, Any] = {"name": name}
        if isinstance(label_map, dict):
            label_map = json.dumps(label_map, separators=(",", ":"))
        for k, v in (("layout", layout), ("num_classes", num_classes), ("class_names", class_names),
                     ("ignore_index", ignore_index), ("label_map", label_map)):
            if v is not None:
                params[k] = v

        def chunks() -> Iterator[bytes]:
            with open(archive, "rb") as f:
                while block := f.read(UPLOAD_CHUNK):
                    yield block

        ds = self._req("POST", "/api/v1/datasets/uploads", params=params, content=chunks(),
                       headers={"Content-Type": "application/octet-stream",
                                "Content-Length": str(Path(archive).stat().st_size)}).json()
        return self.wait_dataset(ds["id"], timeout=timeout) if wait else ds

    def dataset(self, dataset_id: str) -> dict:
        return self._req("GET", f"/api/v1/datasets/{dataset_id}").json()

    def wait_dataset(self, dataset_id: str, *, timeout: float = 3600.0, poll: float = 0.5) -> dict:
        """Poll until the dataset's validation has ended; returns it (``ready`` or ``invalid``)."""
        deadline = time.monotonic() + timeout
        while True:
            ds = self.dataset(dataset_id)
            if ds["status"] != "validating":
                return ds
            if time.monotonic() > deadline:
                raise TimeoutError(f"dataset {dataset_id} still validating after {timeout}s")
            time.sleep(poll)

    def delete_dataset(self, dataset_id: str) -> None:
        self._req("DELETE", f"/api/v1/datasets/{dataset_id}")

    def datasets(self, limit: int | None = None, offset: int = 0) -> dict:
        params = {"offset": offset} | ({"limit": limit} if limit else {})
        return self._req("GET", "/api/v1/datasets", params=params).json()

    # ------------------------------------------------------------------------------------ jobs
    def submit_search(self, dataset_id: str, *, latency_ms: float | None = None, fps: float | None = None,
                      height: int = 360, width: int = 480, precision: str = "fp32", settings: dict | None = None,
                      idempotency_key: str | None = None, runtime: str = "torch-eager") -> dict:
        budget: dict[str, Any] = {"height": height, "width": width, "precision": precision, "runtime": runtime}
        budget.update({"latency_ms": latency_ms} if latency_ms is not None else {"fps": fps})
        return self._post_job("search", {"dataset_id": dataset_id, "budget": budget, "settings": settings or {}},
                              idempotency_key)

    def submit_retrain(self, dataset_id: str, *, search_job_id: str | None = None, genotype: dict | None = None,
                       settings: dict | None = None, idempotency_key: str | None = None) -> dict:
        body: dict[str, Any] = {"dataset_id": dataset_id, "settings": settings or {}}
        body.update({"search_job_id": search_job_id} if search_job_id else {"genotype": genotype})
        return self._post_job("retrain", body, idempotency_key)

    def submit_benchmark(self, *, job_id: str | None = None, genotype: dict | None = None, height: int = 360,
                         width: int = 480, iters: int = 100, budget_ms: float | None = None,
                         idempotency_key: str | None = None) -> dict:
        body: dict[str, Any] = {"height": height, "width": width, "iters": iters}
        body.update({"job_id": job_id} if job_id else {"genotype": genotype})
        if budget_ms is not None:
            body["budget_ms"] = budget_ms
        return self._post_job("benchmark", body, idempotency_key)

    def submit_feasibility(self, *, height: int = 360, width: int = 480, precision: str = "fp32",
                           dataset_id: str | None = None, num_classes: int | None = None,
                           settings: dict | None = None, idempotency_key: str | None = None,
                           runtime: str = "torch-eager") -> dict:
        """Ask what budgets are feasible for a search space (the search's cells/nodes/init_channels/advanced
        network settings) at a resolution: a feasibility job (see :meth:`feasibility`)."""
        body: dict[str, Any] = {"height": height, "width": width, "precision": precision, "runtime": runtime,
                                "settings": settings or {}}
        if dataset_id is not None:
            body["dataset_id"] = dataset_id
        if num_classes is not None:
            body["num_classes"] = num_classes
        return self._post_job("feasibility", body, idempotency_key)

    def feasibility(self, *, timeout: float = 3600.0, poll: float = 0.5, **kw) -> dict:
        """Submit a feasibility job and wait for it: the result's ``feasibility`` section (latency of the
        cheapest, a typical and the dearest network, the table used, advice). Raises GasError-like
        RuntimeError when the job does not succeed."""
        job = self.wait(self.submit_feasibility(**kw)["id"], timeout=timeout, poll=poll)
        if job["status"] != "succeeded":
            raise RuntimeError(f"feasibility job {job['id']} {job['status']}: {job.get('error')}")
        return {"job_id": job["id"], **((job.get("result") or {}).get("feasibility") or {})}

    # -------------------------------------------------------------------------- latency tables
    def latency_tables(self, limit: int | None = None, offset: int = 0, height: int | None = None,
                       width: int | None = None) -> dict:
        params: dict[str, Any] = {"offset": offset}
        for k, v in (("limit", limit), ("height", height), ("width", width)):
            if v is not None:
                params[k] = v
        return self._req("GET", "/api/v1/latency-tables", params=params).json()

    def latency_table(self, table_id: str) -> dict:
        return self._req("GET", f"/api/v1/latency-tables/{table_id}").json()

    def delete_latency_table(self, table_id: str) -> None:
        self._req("DELETE", f"/api/v1/latency-tables/{table_id}")

    def job(self, job_id: str) -> dict:
        return self._req("GET", f"/api/v1/jobs/{job_id}").json()

    def jobs(self, kind: str | None = None, status: str | None = None, limit: int | None = None, offset: int = 0) -> dict:
        params: dict[str, Any] = {"offset": offset}
        for k, v in (("kind", kind), ("status", status), ("limit", limit)):
            if v is not None:
                params[k] = v
        return self._req("GET", "/api/v1/jobs", params=params).json()

    def cancel(self, job_id: str) -> dict:
        return self._req("POST", f"/api/v1/jobs/{job_id}/cancel").json()

    def events(self, job_id: str, after: int = 0, limit: int | None = None) -> dict:
        params = {"after": after} | ({"limit": limit} if limit else {})
        return self._req("GET", f"/api/v1/jobs/{job_id}/events", params=params).json()

    def iter_events(self, job_id: str, after: int = 0) -> Iterator[dict]:
        while True:
            page = self.events(job_id, after)
            if not page["items"]:
                return
            yield from page["items"]
            after = page["next_after"]

    def artifacts(self, job_id: str) -> list[dict]:
        return self._req("GET", f"/api/v1/jobs/{job_id}/artifacts").json()["items"]

    def download(self, job_id: str, name: str, dest: str | Path, *, chunk: int = 1 << 20) -> Path:
        """Download an artifact, resuming a partial ``dest.part`` with a Range request, and verify its sha256."""
        meta = {a["name"]: a for a in self.artifacts(job_id)}.get(name)
        if meta is None:
            raise GasError(404, {"detail": f"job {job_id} has no artifact {name!r}"})
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / name
        part = dest.with_name(dest.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if 0 < have < meta["size"] else {}
        if not headers:
            have = 0
        with self.http.stream("GET", f"/api/v1/jobs/{job_id}/artifacts/{name}", headers=headers) as r:
            if r.status_code >= 400:
                r.read()
                raise GasError(r.status_code, r.json())
            mode = "ab" if r.status_code == 206 else "wb"
            with open(part, mode) as f:
                for block in r.iter_bytes(chunk):
                    f.write(block)
        h = hashlib.sha256()
        with open(part, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        if h.hexdigest() != meta["sha256"]:
            part.unlink()
            raise GasError(502, {"detail": f"checksum mismatch downloading {name}"})
        os.replace(part, dest)
        return dest

    def model_file(self, job_id: str) -> Path:
        """The job's ``model.onnx``, downloaded once into the user cache (``<cache>/models/<sha256>.onnx``,
        see :func:`client.predict.cache_dir`); a cached file is reused when its sha256 still matches."""
        from .predict import MODEL_ARTIFACT, cache_dir

        meta = {a["name"]: a for a in self.artifacts(job_id)}.get(MODEL_ARTIFACT)
        if meta is None:
            raise GasError(404, {"detail": f"job {job_id} has no {MODEL_ARTIFACT} (only succeeded retrain jobs export one)"})
        dest = cache_dir() / "models" / f"{meta['sha256']}.onnx"
        if dest.is_file() and _sha256(dest) == meta["sha256"]:
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        return self.download(job_id, MODEL_ARTIFACT, dest)

    def predict(self, job_id: str, images: list[str | Path], out_dir: str | Path, *, overlay: bool = False,
                alpha: float = 0.5, mask_size: str = "input") -> list[dict]:
        """Segment ``images`` with the job's exported model (onnxruntime on this machine, no torch):
        writes ``<stem>.png`` palette masks (and ``<stem>_overlay.png``) into ``out_dir``; see
        :func:`client.predict.predict_files`."""
        from .predict import load_model, predict_files

        model = load_model(self.model_file(job_id))
        return predict_files(model, images, out_dir, overlay=overlay, alpha=alpha, mask_size=mask_size)

    def wait(self, job_id: str, *, timeout: float = 3600.0, poll: float = 1.0,
             on_update: Callable[[dict], None] | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_update:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f}s")
            time.sleep(poll)

    def watch(self, job_id: str, *, timeout: float = 7 * 86400, poll: float = 1.0, file=None) -> dict:
        """Wait with a live tqdm progress bar (epochs when known, else steps) and the latest metrics."""
        from tqdm import tqdm

        bar = tqdm(total=None, unit="step", file=file, dynamic_ncols=True, leave=True)
        state = {"key": None}

        def update(job: dict) -> None:
            p = job.get("progress") or {}
            total, n = (p.get("steps"), p.get("step")) if p.get("steps") else (p.get("epochs"), p.get("epoch"))
            key = (p.get("phase"), p.get("epoch"))
            if key != state["key"]:
                state["key"] = key
                bar.reset(total=total)
            if n is not None:
                bar.n = n
            desc = f"{job['status']} {p.get('phase') or ''}"
            if p.get("epochs"):
                desc += f" epoch {p.get('epoch')}/{p.get('epochs')}"
            bar.set_description(desc.strip())
            post = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in (p.get("metrics") or {}).items()
                    if not isinstance(v, (dict, list))}
            if p.get("expected_latency_ms") is not None:
                post["exp_ms"] = round(p["expected_latency_ms"], 3)
            if p.get("phase_elapsed_s") is not None:  # moves every few seconds, even in phases without counters
                post["in_phase"] = f"{p['phase_elapsed_s']:.0f}s"
            if p.get("eta_s") is not None:
                post["eta"] = f"{p['eta_s']:.0f}s"
            bar.set_postfix(post, refresh=False)
            bar.refresh()

        try:
            return self.wait(job_id, timeout=timeout, poll=poll, on_update=update)
        finally:
            bar.close()
