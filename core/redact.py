"""No server path leaves a job: one rule for every message, error and report a tenant can read.

:func:`redact` rewrites strings (walking dicts and lists): first the known roots of a job (its work
dir, its dataset, the shared caches) become short labels (``<dataset>/train/x.png``, a work-dir
file relative to it), then any remaining absolute path keeps only its last component
(``…/x.png``). Used where reports are written (:mod:`core.pipeline`, :mod:`core.jobs`), where the
worker's child reports an error or progress, and where the service stores job errors and events.
Torch-free, so the API and the worker parent can import it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

ABS_PATH = re.compile(r"(?<![\w.~:/\\>…-])/[^\s'\"()\[\]{}<>,;|`]+")
"""An absolute POSIX path inside free text (not a URL's path, not a ratio like ``a/b``)."""
ELIDED = "…/"
"""What stands for the directories of an unknown absolute path."""


def _elide(m: re.Match) -> str:
    tail = m.group(0).rstrip("/.:").rsplit("/", 1)[-1]
    return ELIDED + tail if tail else ELIDED


def redact_text(text: str, roots: Mapping[str, str] | None = None) -> str:
    """``text`` with the ``roots`` (absolute path -> label; an empty label means "relative to it")
    replaced and every other absolute path elided to its last component."""
    for root, label in sorted((roots or {}).items(), key=lambda kv: -len(kv[0])):
        root = str(root).rstrip("/")
        if not root or root == "/":
            continue
        text = text.replace(root + "/", f"{label}/" if label else "")
        text = text.replace(root, label or ".")
    return ABS_PATH.sub(_elide, text)


def redact(obj: Any, roots: Mapping[str, str] | None = None) -> Any:
    """:func:`redact_text` applied to every string of ``obj`` (dict keys included), recursively."""
    if isinstance(obj, str):
        return redact_text(obj, roots)
    if isinstance(obj, dict):
        return {redact(k, roots) if isinstance(k, str) else k: redact(v, roots) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, roots) for v in obj]
    return obj


def job_roots(spec: Any = None, workdir: str | Path | None = None, **shared: str | Path | None) -> dict[str, str]:
    """The known roots of one job: its work dir (shown relative), its dataset (``<dataset>``), and
    any ``shared`` directories by name (``lut_dir=...`` -> ``<lut_dir>``), with their resolved forms."""
    roots: dict[str, str] = {}

    def add(path: str | Path | None, label: str) -> None:
        if not path:
            return
        for form in {str(path), str(Path(path).resolve())}:
            roots[form] = label

    dataset = spec.get("dataset") if isinstance(spec, dict) else getattr(spec, "dataset", None)
    root = dataset.get("root") if isinstance(dataset, dict) else getattr(dataset, "root", None)
    add(root, "<dataset>")
    for name, path in shared.items():
        add(path, f"<{name}>")
    add(workdir, "")
    return roots
