"""Is the GPU idle before we time on it? (issue 11: "on CUDA the device is checked idle").

The device lock (core/device_lock.py) keeps two of *our* jobs from timing on one device at once; this
check sees every other process on the GPU, ours or not (a notebook, another service), through NVML:
``pynvml`` when it is installed, else ``nvidia-smi --query-compute-apps``. The answer lists the
processes (pid, used memory) and counts the others: this process holds a CUDA context while it times,
so it is listed once (under a host pid in a container, where it cannot be told apart by pid). When
neither tool can answer, the check says so (``checked: false``): unknown is never taken for idle.

Torch is imported only to find the GPU's UUID.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import Callable

Query = Callable[[str], "list[dict] | None"]
"""GPU UUID (``GPU-...``) -> every compute process on it (``{"pid", "used_memory_mib"}``), or None if unknown."""


def gpu_uuid(device) -> str:
    import torch

    index = device.index if getattr(device, "index", None) is not None else torch.cuda.current_device()
    uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", ""))
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


def _pynvml(uuid: str) -> list[dict] | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - any NVML failure means "unknown", never "idle"
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
        procs = list(pynvml.nvmlDeviceGetComputeRunningProcesses(handle))
        return [{"pid": int(p.pid), "used_memory_mib": (p.usedGpuMemory or 0) // 2**20} for p in procs]
    except Exception:  # noqa: BLE001
        return None
    finally:
        pynvml.nvmlShutdown()


def parse_nvidia_smi(text: str) -> list[dict]:
    """Rows of ``nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits``."""
    rows = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0].isdigit():
            rows.append({"pid": int(parts[0]), "used_memory_mib": int(parts[1]) if parts[1].isdigit() else None})
    return rows


def _nvidia_smi(uuid: str) -> list[dict] | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, f"--id={uuid}", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_nvidia_smi(out.stdout) if out.returncode == 0 else None


def query_gpu_processes(uuid: str) -> list[dict] | None:
    found = _pynvml(uuid)
    return found if found is not None else _nvidia_smi(uuid)


def idle_check(uuid: str, query: Query = query_gpu_processes) -> dict:
    """``{"checked", "processes", "others", "idle"}``: ``others`` counts the processes besides this one
    (which holds a CUDA context when it times, so it is listed once, under a host pid in a container)."""
    procs = query(uuid)
    if procs is None:
        return {"checked": False, "processes": None, "others": None, "idle": None,
                "note": "neither pynvml nor nvidia-smi could list the GPU's processes"}
    me = os.getpid()
    if any(p["pid"] == me for p in procs):
        others = sum(p["pid"] != me for p in procs)
    else:  # in a container NVML lists host pids: this process is one of them (it holds a context)
        others = max(0, len(procs) - 1)
    return {"checked": True, "processes": procs, "others": others, "idle": others == 0}
