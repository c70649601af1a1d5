"""TEST-ONLY stand-ins for the core entry points, wired in with GAS_JOB_KIND_OVERRIDES so that the
fault-injection tests (cancel, crash, duplicate delivery, lost messages) are fast and deterministic.
They honour the core contract (core/jobs.py): progress events, should_cancel polled between steps,
checkpoint in workdir/state written atomically at epoch ends, resume from it, artifacts written
atomically into workdir/artifacts, Cancelled raised on cancel.

Behaviour switches ride on the search seed (spec['search']['seed']):
  0..999  normal; 1001 never polls should_cancel; 1002 the process SIGKILLs itself in epoch 1;
  1003 raises ValueError; 1004 SIGKILLs its worker (the parent process) and itself in epoch 1;
  1005 allocates 3 GiB in epoch 1 (past a job memory limit); 1006 SIGKILLs itself once, at the start of
  epoch epochs//2 + 1 (the next attempt resumes and runs the other half).
  The result records when the attempt ran (``ran``: [start, end], time.time()) and its pid.
  Step time = 0.05 s x batch_size; steps per epoch = steps_per_epoch or 4.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from core.jobs import Cancelled


def _atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fake_search(spec, workdir, *, progress, should_cancel, lut_dir=None, data_cache_dir=None):
    wd = Path(workdir)
    s = spec["search"]
    mode, epochs = s["seed"], s["epochs"]
    steps = s["steps_per_epoch"] or 4
    step_s = 0.05 * s["batch_size"]
    state = wd / "state" / "counter.json"
    start = json.loads(state.read_text())["epoch"] + 1 if state.exists() else 1
    resumed = start - 1 if start > 1 else None
    t_start = time.time()
    progress({"phase": "data", "message": f"fake search starting at epoch {start}"})
    for epoch in range(start, epochs + 1):
        for step in range(1, steps + 1):
            if mode != 1001 and should_cancel():
                raise Cancelled()
            if mode == 1002:
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == 1006 and epoch == epochs // 2 + 1 and not (wd / "state" / "killed_once").exists():
                (wd / "state" / "killed_once").write_text("1")
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == 1004:  # take the whole worker down: its Celery process (our parent), then us
                os.kill(os.getppid(), signal.SIGKILL)
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == 1003:
                raise ValueError("fake failure for tests")
            if mode == 1005:
                hog = bytearray(3 * 2**30)  # noqa: F841 - MemoryError under GAS_JOB_MEMORY_LIMIT_BYTES
                hog[::4096] = b"x" * len(hog[::4096])
            time.sleep(step_s)
            progress({"phase": "search", "epoch": epoch, "epochs": epochs, "step": step, "steps": steps,
                      "metrics": {"w_loss": 1.0 / (epoch * steps + step)}, "expected_latency_ms": 4.2})
        _atomic_json(state, {"epoch": epoch})
        progress({"phase": "search", "epoch": epoch, "epochs": epochs, "step": steps, "steps": steps,
                  "message": f"epoch {epoch}/{epochs} done"})
    if lut_dir:
        lat = spec["latency"]
        _atomic_json(Path(lut_dir) / f"fake-lut-{lat['height']}x{lat['width']}.json",
                     {"context": {"device": "fake-device", "height": lat["height"], "width": lat["width"],
                                  "precision": lat["precision"]}, "entries": [{"k": 1}, {"k": 2}]})
    budget = spec["latency"]["budget_ms"]
    _atomic_json(wd / "artifacts" / "genotype.json", {"fake": True, "cells": [], "epochs": epochs})
    _atomic_json(wd / "artifacts" / "report.json", {"kind": "search", "measured_latency_ms": 3.0,
                                                    "budget_ms": budget, "resumed_from_epoch": resumed})
    return {"measured_latency_ms": 3.0, "fps": 333.3, "budget_ms": budget, "budget_met": 3.0 <= budget,
            "resumed_from_epoch": resumed, "supernet_miou": 0.5, "ran": [t_start, time.time()], "pid": os.getpid()}


def fake_feasibility(spec, workdir, *, progress, should_cancel, lut_dir=None):
    """A feasibility job's contract without timing anything (the fuzzing and API tests of the fake stack
    submit feasibility jobs of any size; the real one is tested in test_svc_latency.py)."""
    if should_cancel():
        raise Cancelled()
    progress({"phase": "measure", "message": "fake feasibility"})
    doc = {"device": "fake", "runtime": "torch-eager", "networks": {n: {"lut_ms": ms} for n, ms in
                                                                    (("cheapest", 1.0), ("typical", 2.0), ("dearest", 3.0))}}
    _atomic_json(Path(workdir) / "artifacts" / "feasibility.json", doc)
    return {"feasibility": doc, "device": "fake", "measurements_trusted": True}
