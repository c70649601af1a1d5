"""One measuring job per device at a time (issue 11): a per-device file lock around every timing phase.

Two jobs timing on the same device at once make each other's numbers wrong (and the noise verdict
then throws both away). Every timing phase of a job (its LUT measurement and validation, the repair's
end-to-end measurements, the FPS report, a feasibility job's timings) runs inside
:meth:`DeviceLock.hold`, an exclusive ``fcntl.flock`` on ``<lock_dir>/measure-<device key>.lock``.

- The key names the *physical* device, not its model: ``cuda-<GPU UUID>`` (two containers pinned to
  two GPUs never share a key; two jobs on one GPU always do) and ``cpu-<kernel boot id>`` (every
  process and container on one host shares the kernel's boot id, so they share the CPU's lock, while
  two hosts with the same CPU model do not).
- A file lock needs no server, so it works the same in the embedded mode (SQLite, no Redis), in the
  docker-compose deployment (the lock directory lies in the shared data volume) and for the local CLI.
  The kernel drops the lock when its holder dies (SIGKILL included): no stale lock to clean up.
- Waiting is cooperative: the job polls every :data:`POLL_S`, says that it waits (a ``device_lock``
  progress event naming the phase), and stops waiting when it is cancelled.
- Holding is re-entrant within a process (a phase inside a phase does not deadlock on its own lock).
- Every hold is recorded (phase, seconds waited, wall-clock start and end), and the job's report
  carries the list (``device_lock``), so overlapping timings are visible after the fact.
- On CUDA each hold also checks that the GPU is otherwise idle (:mod:`core.gpu_idle`: every process on
  it, ours or not): other processes are recorded in the hold (``gpu``), listed in
  ``gpu_shared_phases`` and reported as a ``noise`` progress event.

Torch is imported only to name a CUDA device.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .jobs import Cancelled

POLL_S = 0.1
"""Seconds between two attempts to take a device lock held by another job."""
LOCK_SUBDIR = "locks"
"""Where the locks lie under a LUT directory (the service's GAS_LUT_DIR, shared by its workers)."""

_held: dict[str, tuple[int, int]] = {}  # lock path -> (fd, depth): re-entrancy within this process


class LockCancelled(Cancelled):
    """The job was cancelled while it waited for the device."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # not Linux: the host name is the best machine identity left
        import socket

        return socket.gethostname()


def device_key(device) -> str:
    """``cuda-<uuid>`` for a CUDA device, ``cpu-<boot id>`` for the CPU (file-name safe)."""
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        import torch

        index = device.index if getattr(device, "index", None) is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        ident = str(getattr(props, "uuid", "") or f"{props.name}-{index}")
        key = f"cuda-{ident}"
    else:  # hashed: the key is shown in reports, the host's identity need not be
        key = f"{kind}-{hashlib.sha256(_boot_id().encode()).hexdigest()[:16]}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:120]


def default_lock_dir(lut_dir: str | Path | None) -> Path:
    """``<lut_dir>/locks`` (shared by the service's workers), else a machine-wide temporary directory."""
    return Path(lut_dir) / LOCK_SUBDIR if lut_dir else Path(tempfile.gettempdir()) / "gas-measure-locks"


@dataclass
class DeviceLock:
    """The measuring lock of one device, as one job holds it phase after phase."""

    lock_dir: Path
    key: str
    progress: Callable[[dict], None] = lambda e: None
    should_cancel: Callable[[], bool] = lambda: False
    holds: list[dict] = field(default_factory=list)
    idle: Callable[[], dict] | None = None  # CUDA: who else is on the GPU (core/gpu_idle.py), checked per hold

    @classmethod
    def for_device(cls, device, lock_dir: str | Path, progress: Callable[[dict], None] = lambda e: None,
                   should_cancel: Callable[[], bool] = lambda: False) -> "DeviceLock":
        idle = None
        if getattr(device, "type", str(device)) == "cuda":
            from .gpu_idle import gpu_uuid, idle_check

            uuid = gpu_uuid(device)

            def idle() -> dict:
                import torch

                torch.empty(1, device=device)  # this process holds its context before it is counted
                return idle_check(uuid)
        return cls(Path(lock_dir), device_key(device), progress, should_cancel, idle=idle)

    @property
    def path(self) -> Path:
        return self.lock_dir / f"measure-{self.key}.lock"

    @contextlib.contextmanager
    def hold(self, phase: str) -> Iterator[None]:
        path = str(self.path)
        if path in _held:  # re-entrant: the outer phase already holds the device
            fd, depth = _held[path]
            _held[path] = (fd, depth + 1)
            try:
                yield
            finally:
                fd, depth = _held[path]
                _held[path] = (fd, depth - 1)
            return
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        t0 = time.monotonic()
        said = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if self.should_cancel():
                        raise LockCancelled(f"cancelled while waiting for the device ({phase})") from None
                    if not said:
                        self.progress({"phase": "device_lock", "message": f"waiting for the device: another job is "
                                                                          f"measuring on it ({phase} waits)"})
                        said = True
                    time.sleep(POLL_S)
        except BaseException:
            os.close(fd)
            raise
        waited = time.monotonic() - t0
        record = {"phase": phase, "waited_s": round(waited, 3), "acquired_at": time.time(), "released_at": None}
        if self.idle is not None:
            record["gpu"] = check = self.idle()
            if check["others"]:
                pids = ", ".join(str(p["pid"]) for p in check["processes"])
                self.progress({"phase": "noise", "noisy": True,
                               "message": f"{check['others']} other process(es) on the GPU while {phase} measures "
                                          f"(pids {pids}): its timings may be slowed; give this worker a GPU of its "
                                          f"own (CUDA_VISIBLE_DEVICES) or stop the other processes"})
        _held[path] = (fd, 1)
        try:
            yield
        finally:
            _held.pop(path, None)
            record["released_at"] = time.time()
            self.holds.append(record)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def as_dict(self) -> dict:
        """What the report carries: the device key (no path) and every hold."""
        shared = [h["phase"] for h in self.holds if (h.get("gpu") or {}).get("others")]
        unchecked = [h["phase"] for h in self.holds if "gpu" in h and not h["gpu"]["checked"]]
        return {"device_key": self.key, "holds": list(self.holds),
                "waited_s": round(sum(h["waited_s"] for h in self.holds), 3),
                **({"gpu_shared_phases": shared, "gpu_unchecked_phases": unchecked} if self.idle is not None else {})}
