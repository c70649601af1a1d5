"""What the dashboard pages show, assembled from what the jobs store: the job row (status, progress,
result summary), its events (epoch-end progress events carry the epoch's metrics and α'), and its
``report.json`` artifact (the whole history once the job finished). Nothing here computes what a
job already recorded; it only reshapes it for templates and the SVG builders.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.artifacts import ArtifactStore
from storage.models import Artifact, Dataset, Job, JobEvent

from .. import services as svc

TERMINAL = {"succeeded", "failed", "cancelled"}
ACTIVE = {"queued", "running", "cancelling"}
KINDS = ("search", "retrain", "benchmark")
STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")


# ------------------------------------------------------------------------------------------ helpers
def age(ts: datetime | None, now: datetime | None = None) -> str:
    if ts is None:
        return ""
    now = now or datetime.now(timezone.utc)
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    s = max(0, int((now - ts).total_seconds()))
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= n:
            return f"{s // n} {unit}"
    return f"{s} s"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def fraction(p: dict) -> float | None:
    """Completed fraction of the job's epoch loop, from its progress (None when it has no epochs)."""
    epochs, epoch = p.get("epochs"), p.get("epoch")
    if not epochs or not epoch:
        return None
    steps, step = p.get("steps") or 1, p.get("step") or 0
    return max(0.0, min(1.0, ((epoch - 1) + step / steps) / epochs))


def eta_seconds(job: Any, p: dict, now: datetime | None = None) -> float | None:
    """Remaining time of the epoch loop at the pace so far (elapsed since the attempt started)."""
    f = fraction(p)
    started = getattr(job, "started_at", None)
    if not f or f >= 1 or started is None or getattr(job, "status", "") not in ("running", "cancelling"):
        return None
    now = now or datetime.now(timezone.utc)
    if started.tzinfo is None:
        started = started.replace(tzinfo=timezone.utc)
    elapsed = (now - started).total_seconds()
    return elapsed * (1 - f) / f if elapsed > 0 else None


def budget_text(budget: dict | None) -> str:
    if not budget:
        return ""
    if budget.get("latency_ms"):
        b = f"{budget['latency_ms']:g} ms"
    elif budget.get("fps"):
        b = f"{budget['fps']:g} FPS"
    else:
        b = ""
    if budget.get("height") and budget.get("width"):
        b += f" @ {budget['height']}×{budget['width']}"
    return b


def progress_view(job: Any) -> dict:
    """What the live progress block shows: status, phase, epoch, step, percentage, ETA, message."""
    p = dict(job.progress or {})
    f = fraction(p)
    eta = eta_seconds(job, p)
    if job.status == "succeeded":
        f = 1.0
    return {"status": job.status, "phase": p.get("phase") or "", "epoch": p.get("epoch"), "epochs": p.get("epochs"),
            "step": p.get("step"), "steps": p.get("steps"), "percent": None if f is None else round(100 * f, 1),
            "eta": duration(eta) if eta is not None else None, "message": p.get("message") or "",
            "expected_latency_ms": p.get("expected_latency_ms"), "attempt": p.get("attempt"),
            "metrics": p.get("metrics") or {}, "error": getattr(job, "error", None),
            "cancel_requested": getattr(job, "cancel_requested_at", None) is not None,
            "terminal": job.status in TERMINAL, "active": job.status in ACTIVE}


def job_row(job: Any, dataset_names: dict[str, str]) -> dict:
    r = (job.result or {}).get("summary") or {}
    budget = getattr(job, "budget", None)
    if budget is None and hasattr(job, "request"):
        budget = (job.request or {}).get("budget")
    return {"id": job.id, "kind": job.kind, "status": job.status, "dataset_id": job.dataset_id,
            "dataset": dataset_names.get(job.dataset_id or "", ""), "budget": budget_text(budget) if job.kind == "search" else "",
            "progress": progress_view(job), "miou": r.get("miou"), "latency_ms": r.get("latency_ms"),
            "budget_ms": r.get("budget_ms"), "budget_met": r.get("budget_met"), "age": age(job.created_at),
            "created_at": job.created_at}


def dataset_names(s: Session, tenant: str) -> dict[str, str]:
    return dict(s.execute(select(Dataset.id, Dataset.name).where(Dataset.tenant_id == tenant)).all())


def jobs_page(s: Session, tenant: str, kind: str | None, status: str | None, limit: int, offset: int) -> dict:
    rows = svc.list_jobs(s, tenant, kind, status, limit + 1, offset)
    more = len(rows) > limit
    names = dataset_names(s, tenant)
    items = [job_row(j, names) for j in rows[:limit]]
    return {"items": items, "more": more, "any_active": any(i["status"] in ACTIVE for i in items)}


# ------------------------------------------------------------------------------------------ reports
class ReportCache:
    """Parsed ``report.json`` per (job, sha256): a finished job's report never changes, and a page of a
    long search reads a few MB of history."""

    def __init__(self, size: int = 32):
        self._d: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self._lock = threading.Lock()
        self.size = size

    def get(self, s: Session, store: ArtifactStore, job_id: str) -> dict | None:
        art = s.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == "report.json"))
        if art is None:
            return None
        key = (job_id, art.sha256)
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        try:
            with store.open(art.key) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return None
        with self._lock:
            self._d[key] = doc
            while len(self._d) > self.size:
                self._d.popitem(last=False)
        return doc


def _entry_from_history(h: dict) -> dict:
    mean = h.get("mean") or {}
    return {"epoch": h.get("epoch"), "phase": h.get("phase"), "supernet_miou": h.get("supernet_miou"),
            "expected_latency_ms": h.get("expected_latency_ms"), "w_loss": mean.get("w_loss"),
            "a_loss": mean.get("a_loss"), "a_ce": mean.get("a_ce"), "latency_penalty": mean.get("latency_penalty"),
            "alphas": h.get("alphas")}


def _entry_from_event(d: dict) -> dict:
    m = d.get("metrics") or {}
    return {"epoch": d.get("epoch"), "phase": d.get("phase"), "supernet_miou": m.get("supernet_miou"),
            "expected_latency_ms": d.get("expected_latency_ms"), "w_loss": m.get("w_loss"), "a_loss": m.get("a_loss"),
            "a_ce": m.get("a_ce"), "latency_penalty": m.get("latency_penalty"), "alphas": d.get("alphas")}


def _is_epoch_end(d: Any) -> bool:
    return isinstance(d, dict) and bool(d.get("epoch")) and "supernet_miou" in (d.get("metrics") or {})


class EpochEventCache:
    """A running search's epoch-end events (metrics + α'), read incrementally: each view decodes only the
    events written since the last one, instead of every event of the job (a 200-epoch default search is
    200 events of 1,120 α' values each). Latest attempt wins per epoch, as in the events' order."""

    def __init__(self, size: int = 16):
        self._d: OrderedDict[str, tuple[int, dict[int, dict]]] = OrderedDict()
        self._lock = threading.Lock()
        self.size = size

    def events(self, s: Session, job_id: str) -> list[dict]:
        with self._lock:
            last_id, by_epoch = self._d.get(job_id, (0, {}))
        by_epoch = dict(by_epoch)
        rows = s.execute(select(JobEvent.id, JobEvent.data)
                         .where(JobEvent.job_id == job_id, JobEvent.type == "progress", JobEvent.id > last_id)
                         .order_by(JobEvent.id))
        for event_id, d in rows:
            last_id = max(last_id, int(event_id))
            if _is_epoch_end(d):
                by_epoch[int(d["epoch"])] = d
        with self._lock:
            self._d[job_id] = (last_id, by_epoch)
            self._d.move_to_end(job_id)
            while len(self._d) > self.size:
                self._d.popitem(last=False)
        return [by_epoch[k] for k in sorted(by_epoch)]

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._d.pop(job_id, None)


def search_history(s: Session, job_id: str, report: dict | None,
                   events: EpochEventCache) -> tuple[list[dict], list[str] | None]:
    """Per-epoch entries (metrics + α') and the op names: from report.json when the job finished, else
    from its epoch-end events (written live by the worker)."""
    if report and report.get("history"):
        events.forget(job_id)
        return [_entry_from_history(h) for h in report["history"]], None
    evs = events.events(s, job_id)
    ops = next((e.get("ops") for e in reversed(evs) if e.get("ops")), None)
    return [_entry_from_event(e) for e in evs], ops


def last_epoch_event_id(s: Session, job_id: str) -> int:
    """Cheap change detector for the live history section: the id of the newest progress event."""
    return int(s.scalar(select(func.max(JobEvent.id)).where(JobEvent.job_id == job_id, JobEvent.type == "progress"))
               or 0)


def curves(history: list[dict], budget_ms: float | None) -> dict:
    """uPlot-ready series per epoch (x = epoch); missing values are null."""
    xs = [h["epoch"] for h in history]

    def col(k: str) -> list:
        return [h.get(k) for h in history]

    return {"epoch": xs, "w_loss": col("w_loss"), "a_ce": col("a_ce"), "supernet_miou": col("supernet_miou"),
            "expected_latency_ms": col("expected_latency_ms"), "latency_penalty": col("latency_penalty"),
            "budget_ms": [budget_ms] * len(xs) if budget_ms else None}


def retrain_curves(history: list[dict]) -> dict:
    """uPlot-ready series of a retrain per epoch: mean train loss, and the eval split's mIoU where evaluated."""
    return {"epoch": [h["epoch"] for h in history], "loss": [h.get("loss") for h in history],
            "miou": [h.get("miou") for h in history]}


def genotype_of(s: Session, store: ArtifactStore, job_id: str) -> dict | None:
    art = s.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == "genotype.json"))
    if art is None:
        return None
    try:
        with store.open(art.key) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("cells"), list) else None


def latency_view(report: dict | None, summary: dict) -> dict | None:
    """Predicted (LUT) vs measured vs budget, and the repair's steps, as the search report has them."""
    if not report:
        return None
    rep = report.get("repair") or {}
    return {"expected_ms": report.get("expected_latency_ms"), "predicted_ms": report.get("predicted_latency_ms"),
            "measured_ms": report.get("measured_latency_ms"), "budget_ms": report.get("budget_ms"),
            "budget_met": report.get("budget_met"), "trusted": report.get("measurements_trusted"),
            "device": report.get("device"), "resolution": report.get("resolution"),
            "precision": report.get("precision"), "repair": rep, "noise_warnings": report.get("noise_warnings") or [],
            "fps": summary.get("fps"), "verdict": (report.get("latency_verdict") or {}).get("reason")}


def compare_points(s: Session, tenant: str, dataset_id: str, base: str) -> tuple[list[dict], float | None]:
    """Every succeeded search and retrain of the tenant on a dataset with an mIoU and a measured latency."""
    jobs = s.scalars(select(Job).where(Job.tenant_id == tenant, Job.dataset_id == dataset_id,
                                       Job.status == "succeeded", Job.kind.in_(("search", "retrain")))
                     .order_by(Job.created_at))
    pts, budgets = [], []
    for j in jobs:
        r = (j.result or {}).get("summary") or {}
        if r.get("miou") is None or not r.get("latency_ms"):
            continue
        what = "supernet mIoU" if j.kind == "search" else "mIoU"
        pts.append({"x": float(r["latency_ms"]), "y": float(r["miou"]), "kind": j.kind,
                    "label": f"{j.kind} {j.id[:8]} ({what})", "href": f"{base}/jobs/{j.id}", "id": j.id})
        if r.get("budget_ms"):
            budgets.append(float(r["budget_ms"]))
    return pts, (min(budgets) if budgets and len(set(budgets)) == 1 else None)
