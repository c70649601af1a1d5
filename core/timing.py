"""Synchronised timing (GAS.md §4 timing rules): warm-up, sync around every timed run, median."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

PRECISION_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
CUDNN_BENCHMARK = True
"""torch.backends.cudnn.benchmark for every job (LUT, end-to-end, FPS, training) [ours]: autotuned
kernels, as a deployment at fixed shapes runs them. The flag is process-global, so each job sets it
(:func:`set_cudnn_benchmark`) before it measures anything; the LUT context records it."""


@dataclass(frozen=True)
class TimingStats:
    median_ms: float
    p10_ms: float
    p90_ms: float
    count: int
    min_ms: float | None = None  # None: a timing recorded before the spread was kept
    noisy: bool = False  # p90/min above the job's noise threshold after every retry (core.noise)
    attempts: int = 1  # measurements taken (1 + retries of noisy ones)

    def as_dict(self) -> dict:
        return asdict(self)


def set_cudnn_benchmark() -> None:
    """Put the process-global cudnn.benchmark flag at :data:`CUDNN_BENCHMARK` (start of every job)."""
    torch.backends.cudnn.benchmark = CUDNN_BENCHMARK


def check_precision(precision: str, device: torch.device) -> None:
    if precision != "fp32" and device.type != "cuda":
        raise ValueError(f"precision {precision!r} is measured on CUDA only; this device is {device.type}")


def prepare(module: torch.nn.Module, inputs: list[torch.Tensor], device: torch.device,
            precision: str) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """Deployment form of a module and its inputs: eval mode, on ``device``, cast to ``precision``
    (the whole model, not autocast), channels_last on CUDA. The module is moved in place."""
    check_precision(precision, device)
    dtype = PRECISION_DTYPES.get(precision, torch.float32)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    module = module.to(device=device, dtype=dtype).eval().to(memory_format=fmt)
    return module, [t.to(device=device, dtype=dtype).contiguous(memory_format=fmt) for t in inputs]


def percentile(sorted_ms: list[float], q: float) -> float:
    """Linear-interpolated percentile of an ascending list."""
    pos = q * (len(sorted_ms) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo)


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, iters: int,
               burst: int = 1) -> list[float]:
    """Milliseconds per call of ``iters`` samples after ``warmup`` untimed calls. A sample times
    ``burst`` back-to-back calls (launches queue as they do inside a network) and divides; with
    ``burst=1`` each call is timed alone. On CUDA between two CUDA events with the stream drained
    after each sample, on CPU by the clock."""
    if iters < 1 or burst < 1:
        raise ValueError("iters and burst must be >= 1")
    if burst > 1:
        def one() -> None:
            for _ in range(burst):
                fn()
        return [t / burst for t in time_calls(one, device, max(1, warmup // burst), iters)]
    for _ in range(warmup):
        fn()
    times: list[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(iters):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000.0)
    return times


def time_callable(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int,
                  burst: int = 1) -> TimingStats:
    """Median, p10, p90 and minimum of :func:`time_calls`."""
    samples = sorted(time_calls(fn, device, warmup, repeats, burst))
    return TimingStats(statistics.median(samples), percentile(samples, 0.1), percentile(samples, 0.9), len(samples),
                       samples[0])


def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device | str) -> str:
    """The one device string of every report, table and summary: the GPU's name, or the CPU's model name
    (thread counts are recorded beside it, never in it)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model_name()


def software_versions() -> dict[str, str | None]:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": str(cudnn) if cudnn else None}
