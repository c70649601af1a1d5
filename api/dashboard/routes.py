"""Dashboard routes (``/ui``): thin handlers that read a session, call the API's services (the same
tenant-scoped queries as ``/api/v1``) and the view helpers, and render a template.

Errors under ``/ui`` are HTML pages (another tenant's job is a 404 page, as in the API); the API keeps
its problem+json. Live updates: ``/ui/jobs/{id}/live`` is a Server-Sent Events stream that opens a
database session per check and closes it (it never holds a connection while it waits); every live
block also has a polling form (``?live=poll`` or ``GAS_DASHBOARD_LIVE=poll``).
"""
from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from pydantic import ValidationError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from storage.db import get_sessionmaker
from storage.models import Dataset

from .. import services as svc
from ..deps import SessionDep, SettingsDep, StoreDep
from ..problems import Problem, validation_errors
from ..schemas import SearchJobCreate
from ..submissions import submit_search
from . import svg, views
from .session import (COOKIE, LOGIN_CSRF_COOKIE, CsrfError, DashSession, NotSignedIn, Sessions, check_csrf,
                      clear_session_cookie, cookie_path, is_https, set_session_cookie, verify_api_key_hint)

HERE = Path(__file__).parent
PREFIX = "/ui"
PAGE = 25  # jobs per page
SSE_MAX_S = 600.0  # a stream ends after this (the browser reconnects): no request lives for ever
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters["fmt"] = lambda v, spec=".3f": "" if v is None else format(v, spec)
templates.env.globals["svg"] = lambda s: Markup(s)  # built escaped by svg.py


def _base(request: Request) -> str:
    return (request.scope.get("root_path") or "") + PREFIX


def _live_mode(request: Request, settings) -> str:
    q = request.query_params.get("live")
    return q if q in ("sse", "poll") else settings.dashboard_live


def render(request: Request, name: str, http_status: int = 200, **ctx: Any) -> HTMLResponse:
    sess: DashSession | None = getattr(request.state, "dash", None)
    settings = request.app.state.settings
    ctx.setdefault("live", _live_mode(request, settings))
    return templates.TemplateResponse(request, name, {"base": _base(request), "session": sess,
                                                      "csrf": sess.csrf if sess else "",
                                                      "refresh_s": settings.dashboard_refresh_s, **ctx},
                                      status_code=http_status)


# ----------------------------------------------------------------------------------- the session
def _sessions(request: Request) -> Sessions:
    return request.app.state.dashboard_sessions


def current(request: Request) -> DashSession:
    """The signed-in tenant (the dashboard's form of the API's tenant dependency); redirects to the
    sign-in page otherwise."""
    sessions = _sessions(request)
    sess = sessions.read(request.cookies.get(COOKIE))
    if sess is None or not sessions.key_live(sess.prefix):
        raise NotSignedIn()
    request.state.dash = sess
    return sess


SessionUser = Annotated[DashSession, Depends(current)]
router = APIRouter(prefix=PREFIX, include_in_schema=False)


@router.get("", response_class=HTMLResponse)
@router.get("/", response_class=HTMLResponse)
def home(request: Request):
    return RedirectResponse(f"{_base(request)}/jobs", status_code=303)


@router.get("/signin", response_class=HTMLResponse)
def signin_form(request: Request, next: str = ""):
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    resp = render(request, "signin.html", next=next, login_csrf=token, error=None)
    resp.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, path=cookie_path(request), httponly=True,
                    samesite="strict", secure=is_https(request))
    return resp


def _safe_next(request: Request, nxt: str) -> str:
    base = _base(request)
    return nxt if nxt.startswith(base + "/") and "//" not in nxt[1:] and "\\" not in nxt else f"{base}/jobs"


@router.post("/signin", response_class=HTMLResponse)
async def signin(request: Request, api_key: Annotated[str, Form(max_length=200)] = "",
                 csrf: Annotated[str, Form(max_length=200)] = "", next: Annotated[str, Form(max_length=2000)] = ""):
    check_csrf(request, csrf, request.cookies.get(LOGIN_CSRF_COOKIE))
    api_key = api_key.strip()
    error = verify_api_key_hint(api_key)
    made = None if error else await run_in_threadpool(_sessions(request).sign_in, api_key)
    if made is None:
        return render(request, "signin.html", http_status=401, next=next, login_csrf=csrf,
                      error=error or "unknown or revoked API key")
    value, sess = made
    resp = RedirectResponse(_safe_next(request, next), status_code=303)
    set_session_cookie(resp, request, value, request.app.state.settings.dashboard_session_ttl_s)
    resp.delete_cookie(LOGIN_CSRF_COOKIE, path=cookie_path(request))
    return resp


@router.post("/signout")
def signout(request: Request, user: SessionUser, csrf: Annotated[str, Form(max_length=200)] = ""):
    check_csrf(request, csrf, user.csrf)
    resp = RedirectResponse(f"{_base(request)}/signin", status_code=303)
    clear_session_cookie(resp, request)
    return resp


# -------------------------------------------------------------------------------------- jobs list
KindQ = Annotated[Literal["search", "retrain", "benchmark", ""], Query()]
StatusQ = Annotated[Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled", ""], Query()]
OffsetQ = Annotated[int, Query(ge=0, le=10_000_000)]


@router.get("/jobs", response_class=HTMLResponse)
def jobs(request: Request, user: SessionUser, s: SessionDep, kind: KindQ = "", status: StatusQ = "",
         offset: OffsetQ = 0):
    page = views.jobs_page(s, user.tenant, kind or None, status or None, PAGE, offset)
    return render(request, "jobs.html", page=page, kind=kind, status=status, offset=offset, limit=PAGE,
                  kinds=views.KINDS, statuses=views.STATUSES)


@router.get("/jobs/rows", response_class=HTMLResponse)
def job_rows(request: Request, user: SessionUser, s: SessionDep, kind: KindQ = "", status: StatusQ = "",
             offset: OffsetQ = 0):
    page = views.jobs_page(s, user.tenant, kind or None, status or None, PAGE, offset)
    return render(request, "_job_rows.html", page=page, kind=kind, status=status, offset=offset)


@router.get("/jobs/rows/live")
async def job_rows_live(request: Request, user: SessionUser, kind: KindQ = "", status: StatusQ = "",
                        offset: OffsetQ = 0):
    """Server-Sent Events for the jobs list: ``rows`` (the table's rows) when they change, ``done`` when no
    job on the page is active any more, then the stream ends. Each check opens and closes its own
    database session, as the job page's stream does."""
    settings = request.app.state.settings
    maker = get_sessionmaker(settings.db_url, settings.db_pool_size)
    rows = templates.get_template("_job_rows_body.html")

    def check(_cursor: object = None) -> _Tick:
        with maker() as s:
            page = views.jobs_page(s, user.tenant, kind or None, status or None, PAGE, offset)
        html = rows.render(request=request, base=_base(request), page=page, kind=kind, status=status)
        return _Tick({"rows": html}, ended=not page["any_active"])

    return _sse_response(request, await run_in_threadpool(check), check)


# ----------------------------------------------------------------------------------- one job
def _search_context(request: Request, s, store, job, epoch: int | None = None) -> dict:
    cache: views.ReportCache = request.app.state.dashboard_reports
    report = cache.get(s, store, job.id) if job.status == "succeeded" else None
    history, ops = views.search_history(s, job.id, report, request.app.state.dashboard_epochs)
    genotype = views.genotype_of(s, store, job.id) if job.status == "succeeded" else None
    if genotype:
        ops = genotype.get("ops") or ops
    spec = job.spec or {}
    net = spec.get("network") or {}
    reduction = net.get("reduction_cells") or []
    budget_ms = (spec.get("latency") or {}).get("budget_ms")
    with_alpha = [h for h in history if h.get("alphas")]
    shown = None
    if with_alpha:
        shown = next((h for h in with_alpha if h["epoch"] == epoch), with_alpha[-1])
    summary = (job.result or {}).get("summary") or {}
    lat = views.latency_view(report, summary)
    lat_bars = None
    if lat and lat.get("measured_ms") is not None:
        items = [(n, float(v)) for n, v in (("LUT expected α'", lat["expected_ms"]), ("LUT predicted", lat["predicted_ms"]),
                                             ("measured", lat["measured_ms"])) if v is not None]
        lat_bars = svg.bars(items, unit=" ms", lines=[("budget", float(lat["budget_ms"]))] if lat.get("budget_ms") else ())
    return {
        "history": history, "curves": views.curves(history, budget_ms), "budget_ms": budget_ms,
        "heatmap": svg.alpha_heatmap(shown["alphas"], ops or [], reduction, epoch=shown["epoch"]) if shown else None,
        "heat_epoch": shown["epoch"] if shown else None, "alpha_epochs": [h["epoch"] for h in with_alpha],
        "dags": svg.genotype_dags(genotype) if genotype else [], "genotype": genotype, "latency": lat,
        "lat_bars": lat_bars, "report": report, "summary": summary,
        "history_rev": views.last_epoch_event_id(s, job.id),
    }


def _job_page_ctx(request: Request, s, store, tenant: str, job_id: str, epoch: int | None = None) -> dict:
    job = svc.get_job(s, tenant, job_id)  # another tenant's job: Problem(404) -> a 404 page
    ds = s.get(Dataset, job.dataset_id) if job.dataset_id else None
    arts = svc.list_artifacts(s, tenant, job_id)
    ctx: dict[str, Any] = {"job": job, "p": views.progress_view(job), "dataset": ds, "artifacts": arts,
                           "budget": views.budget_text((job.request or {}).get("budget")),
                           "age": views.age(job.created_at)}
    if job.kind == "search":
        ctx.update(_search_context(request, s, store, job, epoch))
    elif job.kind in ("retrain", "benchmark") and job.status == "succeeded":
        report = request.app.state.dashboard_reports.get(s, store, job.id)
        ctx.update(_retrain_context(report))
    return ctx


def _retrain_context(report: dict | None) -> dict:
    if not report:
        return {"report": None}
    train = report.get("train") or {}
    last = train.get("last") or {}
    per_class = last.get("per_class_iou") or {}
    iou_bars = svg.bars([(k, float(v)) for k, v in per_class.items() if v is not None], max_value=1.0) if per_class else None
    conf = last.get("confusion")
    confusion = svg.confusion_heatmap(conf, list(per_class) or report.get("class_names") or []) if conf else None
    history = train.get("history") or []
    return {"report": report, "per_class": per_class, "iou_bars": iou_bars, "fps": report.get("fps") or {},
            "confusion": confusion, "retrain_curves": views.retrain_curves(history) if history else None,
            "samples": (report.get("samples") or {}).get("files") or [],
            "sample_images": (report.get("samples") or {}).get("images") or []}


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, user: SessionUser, s: SessionDep, store: StoreDep,
             epoch: Annotated[int | None, Query(ge=1, le=100_000)] = None):
    ctx = _job_page_ctx(request, s, store, user.tenant, job_id, epoch)
    template = {"search": "search_job.html"}.get(ctx["job"].kind, "retrain_job.html")
    return render(request, template, **ctx)


@router.get("/jobs/{job_id}/progress", response_class=HTMLResponse)
def job_progress(request: Request, job_id: str, user: SessionUser, s: SessionDep):
    job = svc.get_job(s, user.tenant, job_id)
    return render(request, "_progress.html", job=job, p=views.progress_view(job), reload_on_end=True)


@router.get("/jobs/{job_id}/history", response_class=HTMLResponse)
def job_history(request: Request, job_id: str, user: SessionUser, s: SessionDep, store: StoreDep):
    job = svc.get_job(s, user.tenant, job_id)
    return render(request, "_history.html", job=job, **_search_context(request, s, store, job))


@router.get("/jobs/{job_id}/heatmap", response_class=HTMLResponse)
def job_heatmap(request: Request, job_id: str, user: SessionUser, s: SessionDep, store: StoreDep,
                epoch: Annotated[int | None, Query(ge=1, le=100_000)] = None):
    job = svc.get_job(s, user.tenant, job_id)
    return render(request, "_heatmap.html", job=job, **_search_context(request, s, store, job, epoch))


def _sse(event: str, html: str) -> str:
    return f"event: {event}\n" + "".join(f"data: {line}\n" for line in html.splitlines() or [""]) + "\n"


@dataclass
class _Tick:
    """One check of a live page: the fragments to send by event name (None: nothing new), whether nothing
    will change any more (then ``done`` is sent with ``done`` as its payload and the stream ends), and a
    cursor handed to the next check."""
    events: dict[str, str | None]
    ended: bool
    done: str = ""
    cursor: object = None


def _sse_response(request: Request, first: _Tick, check: Callable[[object], _Tick]) -> StreamingResponse:
    """The dashboard's one SSE loop: send each event whose fragment changed since it was last sent, check again
    every ``dashboard_refresh_s`` (in the thread pool: a check opens and closes its own database session, so
    an open stream holds no connection), stop at ``ended``, on a disconnect, a Problem (the job is gone) or
    after SSE_MAX_S (the browser reconnects)."""
    refresh = request.app.state.settings.dashboard_refresh_s

    async def stream():
        tick, sent = first, {}
        loop = asyncio.get_running_loop()
        t_end = loop.time() + SSE_MAX_S
        while True:
            for name, html in tick.events.items():
                if html is not None and html != sent.get(name):
                    yield _sse(name, html)
                    sent[name] = html
            if tick.ended:
                yield _sse("done", tick.done)
                return
            if loop.time() >= t_end:
                return
            await asyncio.sleep(refresh)
            if await request.is_disconnected():
                return
            try:
                tick = await run_in_threadpool(check, tick.cursor)
            except Problem:
                return

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/jobs/{job_id}/live")
async def job_live(request: Request, job_id: str, user: SessionUser):
    """Server-Sent Events: ``progress`` (the progress block) when it changes, ``history`` (curves and
    heatmap) when an epoch ends, ``done`` at a terminal status, then the stream ends. Each check opens
    and closes its own database session."""
    settings = request.app.state.settings
    maker = get_sessionmaker(settings.db_url, settings.db_pool_size)
    store = request.app.state.store

    def check(rev_seen: object = -1) -> _Tick:
        with maker() as s:
            job = svc.get_job(s, user.tenant, job_id)
            p = views.progress_view(job)
            progress = templates.get_template("_progress.html").render(
                request=request, base=_base(request), job=job, p=p, live="sse", csrf=user.csrf, reload_on_end=True)
            rev = views.last_epoch_event_id(s, job_id) if job.kind == "search" else 0
            history = None
            if rev != rev_seen and job.kind == "search" and job.status != "succeeded":
                history = templates.get_template("_history.html").render(
                    request=request, base=_base(request), job=job, live="sse",
                    **_search_context(request, s, store, job))
            return _Tick({"progress": progress, "history": history}, ended=p["terminal"], done=progress, cursor=rev)

    return _sse_response(request, await run_in_threadpool(check), check)  # a 404 before the stream starts


@router.post("/jobs/{job_id}/cancel")
def job_cancel(request: Request, job_id: str, user: SessionUser, s: SessionDep,
               csrf: Annotated[str, Form(max_length=200)] = ""):
    check_csrf(request, csrf, user.csrf)
    try:
        svc.cancel_job(s, user.tenant, job_id)
    except Problem as exc:
        if exc.status != 409:
            raise
    return RedirectResponse(f"{_base(request)}/jobs/{job_id}", status_code=303)


@router.get("/jobs/{job_id}/artifacts/{name}")
def job_artifact(job_id: str, name: str, user: SessionUser, s: SessionDep, store: StoreDep):
    art = svc.get_artifact(s, user.tenant, job_id, name)
    path = store.local_path(art.key)
    if path is not None and path.is_file():
        return FileResponse(path, media_type=art.content_type, filename=art.name, headers={"ETag": f'"{art.sha256}"'})
    f = store.open(art.key)
    return StreamingResponse(iter(lambda: f.read(1 << 20), b""), media_type=art.content_type,
                             headers={"Content-Disposition": f'attachment; filename="{art.name}"'})


# -------------------------------------------------------------------------------------- datasets
@router.get("/datasets", response_class=HTMLResponse)
def datasets(request: Request, user: SessionUser, s: SessionDep, settings: SettingsDep, offset: OffsetQ = 0):
    items = [svc.dataset_out(s, d, settings) for d in svc.list_datasets(s, user.tenant, PAGE + 1, offset)]
    return render(request, "datasets.html", items=items[:PAGE], more=len(items) > PAGE, offset=offset, limit=PAGE)


@router.get("/datasets/{dataset_id}", response_class=HTMLResponse)
def dataset_page(request: Request, dataset_id: str, user: SessionUser, s: SessionDep, settings: SettingsDep):
    ds = svc.dataset_out(s, svc.get_dataset(s, user.tenant, dataset_id), settings)
    report = ds.get("report") or {}
    freq = _class_freq(report, ds.get("class_names") or [])
    freq_bars = svg.bars(freq, max_value=max((v for _, v in freq), default=1.0) or 1.0) if freq else None
    return render(request, "dataset.html", ds=ds, report=report, freq_bars=freq_bars,
                  report_json=json.dumps(report, indent=1, default=str)[:20000])


def _class_freq(report: dict, names: list) -> list[tuple[str, float]]:
    """Per-class pixel frequencies of the validation report (any split that has them, train first)."""
    for key in ("class_frequency", "class_frequencies", "frequencies"):
        src = report.get(key)
        if isinstance(src, dict) and src:
            break
    else:
        src = None
        for split in ("train", *sorted((report.get("splits") or {}).keys())):
            cand = ((report.get("splits") or {}).get(split) or {})
            for key in ("class_frequency", "class_frequencies", "frequencies"):
                if isinstance(cand.get(key), (dict, list)) and cand.get(key):
                    src = cand[key]
                    break
            if src:
                break
    if isinstance(src, list):
        return [(str(names[i]) if i < len(names) else str(i), float(v)) for i, v in enumerate(src)]
    if isinstance(src, dict):
        return [(str(k), float(v)) for k, v in src.items() if isinstance(v, (int, float))]
    return []


# --------------------------------------------------------------------------------------- compare
@router.get("/compare", response_class=HTMLResponse)
def compare(request: Request, user: SessionUser, s: SessionDep,
            dataset_id: Annotated[str, Query(max_length=64)] = ""):
    dss = list(s.scalars(select(Dataset).where(Dataset.tenant_id == user.tenant, Dataset.deleted_at.is_(None))
                         .order_by(Dataset.created_at.desc())))
    chosen = next((d for d in dss if d.id == dataset_id), dss[0] if dss and not dataset_id else None)
    if dataset_id and chosen is None:
        raise Problem(404, f"no dataset {dataset_id}")
    pts, budget = views.compare_points(s, user.tenant, chosen.id, _base(request)) if chosen else ([], None)
    plot = svg.scatter(pts, budget=budget) if pts else None
    front = {pts[i]["id"] for i in svg.pareto_front([(p["x"], p["y"]) for p in pts])} if pts else set()
    return render(request, "compare.html", datasets=dss, chosen=chosen, points=pts, plot=plot, front=front)


# ------------------------------------------------------------------------------------ new search
def _ready_datasets(s, tenant: str) -> list[Dataset]:
    return [d for d in s.scalars(select(Dataset).where(Dataset.tenant_id == tenant, Dataset.deleted_at.is_(None))
                                 .order_by(Dataset.created_at.desc())) if d.status == "ready"]


@router.get("/search/new", response_class=HTMLResponse)
def new_search_form(request: Request, user: SessionUser, s: SessionDep, dataset_id: str = ""):
    return render(request, "new_search.html", datasets=_ready_datasets(s, user.tenant), errors={}, detail=None,
                  form={"dataset_id": dataset_id, "budget_kind": "latency_ms", "budget_value": "20", "height": "360",
                        "width": "480", "epochs": "", "settings_json": "", "idem": uuid.uuid4().hex})


@router.post("/search/new", response_class=HTMLResponse)
def new_search(request: Request, user: SessionUser, s: SessionDep, settings: SettingsDep,
               csrf: Annotated[str, Form(max_length=200)] = "", dataset_id: Annotated[str, Form(max_length=64)] = "",
               budget_kind: Annotated[str, Form(max_length=16)] = "latency_ms",
               budget_value: Annotated[str, Form(max_length=32)] = "", height: Annotated[str, Form(max_length=16)] = "",
               width: Annotated[str, Form(max_length=16)] = "", epochs: Annotated[str, Form(max_length=16)] = "",
               settings_json: Annotated[str, Form(max_length=20000)] = "", idem: Annotated[str, Form(max_length=64)] = ""):
    check_csrf(request, csrf, user.csrf)
    form = dict(dataset_id=dataset_id, budget_kind=budget_kind, budget_value=budget_value, height=height, width=width,
                epochs=epochs, settings_json=settings_json, idem=idem or uuid.uuid4().hex)
    errors: dict[str, str] = {}
    extra: dict = {}
    if settings_json.strip():
        try:
            extra = json.loads(settings_json)
            if not isinstance(extra, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            errors["settings"] = f"settings: not a JSON object ({exc})"
    body: dict[str, Any] = {"dataset_id": dataset_id,
                            "budget": {("fps" if budget_kind == "fps" else "latency_ms"): budget_value or None,
                                       "height": height or None, "width": width or None},
                            "settings": {**extra, **({"epochs": epochs} if epochs else {})}}
    body["budget"] = {k: v for k, v in body["budget"].items() if v is not None}
    detail = None
    if not errors:
        try:
            model = SearchJobCreate.model_validate(body)
            # the API's own submission (its checks and cost caps; a Problem is shown on the form)
            job, _ = submit_search(s, settings, user.tenant, model, f"ui-{idem}" if idem else None)
            return RedirectResponse(f"{_base(request)}/jobs/{job.id}", status_code=303)
        except ValidationError as exc:
            for e in validation_errors(exc):
                errors[_form_field(e["loc"])] = f"{e['field']}: {e['msg']}"
        except Problem as exc:
            for e in exc.errors or []:
                errors[_form_field(e.get("loc") or [])] = f"{e.get('field')}: {e.get('msg')}"
            detail = exc.detail
    return render(request, "new_search.html", http_status=422, datasets=_ready_datasets(s, user.tenant), errors=errors,
                  detail=detail, form=form)


def _form_field(loc: list) -> str:
    """The form input an API error location belongs to (budget.latency_ms -> budget_value, ...)."""
    loc = [str(x) for x in loc if x != "body"]
    if not loc:
        return "form"
    if loc[0] == "budget":
        return {"height": "height", "width": "width"}.get(loc[1] if len(loc) > 1 else "", "budget_value")
    if loc[0] == "settings":
        return "epochs" if loc[1:2] == ["epochs"] else "settings"
    return loc[0]


# ------------------------------------------------------------------------------------- install
def _ui_path(request: Request) -> bool:
    path, root = request.scope.get("path", ""), request.scope.get("root_path") or ""
    if root and path.startswith(root):
        path = path[len(root):]
    return path == PREFIX or path.startswith(PREFIX + "/")


def _error_page(request: Request, status: int, message: str) -> HTMLResponse:
    try:
        sess = _sessions(request).read(request.cookies.get(COOKIE))
        request.state.dash = sess
    except Exception:  # noqa: BLE001 - an error page never fails on the session
        pass
    return render(request, "error.html", http_status=status, code=status, message=message)


def install(app: FastAPI) -> None:
    """Mount the pages and static files; make errors under /ui HTML pages (API errors stay problem+json)."""
    settings = app.state.settings
    app.state.dashboard_sessions = Sessions(settings)
    app.state.dashboard_reports = views.ReportCache()
    app.state.dashboard_epochs = views.EpochEventCache()
    app.mount(f"{PREFIX}/static", StaticFiles(directory=str(HERE / "static")), name="dashboard-static")
    app.include_router(router)
    handlers = app.exception_handlers

    def wrap(exc_type, to_page):
        original = handlers.get(exc_type)

        async def handler(request: Request, exc):
            if _ui_path(request):
                return to_page(request, exc)
            return await original(request, exc)

        app.add_exception_handler(exc_type, handler)

    def not_signed_in(request: Request, exc: NotSignedIn) -> Response:
        base = _base(request)
        target = f"{base}/signin?next={request.url.path}" if request.method == "GET" else f"{base}/signin"
        if request.headers.get("hx-request"):
            return Response(status_code=204, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)

    app.add_exception_handler(NotSignedIn, not_signed_in)
    app.add_exception_handler(CsrfError, lambda request, exc: _error_page(request, 403, str(exc)))
    wrap(Problem, lambda request, exc: _error_page(request, exc.status, exc.detail))
    wrap(StarletteHTTPException, lambda request, exc: _error_page(request, exc.status_code, str(exc.detail)))
    wrap(RequestValidationError, lambda request, exc: _error_page(
        request, 422, "; ".join(f"{e['field']}: {e['msg']}" for e in validation_errors(exc))))
