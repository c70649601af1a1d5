"""Issue 11: one measuring job per device at a time (core/device_lock.py), and tables re-measured when
their identity (runtime, versions, threads) changes.

Real processes, real file locks, real timings; no server (the same lock serves the embedded mode,
the docker deployment and the local CLI)."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from core.device_lock import DeviceLock, LockCancelled, default_lock_dir, device_key
from core.jobs import Cancelled
from core.latency import LatencyTable, table_path
from core.lut_trust import trusted_table
from core.ops import op_names
from core.specs import LatencyConfig, NetworkConfig

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
NET = {"num_cells": 3, "reduction_cells": [1], "nodes": 2, "init_channels": 8, "stem_channels": 8,
       "head_channels": 16, "low_level_channels": 8}
H, W = 32, 48
# checks that always pass: these tests are about who measures when, not about the host's load
LENIENT = {"height": H, "width": W, "warmup_runs": 1, "repeats": 5, "e2e_repeats": 5, "lut_check_networks": 2,
           "noise_max_ratio": 1e9, "noise_max_median_ratio": 1e9, "lut_max_error": 100.0, "lut_min_rank_corr": -1.0, "noise_retry_pause_s": 0.0}


def _overlap(a: dict, b: dict) -> bool:
    return a["acquired_at"] < b["released_at"] and b["acquired_at"] < a["released_at"]


def test_two_feasibility_jobs_at_once_measure_one_after_the_other_and_the_second_reuses_the_table(tmp_path):
    """Two real job processes start together on one device with one LUT directory: their timing phases
    never overlap, one waits (and says so), and the one that waited reuses the table the other measured
    instead of measuring it a second time."""
    spec = {"network": NET, "latency": LENIENT, "repeats": 5, "typical_samples": 8}
    go = tmp_path / "go"
    script = ("import json, sys, time, pathlib\n"
              "from core.jobs import run_feasibility\n"
              "go = pathlib.Path(sys.argv[3])\n"
              "while not go.exists(): time.sleep(0.01)\n"
              "ev = []\n"
              f"r = run_feasibility({spec!r}, sys.argv[1], lut_dir=sys.argv[2], progress=ev.append)\n"
              "print(json.dumps({'events': ev}))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"job{i}"), str(tmp_path / "luts"), str(go)],
                              env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    time.sleep(3.0)  # both imported torch and wait at the start line
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    reports = [json.loads((tmp_path / f"job{i}" / "artifacts" / "report.json").read_text()) for i in range(2)]
    events = [json.loads(o[0].strip().splitlines()[-1])["events"] for o in outs]
    holds = [r["device_lock"]["holds"] for r in reports]
    assert reports[0]["device_lock"]["device_key"] == reports[1]["device_lock"]["device_key"]
    assert {h["phase"] for h in holds[0]} == {"latency_table", "end_to_end"}
    for a in holds[0]:
        for b in holds[1]:
            assert not _overlap(a, b), (a, b)
    trust = [r["lut"]["trust"] for r in reports]
    measured = [i for i in range(2) if not trust[i]["cached"]]
    assert len(measured) == 1, trust  # exactly one job measured the table...
    other = 1 - measured[0]
    assert trust[other]["cached"] and not trust[other]["validated"]  # ...the other reused it, unmeasured
    assert not [e for e in events[other] if e.get("phase") in ("latency_table", "validate_lut")]
    table_hold = next(h for h in holds[measured[0]] if h["phase"] == "latency_table")
    if reports[other]["device_lock"]["waited_s"] > 0:  # how long depends on the machine: no timed bound
        assert any(e.get("phase") == "device_lock" and "waiting for the device" in e["message"] for e in events[other])
    else:  # on a busy host the other job can reach the device only after the table is done: nothing to wait for
        assert min(h["acquired_at"] for h in holds[other]) >= table_hold["released_at"], (holds, table_hold)
    assert reports[0]["feasibility"]["table"]["id"] == reports[1]["feasibility"]["table"]["id"]


def test_the_lock_is_per_device_reentrant_cancellable_and_dies_with_its_holder(tmp_path):
    key = device_key(CPU)
    assert key.startswith("cpu-") and key == device_key(torch.device("cpu"))
    out = subprocess.run([sys.executable, "-c", "import torch; from core.device_lock import device_key; "
                                                "print(device_key(torch.device('cpu')))"],
                         env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == key  # every process on this host shares the CPU's lock
    assert default_lock_dir(tmp_path) == tmp_path / "locks"

    lock = DeviceLock.for_device(CPU, tmp_path / "locks")
    with lock.hold("outer"):
        with lock.hold("inner"):  # re-entrant: no deadlock on its own lock
            pass
    assert [h["phase"] for h in lock.holds] == ["outer"]

    # another process holds the device: a cancelled job stops waiting (as Cancelled), it does not hang
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time, torch\nfrom core.device_lock import DeviceLock\n"
                               f"l = DeviceLock.for_device(torch.device('cpu'), {str(tmp_path / 'locks')!r})\n"
                               "with l.hold('x'):\n    print('held', flush=True)\n    time.sleep(600)\n"],
                              env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cancel = threading.Event()
        events = []
        waiter = DeviceLock.for_device(CPU, tmp_path / "locks", events.append, cancel.is_set)
        threading.Timer(0.5, cancel.set).start()
        t0 = time.monotonic()
        with pytest.raises(LockCancelled):
            with waiter.hold("fps"):
                pass
        assert 0.4 < time.monotonic() - t0 < 5 and issubclass(LockCancelled, Cancelled)
        assert events and "waiting for the device" in events[0]["message"]
        # SIGKILL of the holder releases the device at once (no stale lock file to clean up)
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        after = DeviceLock.for_device(CPU, tmp_path / "locks")
        with after.hold("fps"):
            pass
        assert after.holds[0]["waited_s"] < 2.0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_change_of_threads_runtime_or_versions_is_another_table_and_is_measured_again(tmp_path):
    """The table identity (core.latency.LutContext) holds the runtime, the torch/CUDA/cuDNN versions and
    both thread counts: a job under other settings never reuses a table, and a file whose recorded
    identity does not match its name (copied from another machine or software) is measured again."""
    cfg, ops = NetworkConfig(num_classes=11, **NET), op_names()
    lat = LatencyConfig(**LENIENT, intra_op_threads=1)
    table, trust = trusted_table(cfg, ops, lat, CPU, tmp_path, seed=0)
    assert trust.saved and not trust.cached
    again, trust = trusted_table(cfg, ops, lat, CPU, tmp_path, seed=0)
    assert trust.cached and again.id == table.id  # same identity: reused

    two = lat.model_copy(update={"intra_op_threads": 2})
    other, trust = trusted_table(cfg, ops, two, CPU, tmp_path, seed=0)
    assert not trust.cached and other.id != table.id and other.context.intra_op_threads == 2
    assert len(list(tmp_path.glob("lut-*.json"))) == 2

    # a table of another torch version / runtime placed under this identity's name is not reused
    path = table_path(tmp_path, table.context)
    for change in ({"torch": "0.0.1"}, {"runtime": "onnxruntime"}, {"inter_op_threads": 7}):
        foreign = LatencyTable(dataclasses.replace(table.context, **change), dict(table.entries), dict(table.validations))
        foreign.save(path)
        events = []
        fresh, trust = trusted_table(cfg, ops, lat, CPU, tmp_path, seed=0, progress=events.append)
        assert not trust.cached, change
        assert any(e["phase"] == "latency_table" for e in events), change
        assert fresh.context == table.context
        assert LatencyTable.load(path).context == fresh.context  # the re-measured table replaced it
