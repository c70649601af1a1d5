"""Services below the route handlers: datasets, job submission, queries, cancel, artifacts, health.

Handlers stay thin: they parse, call one function here, and shape the response."""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from pydantic import ValidationError
from sqlalchemy import bindparam, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from core.redact import redact_text
from core.specs import (BenchmarkJobSpec, DatasetRef, RetrainJobSpec, SearchJobSpec, ValidateJobSpec,
                        normalization_from_report)
from storage import datasets as dsm
from storage import jobs as sm
from storage.artifacts import safe_name
from storage.dispatch import send_job
from storage.models import Artifact, Dataset, Genotype, Job, JobEvent
from storage.settings import ServiceSettings

from . import quotas
from .problems import Problem, from_spec_error, invalid
from .schemas import BenchmarkJobCreate, DatasetCreate, DatasetUploadParams, RetrainJobCreate, SearchJobCreate

log = logging.getLogger("gas.api")
API = "/api/v1"


# ------------------------------------------------------------------------------------------ datasets
def register_dataset(s: Session, settings: ServiceSettings, tenant: str, body: DatasetCreate) -> Dataset:
    """A server-side directory under the datasets root: structure checked now, every file by a job."""
    root = Path(settings.datasets_root).resolve()
    if "\x00" in body.path:
        raise invalid("path", "contains a NUL byte")
    cand = Path(body.path)
    if any(len(part.encode("utf-8", "surrogateescape")) > 255 for part in cand.parts):
        raise invalid("path", "a path component is longer than 255 bytes")
    try:
        real = (cand if cand.is_absolute() else root / cand).resolve()
        outside = real != root and root not in real.parents
        is_dir = not outside and real.is_dir()
    except (OSError, ValueError) as exc:  # name too long, a link loop, an unencodable name
        raise invalid("path", f"not a usable directory path ({type(exc).__name__})") from None
    if outside:
        raise Problem(403, "path is outside the datasets root of this server", type_="/problems/path-outside-root",
                      errors=[{"loc": ["body", "path"], "field": "path", "msg": "outside the datasets root",
                               "type": "forbidden_path"}])
    if not is_dir:
        raise invalid("path", "no such directory under the datasets root")
    return _create_dataset(s, settings, tenant, body, real, root, "path", source="directory")


@dataclass
class _Convention:
    """A new dataset's layout, splits and label convention, resolved from the request and the files."""

    layout: Any
    splits: dict[str, int]
    num_classes: int
    class_names: list[str] | None
    ignore_index: int
    label_map: dict | None

    def same_as(self, ds: Dataset, name: str) -> list[str]:
        """Fields in which an existing dataset differs from this convention (and ``name``)."""
        mine = dict(name=name, layout=self.layout.name, num_classes=self.num_classes, class_names=self.class_names,
                    ignore_index=self.ignore_index, label_map=self.label_map)
        return [k for k, v in mine.items() if getattr(ds, k) != v]


def _resolve_convention(body: DatasetCreate | DatasetUploadParams, real: Path, shown_root: Path, field: str) -> _Convention:
    """Check the layout and splits and resolve the class convention and label map (422 naming the field)."""
    from core.labelmap import LabelMapError, compile_label_map
    from core.layouts import detect_layout, get_layout  # torch-free layout registry of the core

    try:
        layout = get_layout(body.layout) if body.layout else detect_layout(real)
    except (ValueError, OSError) as exc:  # OSError: an unreadable or odd directory, named without its path
        raise invalid("layout" if body.layout else field, _strip_root(_reason(exc), shown_root)) from None
    splits: dict[str, Any] = {}
    try:
        for split in layout.splits(real):
            splits[split] = len(layout.list_split(real, split, False))
    except (ValueError, OSError) as exc:
        raise invalid(field, _strip_root(_reason(exc), shown_root)) from None
    if not splits.get("train"):
        raise invalid(field, f"{layout.name} layout: no training split (expected {layout.expected})")
    num_classes = body.num_classes or (len(body.class_names) if body.class_names else layout.num_classes)
    if num_classes is None:
        raise invalid("num_classes", f"required for the {layout.name} layout (or give class_names)")
    names = body.class_names or (list(layout.class_names) if layout.class_names and
                                 len(layout.class_names) == num_classes else None)
    ignore = body.ignore_index if body.ignore_index is not None else (
        layout.ignore_index if layout.ignore_index is not None and num_classes == layout.num_classes else num_classes)
    if ignore < num_classes:
        raise invalid("ignore_index", f"must not be a class id (0..{num_classes - 1})")
    label_map = body.label_map_doc()
    if label_map is not None:
        try:
            compile_label_map(label_map, num_classes, ignore)
        except LabelMapError as exc:
            raise invalid("label_map", str(exc)) from None
    return _Convention(layout, splits, num_classes, names, ignore,
                       label_map.model_dump(mode="json") if label_map is not None else None)


def _create_dataset(s: Session, settings: ServiceSettings, tenant: str, body: DatasetCreate | DatasetUploadParams,
                    real: Path, shown_root: Path, field: str, *, source: str, sha256: str | None = None,
                    size_bytes: int | None = None, conv: _Convention | None = None) -> Dataset:
    """Insert the dataset as ``validating`` (convention resolved unless given) and enqueue the job
    that checks every file."""
    conv = conv or _resolve_convention(body, real, shown_root, field)
    ds = Dataset(tenant_id=tenant, name=body.name, layout=conv.layout.name, root=str(real),
                 num_classes=conv.num_classes, class_names=conv.class_names, ignore_index=conv.ignore_index,
                 label_map=conv.label_map, stats={"images": conv.splits}, status=dsm.VALIDATING,
                 source=source, sha256=sha256, size_bytes=size_bytes)
    s.add(ds)
    s.flush()
    ref = dataset_ref(ds)
    spec = ValidateJobSpec(dataset=ref, splits=sorted(conv.splits), max_bad_per_kind=settings.validation_max_bad_per_kind)
    job, _ = create_job(s, settings, tenant, kind=dsm.VALIDATE_KIND, spec=spec.model_dump(mode="json"),
                        payload={"dataset_id": ds.id}, idem_key=None, dataset_id=ds.id,
                        before_commit=lambda job: setattr(ds, "validation_job_id", job.id))
    return ds


def dataset_ref(ds: Dataset, limit: int | None = None) -> DatasetRef:
    """The core's view of a dataset row (the label map included)."""
    return DatasetRef(root=ds.root, layout=ds.layout, num_classes=ds.num_classes, class_names=ds.class_names,
                      ignore_index=ds.ignore_index, limit=limit, label_map=ds.label_map)


async def receive_upload(request: Request, settings: ServiceSettings) -> tuple[Path, str, int]:
    """Stream the request body to a temporary file, counting bytes (413 past the cap) and hashing."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.upload_max_bytes:
        raise Problem(413, f"upload larger than {settings.upload_max_bytes} bytes", type_="/problems/upload-too-large")
    incoming = settings.upload_path / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    tmp = incoming / uuid.uuid4().hex
    digest, size = hashlib.sha256(), 0
    started = time.monotonic()
    stream = request.stream().__aiter__()
    try:
        with open(tmp, "wb") as out:
            while True:
                # a stalled or slow-dripping client cannot hold the connection and the partial file
                left = settings.upload_max_duration_s - (time.monotonic() - started)
                wait = min(settings.upload_idle_timeout_s, left)
                try:
                    chunk = await asyncio.wait_for(stream.__anext__(), timeout=max(wait, 0.001))
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    stalled = left > settings.upload_idle_timeout_s
                    raise Problem(408, (f"upload stalled: no data for {settings.upload_idle_timeout_s:g} s "
                                        "(GAS_UPLOAD_IDLE_TIMEOUT_S)") if stalled else
                                  (f"upload took longer than {settings.upload_max_duration_s:g} s "
                                   "(GAS_UPLOAD_MAX_DURATION_S)"), type_="/problems/upload-timeout",
                                  headers={"Connection": "close"}, received_bytes=size) from None
                size += len(chunk)
                if size > settings.upload_max_bytes:
                    raise Problem(413, f"upload larger than {settings.upload_max_bytes} bytes",
                                  type_="/problems/upload-too-large")
                digest.update(chunk)
                await run_in_threadpool(out.write, chunk)
        if size == 0:
            raise invalid("body", "empty upload: send the archive (zip, tar or tar.gz) as the request body")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, digest.hexdigest(), size


def register_upload(s: Session, settings: ServiceSettings, tenant: str, params: DatasetUploadParams,
                    tmp: Path, sha256: str, size: int) -> tuple[Dataset, bool]:
    """Content-addressed storage: the archive is extracted once per tenant. The same archive with the
    same parameters is the same dataset (returns it, created False); with other parameters (name,
    layout, classes, ignore value, label map) it is a new dataset over the same stored files."""
    from storage.archives import ArchiveRefused, ExtractLimits, extract_archive

    target = dsm.upload_target(settings.upload_path, tenant, sha256)
    try:
        existing = list(s.scalars(select(Dataset).where(Dataset.tenant_id == tenant, Dataset.sha256 == sha256,
                                                        Dataset.deleted_at.is_(None)).order_by(Dataset.created_at)))
        if existing and target.is_dir():
            conv = _resolve_convention(params, _data_root(target), target, "body")
            for ds in existing:
                if not conv.same_as(ds, params.name):
                    return ds, False
            return _create_dataset(s, settings, tenant, params, _data_root(target), target, "body", source="upload",
                                   sha256=sha256, size_bytes=size, conv=conv), True
        if target.exists():  # left by a deleted dataset or an interrupted registration
            shutil.rmtree(target)
        limits = ExtractLimits(settings.archive_max_members, settings.archive_max_total_bytes, settings.archive_max_ratio,
                               settings.archive_max_member_ratio, settings.archive_max_member_depth,
                               settings.archive_max_name_bytes)
        try:
            extract_archive(tmp, target, limits)
        except ArchiveRefused as exc:
            raise Problem(422, f"archive refused: {exc}", type_="/problems/archive-refused", reason=exc.reason,
                          errors=[{"loc": ["body"], "field": "body", "msg": str(exc), "type": exc.reason}]) from None
    finally:
        tmp.unlink(missing_ok=True)
    try:
        return _create_dataset(s, settings, tenant, params, _data_root(target), target, "body", source="upload",
                               sha256=sha256, size_bytes=size), True
    except BaseException:
        s.rollback()
        shutil.rmtree(target, ignore_errors=True)
        raise


def _data_root(extracted: Path) -> Path:
    """The dataset's root inside an extracted archive: descend through lone top-level folders."""
    root = extracted
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
        if len(entries) == 1 and entries[0].is_dir():
            root = entries[0]
            continue
        return root


def delete_dataset(s: Session, settings: ServiceSettings, tenant: str, dataset_id: str) -> None:
    ds = get_dataset(s, tenant, dataset_id)
    if users := dsm.active_jobs_using(s, ds):
        raise Problem(409, f"dataset {dataset_id} is used by {len(users)} queued or running job(s)",
                      type_="/problems/dataset-in-use", jobs=users)
    ds.deleted_at = datetime.now(timezone.utc)
    s.commit()
    if ds.source == "upload" and ds.sha256 and not _same_archive(s, ds):  # other datasets may share the files
        shutil.rmtree(dsm.upload_target(settings.upload_path, tenant, ds.sha256), ignore_errors=True)


def _same_archive(s: Session, ds: Dataset) -> list[str]:
    """Ids of the tenant's other live datasets over the same uploaded archive."""
    if ds.source != "upload" or not ds.sha256:
        return []
    return list(s.scalars(select(Dataset.id).where(Dataset.tenant_id == ds.tenant_id, Dataset.sha256 == ds.sha256,
                                                   Dataset.id != ds.id, Dataset.deleted_at.is_(None))
                          .order_by(Dataset.created_at)))


def _reason(exc: Exception) -> str:
    """A refusal's reason: a ValueError's message; for an OSError its kind only (no path)."""
    return str(exc) if isinstance(exc, ValueError) else f"cannot read the directory ({type(exc).__name__}: {exc.strerror})"


def _strip_root(msg: str, root: Path) -> str:
    """Error messages name paths relative to the datasets root, never the server's absolute layout."""
    return msg.replace(str(root) + "/", "").replace(str(root), ".")


def dataset_out(s: Session, ds: Dataset, settings: ServiceSettings) -> dict:
    status, reason = dsm.effective_status(s, ds)
    if ds.source == "upload":
        rel = f"upload:{ds.sha256}"
    else:
        try:
            rel = str(Path(ds.root).relative_to(Path(settings.datasets_root).resolve()))
        except ValueError:  # registered under another datasets root: never show the server path
            rel = redact_text(ds.root)
    report = ds.report
    if report is None and reason:
        report = {"ok": False, "error": reason}
    warnings = [w.get("message", "") for w in ((ds.report or {}).get("warnings") or []) if isinstance(w, dict)]
    return dict(id=ds.id, name=ds.name, layout=ds.layout, path=rel, num_classes=ds.num_classes,
                class_names=ds.class_names, ignore_index=ds.ignore_index, label_map=ds.label_map, stats=ds.stats,
                created_at=ds.created_at, status=status, source=ds.source, sha256=ds.sha256, size_bytes=ds.size_bytes,
                validation_job_id=ds.validation_job_id, report=report, warnings=warnings,
                same_archive_as=_same_archive(s, ds) or None if ds.source == "upload" else None)


def get_dataset(s: Session, tenant: str, dataset_id: str) -> Dataset:
    ds = s.get(Dataset, dataset_id)
    if ds is None or ds.tenant_id != tenant or ds.deleted_at is not None:
        raise Problem(404, f"no dataset {dataset_id}")
    return ds


def list_datasets(s: Session, tenant: str, limit: int, offset: int) -> list[Dataset]:
    return list(s.scalars(select(Dataset).where(Dataset.tenant_id == tenant, Dataset.deleted_at.is_(None))
                          .order_by(Dataset.created_at.desc(), Dataset.id).limit(limit).offset(offset)))


def _dataset_ref(s: Session, tenant: str, dataset_id: str, limit: int | None) -> tuple[Dataset, dict]:
    ds = s.get(Dataset, dataset_id)
    if ds is None or ds.tenant_id != tenant or ds.deleted_at is not None:
        raise invalid("dataset_id", f"no dataset {dataset_id}", "not_found")
    status, reason = dsm.effective_status(s, ds)
    if status != dsm.READY:
        detail = {dsm.VALIDATING: "is still being validated; retry when its status is ready",
                  dsm.INVALID: "failed validation (see its report)"}.get(status, f"is {status}")
        raise Problem(409, f"dataset {dataset_id} {detail}", type_="/problems/dataset-not-ready",
                      dataset_status=status)
    return ds, dataset_ref(ds, limit).model_dump(mode="json")


# -------------------------------------------------------------------------------------------- jobs
def _advanced(advanced) -> dict[str, Any]:
    """The tenant's allow-listed core knobs (api.schemas.*AdvancedIn) as a partial core spec."""
    return advanced.model_dump(mode="json", exclude_none=True) if advanced is not None else {}


def dataset_splits(ds: Dataset) -> list[str]:
    """The splits found when the dataset was registered (and checked by its validation job)."""
    return sorted(k for k, v in ((ds.stats or {}).get("images") or {}).items() if v)


def _check_splits(ds: Dataset, field: str, names: list[str]) -> None:
    """A split a job reads is one of the dataset's own splits, never a path a tenant makes up."""
    known = dataset_splits(ds)
    for name in names:
        if name not in known:
            raise invalid(field, f"{name!r} is not a split of dataset {ds.id}; its splits: {', '.join(known) or 'none'}",
                          "unknown_split")


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_search_spec(s: Session, tenant: str, body: SearchJobCreate) -> tuple[dict, Dataset, list[str]]:
    """The core spec of a search request, its dataset, and warnings about settings that cannot learn
    (api.search_checks): the job is accepted with them."""
    from .search_checks import adapt_warmup, search_warnings

    st = body.settings
    ds, ref = _dataset_ref(s, tenant, body.dataset_id, st.dataset_limit)
    spec: dict[str, Any] = _advanced(st.advanced)
    for section in ("network", "ggm", "latency", "search"):
        spec.setdefault(section, {})
        if not isinstance(spec[section], dict):
            raise invalid(f"settings.advanced.{section}", "must be an object")
    b = body.budget
    spec["latency"].update(budget_ms=b.budget_ms, height=b.height, width=b.width, precision=b.precision,
                           runtime=b.runtime)
    pairs = {("search", "epochs"): st.epochs, ("search", "warmup_epochs"): st.warmup_epochs,
             ("network", "num_cells"): st.cells, ("network", "reduction_cells"): st.reduction_cells,
             ("network", "nodes"): st.nodes, ("network", "init_channels"): st.init_channels,
             ("ggm", "enabled"): st.ggm, ("ggm", "gamma"): st.gamma, ("latency", "weight"): st.lambda_,
             ("search", "seed"): st.seed, ("search", "batch_size"): st.batch_size,
             ("search", "crop_height"): st.crop_height, ("search", "crop_width"): st.crop_width}
    for (section, key), value in pairs.items():
        if value is not None:
            spec[section][key] = value
    if st.cells is not None and st.reduction_cells is None and "reduction_cells" not in spec["network"]:
        spec["network"]["reduction_cells"] = sorted({st.cells // 3, (2 * st.cells) // 3} - {0}) or [1]
    spec["network"]["num_classes"] = ds.num_classes
    spec["dataset"] = ref
    adv_search = _advanced(st.advanced).get("search") or {}
    user_epochs = st.epochs is not None or "epochs" in adv_search
    user_warmup = st.warmup_epochs is not None or "warmup_epochs" in adv_search
    warnings = [n] if (n := adapt_warmup(spec["search"], user_epochs, user_warmup)) else []
    try:
        model = SearchJobSpec.model_validate(spec)
    except ValidationError as exc:
        raise from_spec_error(exc, "settings") from None
    w, e = model.search.warmup_epochs, model.search.epochs
    if w > e:
        wfield = "settings.warmup_epochs" if st.warmup_epochs is not None else "settings.advanced.search.warmup_epochs"
        if user_epochs:
            raise invalid(wfield, f"{w} warm-up epochs exceed the {e} epochs asked for; lower the warm-up or raise "
                                  f"settings.epochs (--epochs)")
        raise invalid(wfield, f"{w} warm-up epochs exceed the default of {e} epochs; also set settings.epochs "
                              f"(--epochs) to at least {w}")
    _check_splits(ds, "settings.advanced.train_split", model.train_split.split("+"))
    counts = (ds.stats or {}).get("images") or {}
    images = sum(min(int(counts.get(p, 0)), st.dataset_limit or 10**9) for p in model.train_split.split("+"))
    warnings += search_warnings(images, model.search.batch_size, model.search.steps_per_epoch, e, w,
                                model.search.compile)
    return model.model_dump(mode="json"), ds, warnings


def _genotype_of_job(s: Session, tenant: str, job_id: str, field: str) -> tuple[dict, Job]:
    src = s.get(Job, job_id)
    if src is None or src.tenant_id != tenant:
        raise invalid(field, f"no job {job_id}", "not_found")
    if src.status != sm.SUCCEEDED:
        raise Problem(409, f"job {job_id} is {src.status}; it has no genotype yet", type_="/problems/not-ready")
    g = s.scalar(select(Genotype).where(Genotype.job_id == src.id).order_by(Genotype.created_at.desc()))  # its own row
    if g is None and src.kind == "retrain":
        return (src.spec or {}).get("genotype") or {}, src
    if g is None:
        raise Problem(409, f"job {job_id} ({src.kind}) produced no genotype", type_="/problems/not-ready")
    return g.document, src


def _check_genotype(doc: dict, field: str) -> None:
    """Torch-free structural validation of a genotype document (core.genotype's rules except the
    op-registry lookup, which needs torch and is done by the worker's core)."""
    from core.genotype import FORMAT, VERSION, Cell, Provenance
    from core.specs import NetworkConfig

    if not doc:
        raise invalid(field, "empty genotype document")
    if len(json.dumps(doc)) > 1_000_000:
        raise invalid(field, "genotype document larger than 1 MB")
    allowed = {"format", "version", "ops", "network", "cells", "provenance"}
    if extra := sorted(set(doc) - allowed):
        raise invalid(f"{field}.{extra[0]}", "unknown field")
    if doc.get("format", FORMAT) != FORMAT:
        raise invalid(f"{field}.format", f"expected {FORMAT!r}")
    if doc.get("version", VERSION) != VERSION:
        raise invalid(f"{field}.version", f"this service reads version {VERSION}")
    ops = doc.get("ops")
    if not isinstance(ops, list) or len(ops) < 2 or not all(isinstance(o, str) and o for o in ops):
        raise invalid(f"{field}.ops", "a list of at least 2 operation names")
    try:
        net = NetworkConfig.model_validate(doc.get("network"))
    except ValidationError as exc:
        raise from_spec_error(exc, f"{field}.network") from None
    cells_doc = doc.get("cells")
    if not isinstance(cells_doc, list):
        raise invalid(f"{field}.cells", "a list of cells")
    if len(cells_doc) != net.num_cells:
        raise invalid(f"{field}.cells", f"{len(cells_doc)} cells but network.num_cells is {net.num_cells}")
    try:
        Provenance.model_validate(doc.get("provenance") or {})
        cells = [Cell.model_validate(c) for c in cells_doc]
    except ValidationError as exc:
        raise from_spec_error(exc, f"{field}.cells") from None
    for k, cell in enumerate(cells):
        where = f"{field}.cells.{k}"
        if cell.reduction != (k in net.reduction_cells):
            raise invalid(f"{where}.reduction", "disagrees with network.reduction_cells")
        if len(cell.nodes) != net.nodes:
            raise invalid(f"{where}.nodes", f"{len(cell.nodes)} nodes but network.nodes is {net.nodes}")
        for i, pair in enumerate(cell.nodes):
            for j, edge in enumerate(pair):
                if edge.input >= 2 + i:
                    raise invalid(f"{where}.nodes.{i}.{j}.input", f"{edge.input} is not an earlier node")
                if edge.op not in ops or edge.op == "none":
                    raise invalid(f"{where}.nodes.{i}.{j}.op", f"{edge.op!r} is not a kept operation of ops")
            if pair[0].input == pair[1].input:
                raise invalid(f"{where}.nodes.{i}", f"both edges come from node {pair[0].input}")


def build_retrain_spec(s: Session, tenant: str, body: RetrainJobCreate) -> tuple[dict, Dataset, str | None]:
    st = body.settings
    ds, ref = _dataset_ref(s, tenant, body.dataset_id, st.dataset_limit)
    parent = None
    height, width = 360, 480
    if body.search_job_id is not None:
        genotype, src = _genotype_of_job(s, tenant, body.search_job_id, "search_job_id")
        parent = src.id
        lat = (src.spec or {}).get("latency") or {}
        height, width = lat.get("height", height), lat.get("width", width)
    else:
        genotype = body.genotype or {}
        _check_genotype(genotype, "genotype")
    spec: dict[str, Any] = _advanced(st.advanced)
    spec.setdefault("train", {})
    if not isinstance(spec["train"], dict):
        raise invalid("settings.advanced.train", "must be an object")
    for key in ("epochs", "time_budget_s", "batch_size", "lr", "seed", "crop_height", "crop_width"):
        if getattr(st, key) is not None:
            spec["train"][key] = getattr(st, key)
    spec.update(height=st.height or height, width=st.width or width)
    # normalisation is data: the dataset's own channel statistics (validation report), else CamVid's
    spec.setdefault("normalization", normalization_from_report(
        ds.report, f"dataset {ds.id} validation report").model_dump(mode="json"))
    spec.update(dataset=ref, genotype=genotype)
    try:
        model = RetrainJobSpec.model_validate(spec)
    except ValidationError as exc:
        raise from_spec_error(exc, "settings") from None
    _check_splits(ds, "settings.advanced.train.train_splits", model.train.train_splits)
    _check_splits(ds, "settings.advanced.train.eval_split", [model.train.eval_split])
    return model.model_dump(mode="json"), ds, parent


def build_benchmark_spec(s: Session, tenant: str, body: BenchmarkJobCreate) -> tuple[dict, str | None]:
    parent = None
    if body.job_id is not None:
        genotype, src = _genotype_of_job(s, tenant, body.job_id, "job_id")
        parent = src.id
    else:
        genotype = body.genotype or {}
        _check_genotype(genotype, "genotype")
    try:
        model = BenchmarkJobSpec(genotype=genotype, height=body.height, width=body.width, iters=body.iters,
                                 budget_ms=body.budget_ms)
    except ValidationError as exc:
        raise from_spec_error(exc, "") from None
    return model.model_dump(mode="json"), parent


def request_hash(kind: str, payload: dict) -> str:
    return hashlib.sha256(json.dumps([kind, payload], sort_keys=True, default=str).encode()).hexdigest()


def find_idempotent(s: Session, tenant: str, key: str | None, kind: str, payload: dict) -> Job | None:
    if key is None:
        return None
    job = s.scalar(select(Job).where(Job.tenant_id == tenant, Job.idempotency_key == key))
    if job is not None and job.request_hash != request_hash(kind, payload):
        raise Problem(409, "Idempotency-Key was already used with a different request", type_="/problems/idempotency-key-reused")
    return job


def create_job(s: Session, settings: ServiceSettings, tenant: str, *, kind: str, spec: dict, payload: dict,
               idem_key: str | None, dataset_id: str | None = None, parent_job_id: str | None = None,
               before_commit: Callable[[Job], None] | None = None, warnings: list[str] | None = None) -> tuple[Job, bool]:
    """Insert the row (committed: the job now exists), then enqueue its wake-up. Returns (job, created).
    ``before_commit(job)`` changes other rows in the same transaction (e.g. the dataset it validates)."""
    quotas.enforce(s, settings, tenant, kind, idem_key)  # 429/409 past the tenant's quotas (api.quotas)
    # the submission's warnings live beside the request (not in request_hash: a retry stays idempotent)
    request = {**payload, "warnings": warnings} if warnings else payload
    job = Job(tenant_id=tenant, kind=kind, status=sm.QUEUED, spec=spec, request=request, dataset_id=dataset_id,
              parent_job_id=parent_job_id, idempotency_key=idem_key,
              request_hash=request_hash(kind, payload) if idem_key else None, max_attempts=settings.max_attempts)
    s.add(job)
    try:
        s.flush()
        sm.add_event(s, job, "queued", f"{kind} job accepted")
        for w in warnings or []:
            sm.add_event(s, job, "warning", w)
        if before_commit is not None:
            before_commit(job)
        s.commit()
    except IntegrityError:
        s.rollback()
        existing = find_idempotent(s, tenant, idem_key, kind, payload)
        if existing is None:
            raise
        return existing, False
    if send_job(settings.broker, settings.queue_name, settings.broker_key_prefix, job.id):
        sm.mark_dispatched(s, job.id)
        s.commit()
    return job, True


def get_job(s: Session, tenant: str, job_id: str) -> Job:
    job = s.get(Job, job_id)
    if job is None or job.tenant_id != tenant:
        raise Problem(404, f"no job {job_id}")
    return job


def list_jobs(s: Session, tenant: str, kind: str | None, status: str | None, limit: int, offset: int) -> list:
    """One page of the tenant's jobs: the columns a listing shows (never the stored spec and request)."""
    t = Job.__table__
    q = select(*[t.c[n] for n in READ_COLUMNS], t.c.request["budget"].label("budget"),
               t.c.request["warnings"].label("warnings")).where(t.c.tenant_id == tenant)
    if kind:
        q = q.where(t.c.kind == kind)
    if status:
        q = q.where(t.c.status == status)
    rows = s.execute(q.order_by(t.c.created_at.desc(), t.c.id).limit(limit).offset(offset)).mappings()
    return [SimpleNamespace(**row) for row in rows]


def job_out(job: Job) -> dict:
    p = job.progress or {}
    summary = None
    if job.result:
        summary = dict(job.result.get("summary") or {})
        if job.result.get("genotype_id"):
            summary["genotype_id"] = job.result["genotype_id"]
    base = f"{API}/jobs/{job.id}"
    budget = getattr(job, "budget", None) if not hasattr(job, "request") else (job.request or {}).get("budget")
    budget = budget if job.kind == "search" else None
    warnings = getattr(job, "warnings", None) if not hasattr(job, "request") else (job.request or {}).get("warnings")
    return dict(warnings=list(warnings or []),
        id=job.id, kind=job.kind, status=job.status,
        progress={k: p.get(k) for k in ("phase", "epoch", "epochs", "step", "steps", "metrics",
                                        "expected_latency_ms", "message", "attempt", "elapsed_s", "phase_elapsed_s",
                                        "eta_s")},
        attempts=job.attempts, max_attempts=job.max_attempts, cancel_requested=job.cancel_requested_at is not None,
        error=job.error, result=summary, dataset_id=job.dataset_id, parent_job_id=job.parent_job_id, budget=budget,
        created_at=job.created_at, updated_at=job.updated_at, started_at=job.started_at, finished_at=job.finished_at,
        links=dict(self=base, events=f"{base}/events", artifacts=f"{base}/artifacts", cancel=f"{base}/cancel"))


READ_COLUMNS = ("id", "tenant_id", "kind", "status", "progress", "attempts", "max_attempts", "cancel_requested_at",
                "error", "result", "dataset_id", "parent_job_id", "created_at", "updated_at", "started_at", "finished_at")


class JobReader:
    """The hot read path of ``GET /jobs/{id}``: one autocommit round trip (no BEGIN/ROLLBACK), a Core
    select, and JSON bytes built directly (the same document as :class:`api.schemas.JobOut`)."""

    def __init__(self, settings: ServiceSettings):
        from storage.db import get_engine

        engine = get_engine(settings.db_url, settings.db_pool_size)
        self.engine = engine if engine.dialect.name == "sqlite" else engine.execution_options(isolation_level="AUTOCOMMIT")
        t = Job.__table__
        self.query = select(*[t.c[n] for n in READ_COLUMNS], t.c.request["budget"].label("budget"),
                            t.c.request["warnings"].label("warnings")).where(t.c.id == bindparam("id"))

    def _job_json(self, tenant: str, job_id: str) -> bytes | None:
        with self.engine.connect() as c:
            row = c.execute(self.query, {"id": job_id}).mappings().first()
        return _row_json(row, tenant)

    async def job_json(self, tenant: str, job_id: str) -> bytes | None:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(self._job_json, tenant, job_id)


def _row_json(row, tenant: str) -> bytes | None:
    if row is None or row["tenant_id"] != tenant:
        return None
    return json.dumps(job_out(SimpleNamespace(**row)), default=_json_default, separators=(",", ":")).encode()


class AsyncPgJobReader:
    """PostgreSQL variant of :class:`JobReader`: a small pool of autocommit async psycopg connections
    on the event loop (no thread hop, prepared statement after a few uses)."""

    SQL = f"SELECT {', '.join(READ_COLUMNS)}, request->'budget' AS budget, request->'warnings' AS warnings FROM jobs WHERE id = %s"

    def __init__(self, settings: ServiceSettings):
        from sqlalchemy.engine import make_url

        u = make_url(settings.db_url)
        self.conninfo = u.set(drivername="postgresql").render_as_string(hide_password=False)
        self.size = settings.db_pool_size
        self.idle: list = []
        self.opened = 0
        self.available = None

    async def _acquire(self):
        import asyncio

        import psycopg

        if self.available is None:
            self.available = asyncio.Semaphore(self.size)
        await self.available.acquire()
        if self.idle:
            return self.idle.pop()
        try:
            return await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True, options="-c TimeZone=UTC")
        except BaseException:
            self.available.release()
            raise

    def _release(self, conn, broken: bool) -> None:
        if not broken and not conn.closed:
            self.idle.append(conn)
        self.available.release()

    async def job_json(self, tenant: str, job_id: str) -> bytes | None:
        import psycopg
        from psycopg.rows import dict_row

        for attempt in (0, 1):  # one retry on a connection the server dropped
            conn = await self._acquire()
            try:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(self.SQL, (job_id,))
                row = await cur.fetchone()
            except psycopg.OperationalError:
                self._release(conn, broken=True)
                await conn.close()
                if attempt:
                    raise
                continue
            self._release(conn, broken=False)
            return _row_json(row, tenant)
        return None


def make_reader(settings: ServiceSettings):
    return AsyncPgJobReader(settings) if settings.db_url.startswith("postgresql") else JobReader(settings)


def _json_default(o):
    if isinstance(o, datetime):
        return o.isoformat().replace("+00:00", "Z")
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def cancel_job(s: Session, tenant: str, job_id: str) -> sm.CancelOutcome:
    job = get_job(s, tenant, job_id)
    out = sm.request_cancel(s, job)
    if out.conflict:
        raise Problem(409, f"job {job_id} is already {out.job.status}", type_="/problems/job-finished")
    return out


def list_events(s: Session, tenant: str, job_id: str, after: int, limit: int) -> list[JobEvent]:
    get_job(s, tenant, job_id)
    return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after)
                          .order_by(JobEvent.id).limit(limit)))


def list_artifacts(s: Session, tenant: str, job_id: str) -> list[Artifact]:
    get_job(s, tenant, job_id)
    return list(s.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)))


def get_artifact(s: Session, tenant: str, job_id: str, name: str) -> Artifact:
    get_job(s, tenant, job_id)
    art = None
    if safe_name(name):
        art = s.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))
    if art is None:
        raise Problem(404, f"job {job_id} has no artifact {name!r}")
    return art


# ------------------------------------------------------------------------------------------ health
def check_database(s: Session) -> None:
    s.execute(text("SELECT 1"))


def check_broker(settings: ServiceSettings) -> None:
    url = settings.broker
    if url.startswith(("redis://", "rediss://")):
        import redis

        r = redis.Redis.from_url(url, socket_timeout=settings.readiness_timeout_s,
                                 socket_connect_timeout=settings.readiness_timeout_s)
        try:
            r.ping()
        finally:
            r.close()
        return
    if url.startswith("sqla+"):  # kombu's SQLAlchemy transport: the broker is a database
        from storage.db import get_engine

        with get_engine(url[len("sqla+"):]).connect() as conn:
            conn.execute(text("SELECT 1"))
        return
    from kombu import Connection

    with Connection(url, connect_timeout=settings.readiness_timeout_s) as conn:
        conn.ensure_connection(max_retries=1, timeout=settings.readiness_timeout_s)


def jobs_by_status(s: Session) -> dict[str, int]:
    return {st: n for st, n in s.execute(select(Job.status, func.count()).group_by(Job.status))}
