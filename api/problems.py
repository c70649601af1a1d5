"""application/problem+json errors (RFC 9457) for every 4xx/5xx the API answers."""
from __future__ import annotations

import logging
import traceback
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM = "application/problem+json"
log = logging.getLogger("gas.api")
LOG_TRACEBACK_CHARS = 8000
"""Most characters of one logged traceback (its head and tail are kept)."""
LOG_TRACEBACK_FRAMES = 30
"""Most stack frames of one logged traceback."""
TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
          408: "Request Timeout", 409: "Conflict",
          413: "Payload Too Large", 415: "Unsupported Media Type", 416: "Range Not Satisfiable",
          422: "Unprocessable Content", 429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


class Problem(Exception):
    def __init__(self, status: int, detail: str, *, type_: str = "about:blank", errors: list[dict] | None = None,
                 headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail)
        self.status, self.detail, self.type, self.errors, self.headers, self.extra = status, detail, type_, errors, headers, extra


def problem_response(status: int, detail: str, *, instance: str | None = None, type_: str = "about:blank",
                     errors: list[dict] | None = None, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"type": type_, "title": TITLES.get(status, "Error"), "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _hint(loc: list[str], msg: str, type_: str) -> str:
    """What to do about a field a client cannot set (one rule for every model a client feeds)."""
    if type_ != "extra_forbidden":
        return msg
    from .schemas import SERVER_OWNED, UNKNOWN_FIELD_HINT

    for suffix, hint in SERVER_OWNED.items():
        if tuple(loc[-len(suffix):]) == suffix:
            return f"{loc[-1]!r} cannot be set by a client: {hint}"
    return f"{loc[-1]!r} is {UNKNOWN_FIELD_HINT}" if loc else msg


def validation_errors(exc: ValidationError | RequestValidationError, prefix: tuple = ()) -> list[dict]:
    out = []
    for e in exc.errors():
        loc = [str(x) for x in (*prefix, *e.get("loc", ()))]
        out.append({"loc": loc, "field": ".".join(x for x in loc if x != "body"),
                    "msg": _hint(loc, str(e.get("msg", ""))[:500], e.get("type", "")), "type": e.get("type", "")})
    return out


def _summary(errors: list[dict]) -> str:
    parts = [f"{e['field'] or '(body)'}: {e['msg']}" for e in errors[:5]]
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem):
        return problem_response(exc.status, exc.detail, instance=request.url.path, type_=exc.type,
                                errors=exc.errors, headers=exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = validation_errors(exc)
        return problem_response(422, f"invalid request: {_summary(errors)}", instance=request.url.path,
                                type_="/problems/validation", errors=errors)

    @app.exception_handler(ValidationError)
    async def _invalid_below(request: Request, exc: ValidationError):
        # a pydantic model validated below a route (a core spec, a dataset reference): still the
        # client's input, so a 422 naming the field, never a 500
        errors = validation_errors(exc)
        return problem_response(422, f"invalid request: {_summary(errors)}", instance=request.url.path,
                                type_="/problems/validation", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        headers = dict(getattr(exc, "headers", None) or {})
        detail = str(exc.detail)
        if exc.status_code == 405:
            # every method of the path (the router names only the first route that matched it)
            from .protocol import allowed_methods

            headers["Allow"] = allowed_methods(request.app.routes, request.scope["path"])
            detail = f"{request.method} is not allowed here; allowed: {headers['Allow']}"
        return problem_response(exc.status_code, detail, instance=request.url.path, headers=headers or None)

    async def _unavailable(request: Request, exc: Exception):
        log.warning("database unreachable on %s %s: %s", request.method, request.url.path,
                    str(exc).splitlines()[0][:200])
        return problem_response(503, "database unreachable; retry shortly", instance=request.url.path,
                                type_="/problems/unavailable", headers={"Retry-After": "5"})

    # an outage is not a bug: 503 + Retry-After, handled (not re-raised to the server, which would
    # drop the connection) for the exceptions a lost or refused database connection raises
    from sqlalchemy.exc import InterfaceError, OperationalError

    db_errors: list[type[Exception]] = [OperationalError, InterfaceError]
    try:
        import psycopg

        db_errors += [psycopg.OperationalError, psycopg.InterfaceError]
    except ImportError:  # pragma: no cover - psycopg is a dependency
        pass
    for cls in db_errors:
        app.add_exception_handler(cls, _unavailable)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        if _database_down(exc):
            return await _unavailable(request, exc)
        # one bounded record per crash: a hostile input must not write megabytes into the log
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=LOG_TRACEBACK_FRAMES))
        log.error("unhandled error on %s %s: %s", request.method, request.url.path[:200],
                  tb if len(tb) <= LOG_TRACEBACK_CHARS else tb[:LOG_TRACEBACK_CHARS // 2] + "\n[...]\n" + tb[-LOG_TRACEBACK_CHARS // 2:])
        return problem_response(500, "internal error (logged)", instance=request.url.path)


def _database_down(exc: BaseException) -> bool:
    """A lost or refused database connection (SQLAlchemy or the async psycopg read path)."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(exc, (OperationalError, InterfaceError)) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))


def invalid(field: str, msg: str, type_: str = "value_error") -> Problem:
    errors = [{"loc": ["body", *field.split(".")], "field": field, "msg": msg, "type": type_}]
    return Problem(422, f"invalid request: {field}: {msg}", type_="/problems/validation", errors=errors)


def from_spec_error(exc: ValidationError, prefix: str) -> Problem:
    errors = validation_errors(exc, ("body", *[p for p in prefix.split(".") if p]))
    return Problem(422, f"invalid request: {_summary(errors)}", type_="/problems/validation", errors=errors)
