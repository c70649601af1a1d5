"""Artifact store behind a small interface; the local directory store is the default.

Keys are built by the service (``<tenant>/<job id>/<name>``) from server-side names only; a key
with anything but ``[A-Za-z0-9._-]`` path parts is refused, so no client string ever becomes a path.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol

CONTENT_TYPES = {".json": "application/json", ".safetensors": "application/octet-stream",
                 ".onnx": "application/octet-stream", ".pt": "application/octet-stream",
                 ".txt": "text/plain", ".md": "text/markdown", ".csv": "text/csv", ".png": "image/png"}
"""Content type of an artifact by its suffix (anything else: application/octet-stream); the API
documents exactly these for downloads."""
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def safe_name(name: str) -> bool:
    return bool(_PART.match(name)) and ".." not in name


def artifact_key(tenant_id: str, job_id: str, name: str) -> str:
    for part in (tenant_id, job_id, name):
        if not safe_name(part):
            raise ValueError(f"unsafe artifact key part {part!r}")
    return f"{tenant_id}/{job_id}/{name}"


def sha256_file(path: Path, chunk: int = 1 << 20) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


class ArtifactStore(Protocol):
    def put_file(self, key: str, src: Path) -> tuple[int, str]:
        """Copy ``src`` in atomically; returns (size, sha256)."""

    def open(self, key: str) -> BinaryIO: ...

    def local_path(self, key: str) -> Path | None:
        """A local file path for zero-copy streaming, or None when the store is remote."""

    def exists(self, key: str) -> bool: ...


class LocalArtifactStore:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not parts or not all(safe_name(p) for p in parts):
            raise ValueError(f"unsafe artifact key {key!r}")
        return self.root.joinpath(*parts)

    def put_file(self, key: str, src: Path) -> tuple[int, str]:
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                shutil.copyfileobj(inp, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dst)
            dfd = os.open(dst.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return sha256_file(dst)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


def get_store(root: Path) -> ArtifactStore:
    return LocalArtifactStore(root)
