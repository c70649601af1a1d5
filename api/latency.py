"""Latency tables and feasibility (issue 11): services below the /latency-tables and /jobs/feasibility routes.

**Tables are shared per worker device, not per tenant.** A latency table is a measurement of a
device (its identity: device model, runtime, precision, resolution, threads, software versions), and
holds no tenant data beyond the layer shapes that were timed; measuring it again per tenant would
spend device time on the same numbers. So every tenant lists and inspects every table (the figures
that steer its search), and jobs of all tenants reuse them. **Deleting** one takes it away from every
tenant (the next job re-measures it), so only an operator tenant (``GAS_OPERATOR_TENANTS``; the
embedded mode's own tenant) may delete through the API; anyone else gets 403 naming who can.

The files in ``GAS_LUT_DIR`` are the truth (the worker's jobs read and write them); the API reads them
without torch and never shows their paths: a table is named by its identity hash, ``lut-<id>.json``.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete
from sqlalchemy.orm import Session

from core.specs import FeasibilityJobSpec
from storage.models import Dataset
from storage.models import LatencyTable as LatencyTableRow
from storage.settings import ServiceSettings

from .problems import Problem, from_spec_error, invalid
from .schemas import FeasibilityCreate

TABLE_ID = re.compile(r"^[0-9a-f]{16}$")
FILE = "lut-{}.json"


def _file(settings: ServiceSettings, table_id: str) -> Path | None:
    if not TABLE_ID.match(table_id):
        return None
    p = settings.lut_path / FILE.format(table_id)
    return p if p.is_file() and not p.is_symlink() else None


def _read(p: Path) -> dict | None:
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("context"), dict) else None


def _noisy(e: dict, max_ratio: float | None) -> bool:
    if e.get("noisy"):
        return True
    lo, hi = e.get("min_ms"), e.get("p90_ms")
    return bool(max_ratio and isinstance(lo, (int, float)) and lo > 0 and isinstance(hi, (int, float))
                and hi / lo > max_ratio)


def table_out(doc: dict, p: Path, detail: bool = False) -> dict[str, Any]:
    """A table as a tenant sees it: its identity, counts, validations; never its path."""
    ctx = doc["context"]
    entries = doc.get("entries") if isinstance(doc.get("entries"), list) else []
    validations = doc.get("validations") if isinstance(doc.get("validations"), dict) else {}
    noisy = sum(1 for e in entries if isinstance(e, dict) and _noisy(e, None))
    vals = []
    for net, v in sorted(validations.items()):
        if not isinstance(v, dict):
            continue
        row = {"network": net, **{k: v.get(k) for k in ("passed", "accurate", "samples", "median_rel_error",
                                                        "rank_correlation", "mean_signed_error", "calibration",
                                                        "reasons", "thresholds")}}
        if detail:
            row["networks"] = v.get("networks")
        vals.append(row)
    st = p.stat()
    import hashlib

    out = {
        "id": str(doc.get("id") or p.stem.removeprefix("lut-")), "format_version": doc.get("format_version"),
        "device": ctx.get("device"), "runtime": ctx.get("runtime"), "precision": ctx.get("precision"),
        "height": ctx.get("height"), "width": ctx.get("width"), "batch": ctx.get("batch"), "burst": ctx.get("burst"),
        "threads": {"intra_op": ctx.get("intra_op_threads"), "inter_op": ctx.get("inter_op_threads")},
        "versions": {"torch": ctx.get("torch"), "cuda": ctx.get("cuda"), "cudnn": ctx.get("cudnn")},
        "cudnn_benchmark": ctx.get("cudnn_benchmark"), "channels_last": ctx.get("channels_last"),
        "entries": len(entries), "noisy_entries": noisy, "validations": vals,
        "validated": any(v.get("passed") for v in vals), "size_bytes": st.st_size,
        "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
        "updated_at": datetime.fromtimestamp(st.st_mtime, timezone.utc),
    }
    if detail:
        out["entry_list"] = [
            {"key": f"{e.get('part')}/{e.get('name')}/c{e.get('c_in')}-{e.get('c_out')}/{e.get('height')}x"
                    f"{e.get('width')}/s{e.get('stride')}",
             **{k: e.get(k) for k in ("part", "name", "c_in", "c_out", "height", "width", "stride", "median_ms",
                                      "p10_ms", "p90_ms", "min_ms", "count", "noisy", "attempts")}}
            for e in entries if isinstance(e, dict)]
    return out


def list_tables(settings: ServiceSettings, limit: int, offset: int, height: int | None = None,
                width: int | None = None) -> list[dict]:
    root = settings.lut_path
    files = [p for p in root.glob("lut-*.json") if p.is_file() and not p.is_symlink()] if root.is_dir() else []
    out = []
    for p in files:
        doc = _read(p)
        if doc is None or not TABLE_ID.match(p.stem.removeprefix("lut-")):
            continue
        ctx = doc["context"]
        if (height is not None and ctx.get("height") != height) or (width is not None and ctx.get("width") != width):
            continue
        out.append(table_out(doc, p))
    out.sort(key=lambda t: (t["updated_at"], t["id"]), reverse=True)
    return out[offset:offset + limit]


def get_table(settings: ServiceSettings, table_id: str) -> dict:
    p = _file(settings, table_id)
    doc = _read(p) if p is not None else None
    if doc is None:
        raise Problem(404, f"no latency table {table_id}")
    return table_out(doc, p, detail=True)


def delete_table(s: Session, settings: ServiceSettings, tenant: str, table_id: str) -> None:
    """Operators only: the table is shared by every tenant of the device. The next job that needs it
    measures (and validates) it again."""
    p = _file(settings, table_id)
    if p is None:
        raise Problem(404, f"no latency table {table_id}")
    if tenant not in settings.operators():
        raise Problem(403, "latency tables are shared by every tenant of a worker device; only an operator tenant "
                           "(GAS_OPERATOR_TENANTS) may delete one. Ask your operator, or run `gas-admin luts delete "
                           f"{table_id}` on the server", type_="/problems/operator-only")
    p.unlink(missing_ok=True)
    s.execute(delete(LatencyTableRow).where(LatencyTableRow.path == str(p)))
    s.commit()


# ------------------------------------------------------------------------------------- feasibility
def build_feasibility_spec(s: Session, tenant: str, body: FeasibilityCreate) -> tuple[dict, str | None]:
    """The core FeasibilityJobSpec of a request: the search's network settings, the budget's resolution
    and precision, the classes of ``dataset_id`` (or ``num_classes``)."""
    st = body.settings
    spec: dict[str, Any] = st.advanced.model_dump(mode="json", exclude_none=True) if st.advanced is not None else {}
    for section in ("network", "latency"):
        spec.setdefault(section, {})
    pairs = {"num_cells": st.cells, "reduction_cells": st.reduction_cells, "nodes": st.nodes,
             "init_channels": st.init_channels}
    spec["network"].update({k: v for k, v in pairs.items() if v is not None})
    if st.cells is not None and st.reduction_cells is None and "reduction_cells" not in spec["network"]:
        spec["network"]["reduction_cells"] = sorted({st.cells // 3, (2 * st.cells) // 3} - {0}) or [1]
    dataset_id = None
    if body.dataset_id is not None:
        ds = s.get(Dataset, body.dataset_id)
        if ds is None or ds.tenant_id != tenant or ds.deleted_at is not None:
            raise invalid("dataset_id", f"no dataset {body.dataset_id}", "not_found")
        spec["network"]["num_classes"], dataset_id = ds.num_classes, ds.id
    elif body.num_classes is not None:
        spec["network"]["num_classes"] = body.num_classes
    spec["latency"].update(height=body.height, width=body.width, precision=body.precision, runtime=body.runtime)
    try:
        model = FeasibilityJobSpec.model_validate(spec)
    except ValidationError as exc:
        raise from_spec_error(exc, "settings") from None
    return model.model_dump(mode="json"), dataset_id
