"""Safe extraction of uploaded dataset archives (zip, tar, tar.gz).

Refused: members outside the target (absolute paths, drive letters, ``..``, backslashes, NUL),
symlinks, hard links, devices and FIFOs, nested archives, more than ``max_members`` members, more
than ``max_total_bytes`` uncompressed (counted while extracting, never trusting headers), and a
compression ratio above ``max_ratio`` (the whole archive) or ``max_member_ratio`` (one member, once it
passed its first MiB: a bomb hidden among incompressible files). Everything is extracted into a temporary sibling of the
target and renamed into place only when the whole archive passed, so a refused archive leaves
nothing behind. The client's file name plays no part: the kind is read from the magic bytes.
"""
from __future__ import annotations

import shutil
import stat
import tarfile
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Callable

from core.redact import redact_text

COPY_CHUNK = 1 << 20  # bytes per read while extracting
NESTED_SUFFIXES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".zst", ".7z", ".rar")
"""Member names refused as nested archives (their magic bytes are checked too)."""
_MAGICS = (b"PK\x03\x04", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"7z\xbc\xaf\x27\x1c", b"Rar!", b"\x28\xb5\x2f\xfd")


MEMBER_RATIO_MIN_BYTES = 1 << 20
"""A member's own compression ratio is checked once it has expanded past this many bytes (small
members of any ratio cannot do harm; the read-ahead of a gzip stream blurs small members' figures)."""
NAME_COMPONENT_MAX_BYTES = 255
"""Longest file or directory name inside an archive (the usual filesystem limit)."""


@dataclass(frozen=True)
class ExtractLimits:
    max_members: int = 100_000
    max_total_bytes: int = 20 * 2**30
    max_ratio: float = 200.0
    max_member_ratio: float = 200.0  # one member's uncompressed/compressed bytes, past its first MEMBER_RATIO_MIN_BYTES
    max_depth: int = 32  # directories a member name may have
    max_name_bytes: int = 1024  # UTF-8 bytes of a whole member name


class ArchiveRefused(ValueError):
    """The archive breaks a rule; ``reason`` is a stable code, the message names the member."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class ExtractResult:
    kind: str
    members: int
    files: int
    total_bytes: int


def archive_kind(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    raise ArchiveRefused("unsupported_archive", "not a zip, tar or tar.gz archive (by its content)")


def _shown(name: str) -> str:
    """A member name as an error shows it: at most 120 characters."""
    return repr(name) if len(name) <= 120 else repr(name[:60] + "..." + name[-40:])


def safe_member_path(name: str, limits: ExtractLimits = ExtractLimits()) -> PurePosixPath | None:
    """The member's relative path, or None for the archive's root entry; refuses unsafe names,
    names longer than ``limits.max_name_bytes`` (or a component over 255 bytes) and names more
    than ``limits.max_depth`` directories deep, before anything is created."""
    if len(name.encode("utf-8", "surrogateescape")) > limits.max_name_bytes:
        raise ArchiveRefused("name_too_long", f"member {_shown(name)} has a name longer than {limits.max_name_bytes} bytes")
    if "\x00" in name:
        raise ArchiveRefused("unsafe_path", f"member name {name!r} contains NUL")
    if "\\" in name:
        raise ArchiveRefused("unsafe_path", f"member {name!r} uses backslashes")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveRefused("unsafe_path", f"member {name!r} has an absolute path")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveRefused("unsafe_path", f"member {_shown(name)} points outside the archive")
    if len(parts) > limits.max_depth + 1:
        raise ArchiveRefused("too_deep", f"member {_shown(name)} is {len(parts) - 1} directories deep; "
                                         f"at most {limits.max_depth}")
    if any(len(p.encode("utf-8", "surrogateescape")) > NAME_COMPONENT_MAX_BYTES for p in parts):
        raise ArchiveRefused("name_too_long", f"member {_shown(name)} has a file or directory name longer than "
                                              f"{NAME_COMPONENT_MAX_BYTES} bytes")
    return PurePosixPath(*parts) if parts else None


def _is_nested_archive(name: str, head: bytes) -> bool:
    return name.lower().endswith(NESTED_SUFFIXES) or any(head.startswith(m) for m in _MAGICS)


class _Extractor:
    def __init__(self, archive: Path, tmp: Path, limits: ExtractLimits):
        self.tmp, self.limits = tmp, limits
        self.archive_bytes = max(archive.stat().st_size, 1)
        self.members = self.files = self.total = 0

    def count_member(self) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise ArchiveRefused("too_many_members", f"more than {self.limits.max_members} members")

    def write(self, rel: PurePosixPath, src: IO[bytes], packed: Callable[[], int] | None = None) -> None:
        """Copy one member; ``packed()`` gives the compressed bytes this member has used so far
        (None: stored uncompressed), for the per-member ratio."""
        target = self.tmp.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        first = True
        written = 0
        with open(target, "xb") as out:  # "x": a duplicate member name cannot overwrite
            for chunk in iter(lambda: src.read(COPY_CHUNK), b""):
                if first and _is_nested_archive(rel.name, chunk[:8]):
                    raise ArchiveRefused("nested_archive", f"member {str(rel)!r} is itself an archive")
                first = False
                written += len(chunk)
                if packed is not None and written > MEMBER_RATIO_MIN_BYTES and \
                        written / max(packed(), 1) > self.limits.max_member_ratio:
                    raise ArchiveRefused("compression_ratio", f"member {str(rel)!r} expands more than "
                                         f"{self.limits.max_member_ratio:g} times its compressed size")
                self.total += len(chunk)
                if self.total > self.limits.max_total_bytes:
                    raise ArchiveRefused("too_large", f"uncompressed size exceeds {self.limits.max_total_bytes} bytes")
                if self.total / self.archive_bytes > self.limits.max_ratio:
                    raise ArchiveRefused("compression_ratio", f"compression ratio exceeds {self.limits.max_ratio:g} "
                                         f"(at member {str(rel)!r})")
                out.write(chunk)
        if first and _is_nested_archive(rel.name, b""):
            raise ArchiveRefused("nested_archive", f"member {str(rel)!r} is itself an archive")
        self.files += 1

    def mkdir(self, rel: PurePosixPath) -> None:
        self.tmp.joinpath(*rel.parts).mkdir(parents=True, exist_ok=True)


def _extract_zip(archive: Path, ex: _Extractor) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            ex.count_member()
            rel = safe_member_path(info.filename, ex.limits)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ArchiveRefused("link", f"member {info.filename!r} is a symbolic link")
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # no type bits: plain file
                raise ArchiveRefused("special_file", f"member {info.filename!r} is not a regular file")
            if rel is None:
                continue
            if info.is_dir():
                ex.mkdir(rel)
                continue
            with zf.open(info) as src:  # zipfile reads at most compress_size bytes of this member
                ex.write(rel, src, None if info.compress_type == zipfile.ZIP_STORED else lambda: info.compress_size)


def _gz_position(tf: tarfile.TarFile, ex: _Extractor) -> Callable[[], int]:
    """Compressed bytes of a tar.gz read since this member started (the raw file's position; the
    decompressor's read-ahead makes it an over-estimate by a few tens of KiB)."""
    raw = getattr(tf.fileobj, "fileobj", None)
    if raw is None:
        return lambda: ex.archive_bytes
    start = raw.tell()
    return lambda: raw.tell() - start


def _extract_tar(archive: Path, ex: _Extractor, mode: str) -> None:
    with tarfile.open(archive, mode) as tf:
        for info in tf:
            ex.count_member()
            rel = safe_member_path(info.name, ex.limits)
            if info.issym() or info.islnk():
                raise ArchiveRefused("link", f"member {info.name!r} is a {'symbolic' if info.issym() else 'hard'} link")
            if not (info.isfile() or info.isdir()):
                raise ArchiveRefused("special_file", f"member {info.name!r} is a device, FIFO or other special file")
            if rel is None:
                continue
            if info.isdir():
                ex.mkdir(rel)
                continue
            src = tf.extractfile(info)
            if src is None:
                raise ArchiveRefused("special_file", f"member {info.name!r} has no data")
            with src:
                ex.write(rel, src, _gz_position(tf, ex) if mode == "r:gz" else None)


def extract_archive(archive: str | Path, target: str | Path, limits: ExtractLimits = ExtractLimits()) -> ExtractResult:
    """Extract ``archive`` into the new directory ``target`` (which must not exist), all or nothing."""
    archive, target = Path(archive), Path(target)
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    kind = archive_kind(archive)
    tmp = target.parent / f".extract-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    ex = _Extractor(archive, tmp, limits)
    try:
        try:
            if kind == "zip":
                _extract_zip(archive, ex)
            else:
                _extract_tar(archive, ex, "r:gz" if kind == "tar.gz" else "r:")
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
            if isinstance(exc, FileExistsError):
                dup = Path(str(exc.filename))
                shown = dup.relative_to(tmp) if dup.is_relative_to(tmp) else dup.name
                raise ArchiveRefused("duplicate_member", f"a member appears twice: {shown}") from None
            # the reason without the server's temporary path (core.redact), bounded in length
            raise ArchiveRefused("corrupt_archive", f"the archive is damaged: {redact_text(str(exc))[:300]}") from None
        if ex.files == 0:
            raise ArchiveRefused("empty_archive", "the archive holds no files")
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return ExtractResult(kind, ex.members, ex.files, ex.total)
