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
PULSE_INTERVAL_S = 2.0
"""Seconds between two progress pulses when the parent does not say (``progress_pulse_s``: GAS_PROGRESS_PULSE_S)."""


def time_budget_s(spec) -> float:
    """A retrain's wall-clock budget (0: none), which ends its training phase when shorter than its epochs."""
    train = (spec or {}).get("train") if isinstance(spec, dict) else None
    return float((train or {}).get("time_budget_s") or 0.0)


def _stage(phase) -> object:
    """Phases timed together: a search's warm-up and search epochs are one run of ``epochs`` epochs."""
    return "search" if phase in ("warmup", "search") else phase


class Pulse:
    """The job's progress callback, plus a pulse: every ``interval_s`` the latest event is sent
    again with ``elapsed_s`` (job), ``phase_elapsed_s`` and ``eta_s`` (the phase's remaining time, from
    its epoch/step counters, capped by the time budget of a ``train`` phase), so no phase is silent
    (issue 13). Pulses carry no ``message``: they update the job's progress, not its event log."""

    def __init__(self, send, budget_s: float = 0.0, interval_s: float = PULSE_INTERVAL_S):
        self.send, self.budget_s, self.interval_s = send, budget_s, interval_s
        self.t0 = self.phase_t0 = self.last_sent = time.monotonic()
        self.last: dict = {}
        self.lock = threading.Lock()

    def _annotate(self, ev: dict, now: float) -> dict:
        out = {k: v for k, v in ev.items() if k != "message"} if ev is self.last else dict(ev)
        out["elapsed_s"] = round(now - self.t0, 1)
        out["phase_elapsed_s"] = round(now - self.phase_t0, 1)
        done = None
        if ev.get("steps") and ev.get("step") is not None:
            if ev.get("epochs") and ev.get("epoch") and ev.get("phase") in ("warmup", "search"):
                done = ((ev["epoch"] - 1) + ev["step"] / ev["steps"]) / ev["epochs"]  # per-epoch steps
            else:
                done = ev["step"] / ev["steps"]
        elif ev.get("epochs") and ev.get("epoch") is not None:
            done = ev["epoch"] / ev["epochs"]
        phase_s = now - self.phase_t0
        eta = phase_s * (1.0 - done) / done if done and 0.0 < done <= 1.0 else None
        if ev.get("phase") == "train" and self.budget_s > 0:
            left = max(0.0, self.budget_s - phase_s)
            eta = left if eta is None else min(eta, left)
        if eta is not None:
            out["eta_s"] = round(eta, 1)
        return out

    def __call__(self, ev: dict) -> None:
        now = time.monotonic()
        with self.lock:
            if _stage(ev.get("phase")) != _stage(self.last.get("phase")):
                self.phase_t0 = now
            self.last = dict(ev)
            self.last_sent = now
            out = self._annotate(ev, now)
        self.send(out)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s / 2):
            now = time.monotonic()
            with self.lock:
                if not self.last or now - self.last_sent < self.interval_s:
                    continue
                self.last_sent = now
                out = self._annotate(self.last, now)
            self.send(out)


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
    pulse = Pulse(lambda ev: send({"t": "progress", "event": redact(ev, roots)}), time_budget_s(job.get("spec")),
                  float(job.get("progress_pulse_s") or PULSE_INTERVAL_S))
    threading.Thread(target=pulse.run, args=(cancel,), daemon=True).start()
    kwargs = dict(progress=pulse, should_cancel=cancel.is_set)
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
