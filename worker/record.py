"""Turning a finished attempt's files into rows: artifacts (atomically copied into the store, with
size and sha256), the genotype, the FPS/latency report and the latency tables written to the shared
LUT directory."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.genotype import arch_hash_of
from storage.artifacts import CONTENT_TYPES, ArtifactStore, artifact_key, safe_name, sha256_file
from storage.models import Artifact, FpsReport, Genotype, Job, LatencyTable

log = logging.getLogger("gas.worker")


def _num(d: dict, *names: str) -> float | None:
    for n in names:
        v = d.get(n)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def _flatten(d: Any, out: dict | None = None) -> dict:
    """Leaf keys of nested dicts (first occurrence wins) so summaries survive report nesting."""
    out = {} if out is None else out
    if isinstance(d, dict):
        for k, v in d.items():
            if isinstance(v, dict):
                _flatten(v, out)
            elif k not in out:
                out[k] = v
    return out


def summarize(kind: str, result: dict, report: dict | None, spec: dict) -> dict:
    """The result summary shown on GET /jobs/{id}: mIoU, measured latency, FPS, budget met."""
    if kind == "feasibility":  # three networks, not one: the figures stay in their own section
        doc = result.get("feasibility") if isinstance(result.get("feasibility"), dict) else None
        out = {"feasibility": doc, "device": result.get("device"),
               "measurements_trusted": result.get("measurements_trusted")}
        return {k: v for k, v in out.items() if v is not None}
    flat = _flatten(result)
    for k, v in _flatten(report or {}).items():
        flat.setdefault(k, v)
    latency = _num(flat, "latency_ms", "measured_latency_ms", "median_ms", "latency_median_ms", "ms")
    fps = _num(flat, "fps", "measured_fps")
    if fps is None and latency:
        fps = 1000.0 / latency
    if latency is None and fps:
        latency = 1000.0 / fps
    budget = _num(flat, "budget_ms") or (spec.get("latency") or {}).get("budget_ms") or spec.get("budget_ms")
    met = flat.get("budget_met")
    if not isinstance(met, bool):
        met = (latency <= budget) if (latency is not None and budget) else None
    summary = {
        "miou": _num(flat, "miou", "mIoU", "val_miou", "test_miou", "best_miou", "supernet_miou"),
        "latency_ms": latency,
        "fps": fps,
        "expected_latency_ms": _num(flat, "expected_latency_ms", "lut_latency_ms", "predicted_latency_ms"),
        "budget_ms": budget,
        "budget_met": met,
        "measurements_trusted": flat.get("measurements_trusted") if isinstance(flat.get("measurements_trusted"), bool) else None,
        "trivial_baseline_miou": _num(flat, "trivial_baseline_miou"),
        "beats_trivial_baseline": flat.get("beats_trivial_baseline") if isinstance(flat.get("beats_trivial_baseline"), bool) else None,
        "device": flat.get("device") if isinstance(flat.get("device"), str) else None,
        # retrain: where the headline mIoU was measured and how it was chosen (issue 13)
        "miou_split": flat.get("miou_split") if isinstance(flat.get("miou_split"), str) else None,
        "miou_selection": flat.get("miou_selection") if isinstance(flat.get("miou_selection"), str) else None,
    }
    return {k: v for k, v in summary.items() if v is not None}


def store_artifacts(s: Session, store: ArtifactStore, job: Job, art_dir: Path) -> list[Artifact]:
    rows = []
    if not art_dir.is_dir():
        return rows
    for p in sorted(art_dir.iterdir()):
        if p.is_symlink() or not p.is_file() or not safe_name(p.name) or p.name.startswith("."):
            continue
        key = artifact_key(job.tenant_id, job.id, p.name)
        size, sha = store.put_file(key, p)
        row = s.scalar(select(Artifact).where(Artifact.job_id == job.id, Artifact.name == p.name))
        if row is None:
            row = Artifact(job_id=job.id, name=p.name, tenant_id=job.tenant_id)
            s.add(row)
        row.key, row.size, row.sha256 = key, size, sha
        row.content_type = CONTENT_TYPES.get(p.suffix, "application/octet-stream")
        rows.append(row)
    s.flush()
    return rows


def stamp_provenance(job: Job, art_dir: Path) -> None:
    """A search's genotype.json names its search job (the core does not know job ids); done before the
    artifacts are stored, so the file a tenant downloads, the stored document and a retrain's copy agree.
    Plain JSON: validating the genotype would import torch (core.ops) in this parent process."""
    p = art_dir / "genotype.json"
    if job.kind != "search" or not p.is_file():
        return
    try:
        doc = json.loads(p.read_text())
    except ValueError:
        return  # recorded as it is; a retrain's checks refuse a broken document
    prov = doc.get("provenance") if isinstance(doc, dict) else None
    if isinstance(prov, dict) and prov.get("search_job") is None:
        prov["search_job"] = job.id
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        os.replace(tmp, p)


def record_genotype(s: Session, job: Job, art_dir: Path) -> tuple[Genotype, str] | None:
    """The job's genotype row (its own document and provenance) and the genotype's id: the id of the
    tenant's first row of the same architecture (core Genotype.arch_hash, provenance excluded), so a
    search's genotype and its retrains, re-uploads and benchmarks share one id."""
    p = art_dir / "genotype.json"
    if not p.is_file():
        return None
    doc = json.loads(p.read_text())
    arch = arch_hash_of(doc) if isinstance(doc, dict) else None
    _, sha = sha256_file(p)
    g = Genotype(job_id=job.id, document=doc, sha256=sha, arch_hash=arch, tenant_id=job.tenant_id)
    s.add(g)
    s.flush()
    first = s.scalar(select(Genotype.id).where(Genotype.tenant_id == job.tenant_id, Genotype.arch_hash == arch)
                     .order_by(Genotype.created_at, Genotype.id)) if arch else None
    return g, first or g.id


def record_fps(s: Session, job: Job, summary: dict, report: dict | None, genotype_id: str | None) -> None:
    if "latency_ms" not in summary and "fps" not in summary and "miou" not in summary:
        return
    spec = job.spec or {}
    lat = spec.get("latency") or {}
    s.add(FpsReport(job_id=job.id, tenant_id=job.tenant_id, genotype_id=genotype_id,
                    device=summary.get("device"), height=lat.get("height") or spec.get("height"),
                    width=lat.get("width") or spec.get("width"), precision=lat.get("precision"),
                    latency_ms=summary.get("latency_ms"), fps=summary.get("fps"),
                    budget_ms=summary.get("budget_ms"), budget_met=summary.get("budget_met"),
                    miou=summary.get("miou"), data=report or {}))


def record_luts(s: Session, job: Job, lut_dir: Path) -> int:
    """Record LUT files of the shared LUT directory not yet known (path + sha256)."""
    if not lut_dir.is_dir():
        return 0
    n = 0
    lat = (job.spec or {}).get("latency") or {}
    for p in sorted(lut_dir.rglob("*.json")):
        if p.is_symlink() or not p.is_file():
            continue
        size, sha = sha256_file(p)
        if s.scalar(select(LatencyTable.id).where(LatencyTable.path == str(p), LatencyTable.sha256 == sha)):
            continue
        try:
            doc = json.loads(p.read_text())
        except ValueError:
            log.warning("LUT file %s is not JSON; not recorded", p)
            continue
        meta = _flatten(doc) if isinstance(doc, dict) else {}
        entries = doc.get("entries") if isinstance(doc, dict) else None
        s.add(LatencyTable(
            tenant_id=job.tenant_id, job_id=job.id, path=str(p), sha256=sha, size=size,
            device=str(meta.get("device") or meta.get("device_name") or "unknown"),
            height=int(meta.get("height") or lat.get("height") or 0),
            width=int(meta.get("width") or lat.get("width") or 0),
            precision=str(meta.get("precision") or lat.get("precision") or "fp32"),
            entries=len(entries) if isinstance(entries, (list, dict)) else None))
        n += 1
    return n
