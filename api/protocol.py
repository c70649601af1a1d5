"""HTTP method semantics the framework leaves out (RFC 9110), for every route at once:

- HEAD is answered on every GET route (probes, artifacts, lists) as the GET would be, without the
  body (§9.3.2): the request goes down as a GET marked ``scope["gas.head"]`` (so a download reads
  nothing from the store) and any body the route produces is dropped;
- a 405 names in ``Allow`` every method the path supports (all its routes, not only the first that
  matched the path), HEAD included wherever GET is.
"""
from __future__ import annotations

from typing import Iterator

from starlette.routing import BaseRoute, compile_path


class HeadMiddleware:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)
        scope = {**scope, "method": "GET", "gas.head": True}
        done = False

        async def send_headers_only(msg):
            nonlocal done
            if msg["type"] == "http.response.body":
                if not done and not msg.get("more_body", False):
                    done = True
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(msg)

        await self.app(scope, receive, send_headers_only)


def _templates(routes) -> Iterator[tuple[str, set[str]]]:
    """(path template, methods) of every route, those of included routers too (FastAPI >= 0.16x keeps
    them behind ``effective_candidates``; older versions list them flat)."""
    for r in routes:
        candidates = getattr(r, "effective_candidates", None)
        if callable(candidates):
            yield from _templates(candidates())
            continue
        path = getattr(r, "path", None)
        methods = getattr(r, "methods", None) or getattr(getattr(r, "original_route", None), "methods", None)
        if path and methods:
            yield path, set(methods)


def allowed_methods(routes: list[BaseRoute], path: str) -> str:
    """The ``Allow`` value of ``path``: the methods of the most specific route templates matching it
    (fewest parameters: ``/jobs/search`` is the submission resource, not a job named "search")."""
    found: dict[str, set[str]] = {}
    for template, methods in _templates(routes):
        if compile_path(template)[0].match(path):
            found.setdefault(template, set()).update(methods)
    if not found:
        return ""
    fewest = min(t.count("{") for t in found)
    allowed = set().union(*(m for t, m in found.items() if t.count("{") == fewest))
    if "GET" in allowed:
        allowed.add("HEAD")
    return ", ".join(sorted(allowed))
