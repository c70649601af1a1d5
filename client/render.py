"""Human-readable output of the ``gas`` CLI (``--json`` prints the API's documents instead)."""
from __future__ import annotations

from typing import Any, Iterable


def table(rows: Iterable[dict], columns: list[tuple[str, str]]) -> str:
    """A plain aligned table: ``columns`` is [(key, header)]; missing values print as '-'."""
    rows = list(rows)
    cells = [[_cell(r.get(k)) for k, _ in columns] for r in rows]
    heads = [h for _, h in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    if not rows:
        lines.append("(none)")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _ts(v: Any) -> str | None:
    return str(v)[:19].replace("T", " ") if v else None


def _progress(job: dict) -> str:
    p = job.get("progress") or {}
    parts = [p.get("phase") or ""]
    if p.get("epochs"):
        parts.append(f"epoch {p.get('epoch') or 0}/{p['epochs']}")
    if p.get("steps"):
        parts.append(f"step {p.get('step') or 0}/{p['steps']}")
    return " ".join(x for x in parts if x) or "-"


def jobs_table(doc: dict) -> str:
    rows = []
    for j in doc.get("items") or []:
        r = j.get("result") or {}
        rows.append({"id": j["id"], "kind": j["kind"], "status": j["status"], "progress": _progress(j),
                     "miou": r.get("miou"), "latency_ms": r.get("latency_ms"), "created": _ts(j.get("created_at"))})
    out = table(rows, [("id", "ID"), ("kind", "KIND"), ("status", "STATUS"), ("progress", "PROGRESS"),
                       ("miou", "mIoU"), ("latency_ms", "LATENCY_MS"), ("created", "CREATED (UTC)")])
    if doc.get("next_offset") is not None:
        out += f"\n(more: --offset {doc['next_offset']})"
    return out


def job_detail(j: dict) -> str:
    lines = [f"job       {j['id']}", f"kind      {j['kind']}", f"status    {j['status']}"
             + (" (cancel requested)" if j.get("cancel_requested") and j["status"] != "cancelled" else ""),
             f"progress  {_progress(j)}"]
    p = j.get("progress") or {}
    if p.get("elapsed_s") is not None and j.get("status") in ("running", "cancelling"):
        lines.append(f"elapsed   {p['elapsed_s']:.0f}s (phase {p.get('phase_elapsed_s') or 0:.0f}s"
                     + (f", about {p['eta_s']:.0f}s left in it)" if p.get("eta_s") is not None else ")"))
    if p.get("message"):
        lines.append(f"message   {p['message']}")
    if p.get("metrics"):
        m = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in p["metrics"].items()
             if not isinstance(v, (dict, list))}
        if m:
            lines.append("metrics   " + "  ".join(f"{k}={v}" for k, v in m.items()))
    if j.get("budget"):
        b = j["budget"]
        lines.append("budget    " + "  ".join(f"{k}={v}" for k, v in b.items() if v is not None))
    if j.get("dataset_id"):
        lines.append(f"dataset   {j['dataset_id']}")
    if j.get("parent_job_id"):
        lines.append(f"parent    {j['parent_job_id']}")
    lines.append(f"attempts  {j.get('attempts')}/{j.get('max_attempts')}")
    for k in ("created_at", "started_at", "finished_at"):
        if j.get(k):
            lines.append(f"{k.split('_')[0]:<9} {_ts(j[k])} UTC")
    if j.get("error"):
        lines.append(f"error     {j['error']}")
    if j.get("warnings"):
        lines.append("warnings:")
        lines += [f"  - {w}" for w in j["warnings"]]
    r = j.get("result")
    if r:
        lines.append("result:")
        lines += [f"  {k:<24} {_cell(v)}" for k, v in r.items() if v is not None]
    return "\n".join(lines)


def datasets_table(doc: dict) -> str:
    rows = []
    for d in doc.get("items") or []:
        imgs = (d.get("stats") or {}).get("images") or {}
        rows.append({"id": d["id"], "name": d["name"], "status": d["status"], "layout": d["layout"],
                     "classes": d["num_classes"], "ignore": d["ignore_index"],
                     "images": " ".join(f"{k}={v}" for k, v in sorted(imgs.items())),
                     "warnings": len(d.get("warnings") or []), "created": _ts(d.get("created_at"))})
    out = table(rows, [("id", "ID"), ("name", "NAME"), ("status", "STATUS"), ("layout", "LAYOUT"),
                       ("classes", "CLASSES"), ("ignore", "IGNORE"), ("images", "IMAGES"),
                       ("warnings", "WARNINGS"), ("created", "CREATED (UTC)")])
    if doc.get("next_offset") is not None:
        out += f"\n(more: --offset {doc['next_offset']})"
    return out


def dataset_detail(d: dict) -> str:
    lines = [f"dataset     {d['id']}", f"name        {d['name']}", f"status      {d['status']}",
             f"layout      {d['layout']}", f"path        {d.get('path')}",
             f"classes     {d['num_classes']}" + (f" ({', '.join(d['class_names'])})" if d.get("class_names") else ""),
             f"ignore      {d['ignore_index']}"]
    if d.get("label_map"):
        lm = d["label_map"]
        txt = ", ".join(f"{k}->{v}" for k, v in (lm.get("values") or {}).items())
        if lm.get("ignore"):
            txt += "; ignored: " + ", ".join(lm["ignore"])
        if lm.get("unlisted") == "ignore":
            txt += "; other values ignored"
        lines.append(f"label map   {txt}")
    if d.get("same_archive_as"):
        lines.append(f"same files  as {', '.join(d['same_archive_as'])}")
    rep = d.get("report") or {}
    for split, info in (rep.get("splits") or {}).items():
        lines.append(f"split {split:<6}{info.get('images')} images, {info.get('valid')} valid"
                     + (f", {info['grayscale_images']} grayscale" if info.get("grayscale_images") else ""))
    if rep.get("class_frequency"):
        lines.append("class pixels " + "  ".join(f"{k}={v:.1%}" for k, v in rep["class_frequency"].items()))
    if rep.get("raw_values"):
        raw = list(rep["raw_values"].items())
        lines.append("raw values  " + ", ".join(k for k, _ in raw[:16]) + (" ..." if len(raw) > 16 else ""))
    if rep.get("error"):
        lines.append(f"error       {rep['error']}")
    for kind, files in (rep.get("bad_files") or {}).items():
        n = (rep.get("bad_counts") or {}).get(kind, len(files))
        lines.append(f"bad: {kind} ({n} files)")
        by_reason: dict[str, list[str]] = {}
        for f in files:
            by_reason.setdefault(f["reason"], []).append(f["file"])
        for reason, names in list(by_reason.items())[:5]:  # one line per distinct reason
            more = f" and {len(names) - 2} more" if len(names) > 2 else ""
            lines.append(f"  {', '.join(names[:2])}{more}: {reason}")
    if d.get("warnings"):
        lines.append("warnings:")
        lines += [f"  - {w}" for w in d["warnings"]]
    return "\n".join(lines)


def artifacts_table(items: list[dict]) -> str:
    return table([{**a, "sha256": a["sha256"][:16]} for a in items],
                 [("name", "NAME"), ("size", "BYTES"), ("content_type", "TYPE"), ("sha256", "SHA256 (first 16)")])
