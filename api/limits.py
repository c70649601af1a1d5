"""Request guards (pure ASGI): a path holding a NUL character is 404 (no id or name has one);
the body cap of the JSON routes: a body past ``GAS_JSON_MAX_BYTES`` is answered
413 problem+json before any handler or validator sees it, whether the client declared its length
or streams it chunked. Archive uploads stream to disk under their own cap
(``GAS_UPLOAD_MAX_BYTES``) and are not buffered here."""
from __future__ import annotations

from .problems import problem_response

STREAMED_PATHS = ("/api/v1/datasets/uploads",)
"""Routes whose body is streamed by the handler itself (with their own cap)."""


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def _too_large(self, scope, receive, send) -> None:
        resp = problem_response(413, f"request body larger than {self.max_bytes} bytes (GAS_JSON_MAX_BYTES)",
                                instance=scope.get("path"), type_="/problems/body-too-large", limit=self.max_bytes)
        await resp(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and "\x00" in scope.get("path", ""):
            # no id or name holds a NUL (and PostgreSQL cannot even compare one): nothing is there
            resp = problem_response(404, "no such resource (the path holds a NUL character)",
                                    type_="about:blank")
            return await resp(scope, receive, send)
        if (scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE")
                or scope.get("path", "").rstrip("/") in STREAMED_PATHS):
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    return await self._too_large(scope, receive, send)
        # read the whole (small) body now, counting: a chunked body cannot get past the cap either
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":  # the client went away
                return
            body = msg.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                return await self._too_large(scope, receive, send)
            chunks.append(body)
            more = msg.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)
