"""The supervised child process that runs one job attempt (``python -m worker.child``).

Protocol: the parent writes one JSON line on stdin (``kind``, ``target``, ``spec``, ``workdir``,
``lut_dir``); later stdin lines ``cancel`` ask for a cooperative stop. End-of-file on stdin means
the parent died: the child cancels itself and exits (hard after ``orphan_grace_s``). The child
answers JSON lines on its original stdout (``progress``, then one of ``result``/``cancelled``/
``error``); anything the job itself prints goes to stderr (the attempt log). Torch/CUDA are only
ever initialised here, never in the worker parent.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback

from worker.kinds import NEEDS_DATA_CACHE, NEEDS_LUT_DIR, resolve


def die_with_parent(parent_pid: int | None, sig: int = signal.SIGKILL) -> None:
    """Linux: this process gets ``sig`` when the process that started it dies (PR_SET_PDEATHSIG),
    even by SIGKILL; if that happened already (we were re-parented before the call), exit now."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig))  # PR_SET_PDEATHSIG
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(75)


def limit_memory(limit: int) -> None:
    """RLIMIT_DATA (heap, brk and private writable mappings; CUDA's PROT_NONE address-space
    reservations do not count, unlike RLIMIT_AS): past it allocations fail in this process only."""
    if limit <= 0:
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


MEMORY_ERROR_MARKS = ("can't allocate memory", "cannot allocate memory", "out of memory", "not enough memory",
                      "std::bad_alloc")


def memory_reason(exc: BaseException, limit: int) -> str | None:
    """The job's reason when ``exc`` is an allocation failure under the memory limit."""
    text = f"{type(exc).__name__}: {exc}".lower()
    if "cuda" in text or "gpu" in text:  # the device's memory, not this process's limit: the core's own message
        return None
    if limit > 0 and (isinstance(exc, MemoryError) or any(m in text for m in MEMORY_ERROR_MARKS)):
        return (f"out of memory: the job process is limited to {limit / 2**30:.2f} GiB "
                "(GAS_JOB_MEMORY_LIMIT_BYTES); lower the batch size, the crop or the network's channels")
    return None


def main() -> int:
    parent = os.environ.get("GAS_JOB_PARENT_PID")
    die_with_parent(int(parent) if parent and parent.isdigit() else None)
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints of the job go to the log, not into the protocol
    sys.stdout = sys.stderr
    lock = threading.Lock()

    def send(msg: dict) -> None:
        line = json.dumps(msg, default=str)
        with lock:
            proto.write(line + "\n")
            proto.flush()

    job = json.loads(sys.stdin.readline())
    memory_limit = int(job.get("memory_limit_bytes") or 0)
    limit_memory(memory_limit)
    # nothing the child reports (progress, errors) carries a server path: the job's known roots
    # become labels, any other absolute path its last component (core.redact, torch-free)
    from core.redact import job_roots, redact, redact_text

    roots = job_roots(job.get("spec"), job.get("workdir"), luts=job.get("lut_dir"), cache=job.get("data_cache_dir"))
    cancel = threading.Event()
    orphan_grace = float(job.get("orphan_grace_s", 30.0))

    def watch_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "cancel":
                cancel.set()
        cancel.set()  # EOF: the parent is gone; stop, and exit hard if the job does not
        time.sleep(orphan_grace)
        os._exit(75)

    threading.Thread(target=watch_stdin, daemon=True).start()

    fn = resolve(job["target"])
    kwargs = dict(progress=lambda ev: send({"t": "progress", "event": redact(ev, roots)}), should_cancel=cancel.is_set)
    if job["kind"] in NEEDS_LUT_DIR:
        kwargs["lut_dir"] = job["lut_dir"]
    if job["kind"] in NEEDS_DATA_CACHE and job.get("data_cache_dir"):
        kwargs["data_cache_dir"] = job["data_cache_dir"]
    try:
        from core.jobs import Cancelled
    except Exception:  # noqa: BLE001 - core not importable: its entry point will fail below anyway
        Cancelled = None  # type: ignore[assignment]
    try:
        result = fn(job["spec"], job["workdir"], **kwargs)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which owns the row
        if (Cancelled is not None and isinstance(exc, Cancelled)) or type(exc).__name__ == "Cancelled":
            send({"t": "cancelled"})
            return 0
        oom = memory_reason(exc, memory_limit)
        msg = f"{oom} ({type(exc).__name__})" if oom else f"{type(exc).__name__}: {exc}"
        send({"t": "error", "error": redact_text(msg, roots),
              "traceback": traceback.format_exc()})  # the traceback goes to the worker's own log only
        return 1
    send({"t": "result", "result": result if isinstance(result, dict) else {"value": result}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
