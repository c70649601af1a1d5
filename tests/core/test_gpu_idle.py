"""Issue 11: on CUDA the device is checked idle before timing (core/gpu_idle.py, core/device_lock.py).

This machine has no GPU: NVML's answer is replaced by a function returning what NVML or nvidia-smi
would list (a mock, because the real thing cannot run here); the parsing of nvidia-smi's output, the
counting and what a hold records and reports are real.
"""
from __future__ import annotations

import os

from core.device_lock import DeviceLock
from core.gpu_idle import idle_check, parse_nvidia_smi


def test_nvidia_smi_rows_are_parsed_and_the_caller_is_not_counted():
    rows = parse_nvidia_smi("4242, 1500\n777, 300\n")
    assert rows == [{"pid": 4242, "used_memory_mib": 1500}, {"pid": 777, "used_memory_mib": 300}]
    assert parse_nvidia_smi("") == [] and parse_nvidia_smi("No running processes found") == []
    assert idle_check("GPU-x", lambda u: rows[:1]) == {"checked": True, "processes": rows[:1], "others": 0, "idle": True}
    busy = idle_check("GPU-x", lambda u: rows)
    assert busy["others"] == 1 and busy["idle"] is False
    me = os.getpid()  # when this process is listed by its own pid, exactly the others are counted
    assert idle_check("GPU-x", lambda u: [{"pid": me, "used_memory_mib": 5}])["idle"] is True
    assert idle_check("GPU-x", lambda u: [{"pid": me, "used_memory_mib": 5}] + rows)["others"] == 2
    unknown = idle_check("GPU-x", lambda u: None)
    assert unknown["checked"] is False and unknown["idle"] is None  # unknown is never "idle"


def test_a_hold_on_a_shared_gpu_is_recorded_and_reported(tmp_path):
    events: list[dict] = []
    answers = iter([[{"pid": 1, "used_memory_mib": 10}],
                    [{"pid": 1, "used_memory_mib": 10}, {"pid": 2, "used_memory_mib": 900}]])
    lock = DeviceLock(tmp_path, "cuda-GPU-test", events.append, idle=lambda: idle_check("GPU-test", lambda u: next(answers)))
    with lock.hold("latency_table"):
        pass
    with lock.hold("fps"):
        pass
    doc = lock.as_dict()
    assert doc["holds"][0]["gpu"]["idle"] and doc["holds"][1]["gpu"]["others"] == 1
    assert doc["gpu_shared_phases"] == ["fps"]
    noise = [e for e in events if e["phase"] == "noise"]
    assert len(noise) == 1 and "fps" in noise[0]["message"] and "2" in noise[0]["message"]
    # the CPU has no such check: nothing recorded, nothing claimed
    cpu = DeviceLock(tmp_path, "cpu-test")
    with cpu.hold("fps"):
        pass
    assert "gpu" not in cpu.as_dict()["holds"][0] and "gpu_shared_phases" not in cpu.as_dict()
    blind = DeviceLock(tmp_path, "cuda-GPU-blind", events.append, idle=lambda: idle_check("GPU-blind", lambda u: None))
    with blind.hold("fps"):
        pass
    assert blind.as_dict()["gpu_unchecked_phases"] == ["fps"] and blind.as_dict()["gpu_shared_phases"] == []
