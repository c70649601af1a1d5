"""Artifact downloads as HTTP caches and resuming clients expect them (RFC 9110):

- a strong ``ETag`` (the sha256 in quotes) and ``Last-Modified``; ``If-None-Match`` matching it
  (weak comparison, ``*`` included) answers 304 with no body;
- one byte range (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``) answers 206 with ``Content-Range``;
  ``If-Range`` that does not match the ETag (strong comparison) or the Last-Modified date makes the
  Range ignored (200, the whole file);
- a Range that is malformed, of another unit, or asks for several ranges is ignored (200, the whole
  file), as §14.2 allows; a well-formed range that starts past the end is 416 problem+json with
  ``Content-Range: bytes */<size>``;
- HEAD (api.protocol turns it into a GET marked ``gas.head``) answers the same headers and reads
  nothing from the store.
"""
from __future__ import annotations

import re
from datetime import timezone
from email.utils import format_datetime
from typing import BinaryIO, Callable, Iterator

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from storage.artifacts import CONTENT_TYPES

from .problems import problem_response

CHUNK = 1 << 20
UNSATISFIABLE = "unsatisfiable"
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
_DIGITS_MAX = 19
"""A position with more digits than this is past any file (and past int64)."""
DOWNLOAD_TYPES = sorted(set(CONTENT_TYPES.values()) | {"application/octet-stream"})


def _pos(digits: str) -> int:
    return int(digits) if len(digits) <= _DIGITS_MAX else 10 ** _DIGITS_MAX


def parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """(first, last) byte positions, UNSATISFIABLE, or None (ignore the header: serve the whole file)."""
    m = _RANGE.match(value)
    if m is None:  # malformed, another unit, or several ranges: ignored
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:  # suffix range: the last n bytes
        n = _pos(last)
        if n == 0 or size == 0:
            return UNSATISFIABLE
        return max(0, size - n), size - 1
    start = _pos(first)
    if last and _pos(last) < start:  # invalid range-spec (§14.1.1): ignored
        return None
    end = _pos(last) if last else size - 1
    if start >= size:
        return UNSATISFIABLE
    return start, min(end, size - 1)


def _tags(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


def none_match(value: str, etag: str) -> bool:
    """If-None-Match uses the weak comparison: W/"x" matches "x"."""
    return any(t == "*" or t.removeprefix("W/") == etag for t in _tags(value))


def _range_applies(if_range: str | None, etag: str, last_modified: str) -> bool:
    if if_range is None:
        return True
    v = if_range.strip()
    if v.startswith(('"', "W/")):
        return v == etag  # strong comparison: a weak tag never matches
    return v == last_modified


def _chunks(opener: Callable[[], BinaryIO], start: int, length: int) -> Iterator[bytes]:
    with opener() as f:
        if start:
            f.seek(start)
        left = length
        while left > 0:
            block = f.read(min(CHUNK, left))
            if not block:
                return
            left -= len(block)
            yield block


def artifact_response(request: Request, *, name: str, sha256: str, content_type: str, created_at, size: int,
                      opener: Callable[[], BinaryIO]) -> Response:
    etag = f'"{sha256}"'
    # the database may hand back a naive datetime (SQLite): it is UTC
    last_modified = format_datetime(created_at if created_at.tzinfo else created_at.replace(tzinfo=timezone.utc),
                                    usegmt=True)
    headers = {"ETag": etag, "Last-Modified": last_modified, "X-Checksum-Sha256": sha256, "Accept-Ranges": "bytes",
               "Cache-Control": "private, no-cache"}
    h = request.headers
    if (inm := h.get("if-none-match")) is not None and none_match(inm, etag):
        return Response(status_code=304, headers=headers)
    span: tuple[int, int] | str | None = None
    if (raw := h.get("range")) is not None and _range_applies(h.get("if-range"), etag, last_modified):
        span = parse_range(raw, size)
    if span == UNSATISFIABLE:
        return problem_response(416, f"range {raw[:100]!r} is not satisfiable: {name} has {size} bytes (positions "
                                     f"0..{size - 1}); ask for bytes=FIRST-[LAST] with FIRST < {size}",
                                instance=request.url.path, type_="/problems/range-not-satisfiable",
                                headers={**headers, "Content-Range": f"bytes */{size}"}, size=size)
    status, (start, end) = (206, span) if isinstance(span, tuple) else (200, (0, size - 1))
    length = max(0, end - start + 1)
    headers["Content-Length"] = str(length)
    headers["Content-Disposition"] = f'attachment; filename="{name}"'
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if request.scope.get("gas.head"):
        return Response(status_code=status, headers=headers, media_type=content_type)
    return StreamingResponse(_chunks(opener, start, length), status_code=status, headers=headers,
                             media_type=content_type)
