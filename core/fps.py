"""End-to-end speed of a network at batch 1 (GAS.md §8): eager and optimised, with the context.

Every timed iteration is one forward pass of a ``[1, 3, H, W]`` input in eval mode under
``torch.no_grad()``, timed alone: on CUDA between two CUDA events with the stream drained after
each pass (so passes never overlap), on CPU with ``time.perf_counter``. Warm-up passes come first
and are not timed. Reduced precision (fp16/bf16) means the whole model and input cast to that dtype
(deployment style, not autocast) and is measured on CUDA only.

Optimised path: CUDA graphs on CUDA (falling back to ``torch.compile``); on CPU a frozen
``torch.jit.trace`` (``torch.compile`` on CPU needs a C++ toolchain and minutes of compilation, so
it is not attempted there). A path that fails is reported as ``"unavailable: <reason>"``.
"""
from __future__ import annotations

import copy
import statistics
import warnings
from typing import Callable, Literal

import torch
from torch import nn

from .noise import DEFAULT_POLICY, NoisePolicy, is_noisy, measure_until_quiet, noise_ratio
from .threads import Threads, measuring
from .timing import PRECISION_DTYPES, device_name, percentile, prepare, time_calls

DEFAULT_WARMUP = 10
"""Untimed forward passes before measuring."""
DEFAULT_ITERS = 50
"""Timed forward passes of one measurement."""
PERCENTILE_HIGH = 0.9
"""The tail percentile reported beside the median (p90)."""
CUDA_GRAPH_WARMUP = 3
"""Passes on a side stream before a CUDA graph is captured (lets cuDNN pick its algorithms)."""

Precision = Literal["fp32", "fp16", "bf16"]


def latency_stats(times_ms: list[float]) -> dict:
    """``{"median_ms", "p90_ms", "mean_ms", "min_ms", "count", "fps", "noise_ratio"}`` (fps = 1000 / median;
    None if the median is 0, keeping reports valid JSON; noise_ratio = p90/min, see core.noise)."""
    if not times_ms:
        raise ValueError("no timings")
    s = sorted(times_ms)
    med = statistics.median(s)
    p90 = percentile(s, PERCENTILE_HIGH)
    return {"median_ms": med, "p90_ms": p90, "mean_ms": statistics.fmean(s),
            "min_ms": s[0], "count": len(s), "fps": 1000.0 / med if med > 0 else None,
            "noise_ratio": noise_ratio(s[0], p90)}


def timed_stats(fn: Callable[[], object], device: torch.device, warmup: int, iters: int,
                noise: NoisePolicy | None, threads: Threads | None) -> dict:
    """:func:`latency_stats` of ``fn`` under ``threads``, re-measured while noisy (bounded by ``noise``;
    None = :data:`core.noise.DEFAULT_POLICY`), with ``noisy``, ``attempts`` and ``threads`` added."""
    policy = noise or DEFAULT_POLICY

    def once() -> dict:
        with measuring(threads) as used:
            return {**latency_stats(time_calls(fn, device, warmup, iters)), "threads": used.as_dict()}

    stats, attempts, noisy = measure_until_quiet(once, lambda d: is_noisy(d["min_ms"], d["p90_ms"], policy, d["median_ms"]),
                                                 policy)
    return {**stats, "noisy": noisy, "attempts": attempts}


def _prepared(model: nn.Module, height: int, width: int, device: torch.device,
              precision: str) -> tuple[nn.Module, torch.Tensor]:
    """An eval-mode copy of ``model`` in ``precision`` on ``device`` and a matching random input."""
    if precision not in ("fp32", *PRECISION_DTYPES):
        raise ValueError(f"unknown precision {precision!r}")
    m, (x,) = prepare(copy.deepcopy(model), [torch.randn(1, 3, height, width)], device, precision)
    return m, x


def measure_latency(model: nn.Module, height: int, width: int, device: torch.device | str,
                    precision: Precision = "fp32", warmup: int = DEFAULT_WARMUP, iters: int = DEFAULT_ITERS, *,
                    noise: NoisePolicy | None = None, threads: Threads | None = None,
                    runtime: str = "torch-eager") -> dict:
    """Batch-1 latency in ``runtime`` (core/runtimes.py; torch eager by default): :func:`timed_stats`
    plus precision, resolution, batch and runtime."""
    device = torch.device(device)
    if runtime == "torch-eager":
        m, x = _prepared(model, height, width, device, precision)
        with torch.no_grad():
            stats = timed_stats(lambda: m(x), device, warmup, iters, noise, threads)
    else:
        from .runtimes import callable_for

        with measuring(threads):
            fn = callable_for(runtime, model, [torch.randn(1, 3, height, width)], device, precision, threads)
        stats = timed_stats(fn, device, warmup, iters, noise, threads)
    return {**stats, "precision": precision, "height": height, "width": width, "batch": 1,
            "mode": "eager" if runtime == "torch-eager" else runtime, "runtime": runtime}


def runtime_key(runtime: str) -> str:
    """Where an FPS report keeps a runtime's timing under ``measurements[precision]``."""
    return "eager" if runtime == "torch-eager" else runtime


def reference_measurement(report: dict) -> dict:
    """The FPS report's timing its verdict refers to: the budget's runtime at its reference precision."""
    return report["measurements"][report["reference_precision"]][runtime_key(report.get("runtime", "torch-eager"))]


# --------------------------------------------------------------------------------------------
# Optimised paths
# --------------------------------------------------------------------------------------------

def _cuda_graph(m: nn.Module, xs: list[torch.Tensor]) -> Callable[[], object]:
    dev = xs[0].device
    stream = torch.cuda.Stream(device=dev)
    stream.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(stream):
        for _ in range(CUDA_GRAPH_WARMUP):
            m(*xs)
    torch.cuda.current_stream(dev).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        m(*xs)
    graph.replay()
    torch.cuda.synchronize(dev)
    return graph.replay


def _compiled(m: nn.Module, xs: list[torch.Tensor]) -> Callable[[], object]:
    if not hasattr(torch, "compile"):
        raise RuntimeError("torch.compile is not available in this torch")
    cm = torch.compile(m)
    cm(*xs)  # compilation happens (and fails) here
    return lambda: cm(*xs)


def _jit(m: nn.Module, xs: list[torch.Tensor]) -> Callable[[], object]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.freeze(torch.jit.trace(m, tuple(xs), check_trace=False))
        traced(*xs)
    return lambda: traced(*xs)


OPTIMISERS: dict[str, Callable[[nn.Module, list[torch.Tensor]], Callable[[], object]]] = {
    "cuda_graphs": _cuda_graph, "torch_compile": _compiled, "jit_trace_freeze": _jit}
"""Optimised paths: an eval module and its inputs (prepared, on the device) -> a zero-argument call."""


def optimised_methods(device: torch.device) -> list[str]:
    """The optimised paths tried in order on ``device``."""
    return ["cuda_graphs", "torch_compile"] if device.type == "cuda" else ["jit_trace_freeze"]


def measure_optimised(model: nn.Module, height: int, width: int, device: torch.device | str,
                      precision: Precision = "fp32", warmup: int = DEFAULT_WARMUP, iters: int = DEFAULT_ITERS,
                      methods: list[str] | None = None, *, noise: NoisePolicy | None = None,
                      threads: Threads | None = None) -> dict:
    """Latency of the first optimised path that works, and why the others did not.

    Returns ``{"method", "status": "ok" | "unavailable: <reasons>", "attempts": {method: status}, ...stats}``.
    """
    device = torch.device(device)
    attempts: dict[str, str] = {}
    for name in methods or optimised_methods(device):
        m, x = _prepared(model, height, width, device, precision)
        try:
            with torch.no_grad(), measuring(threads):
                fn = OPTIMISERS[name](m, [x])
            with torch.no_grad():
                stats = timed_stats(fn, device, warmup, iters, noise, threads)
        except Exception as exc:  # reported, never silent
            attempts[name] = f"unavailable: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            continue
        attempts[name] = "ok"
        return {**stats, "method": name, "status": "ok", "attempts": attempts,
                "precision": precision, "mode": "optimised"}
    reasons = "; ".join(f"{k}: {v}" for k, v in attempts.items())
    return {"method": None, "status": f"unavailable: {reasons}", "attempts": attempts, "precision": precision,
            "mode": "optimised"}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def environment(device: torch.device | str) -> dict:
    """Device name and software versions a speed number depends on."""
    device = torch.device(device)
    is_cuda = device.type == "cuda"
    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cpu_threads": torch.get_num_threads(),
    }


def fps_report(model: nn.Module, height: int, width: int, device: torch.device | str, iters: int = DEFAULT_ITERS,
               lut_prediction_ms: float | None = None, budget_ms: float | None = None, *,
               precision: Precision = "fp32", warmup: int = DEFAULT_WARMUP, optimise: bool = True,
               noise: NoisePolicy | None = None, threads: Threads | None = None, runtime: str = "torch-eager",
               all_runtimes: bool = True) -> dict:
    """Batch-1 speed report: eager and optimised, fp32 (and fp16 on CUDA), every other runtime the
    worker has (``all_runtimes``: onnxruntime on the CPU, fp32) side by side, with the LUT beside it.

    ``precision`` and ``runtime`` are the ones the LUT and the budget refer to; ``budget_met`` compares
    that runtime's median at that precision (the way the LUT is measured) with ``budget_ms``. The
    optimised median's verdict is ``budget_met_optimised``. Every timing runs under ``threads`` and is
    re-measured while noisy (``noise``); ``measured_noisy`` says whether the reference one stayed noisy.
    """
    from .runtimes import available, check_runtime

    device = torch.device(device)
    is_cuda = device.type == "cuda"
    precisions: list[str] = ["fp32", "fp16"] if is_cuda else ["fp32"]
    if is_cuda and precision not in precisions:
        precisions.append(precision)
    note = ("fp32 and fp16 (model cast, channels_last)" if is_cuda
            else "fp32 only: reduced precision is measured on CUDA only")
    measurements: dict[str, dict] = {}
    ref_precision = precision if precision in precisions else "fp32"
    if runtime != "torch-eager":
        check_runtime(runtime, device, ref_precision)
    for p in precisions:
        entry = {"eager": measure_latency(model, height, width, device, p, warmup, iters,  # type: ignore[arg-type]
                                          noise=noise, threads=threads)}
        if optimise:
            entry["optimised"] = measure_optimised(model, height, width, device, p, warmup, iters,  # type: ignore[arg-type]
                                                   noise=noise, threads=threads)
        # with optimise, the "optimised" entry times an optimised path already (on CUDA a CUDA graph, or torch.compile
        # where the graph fails): torch-optimised, which never falls back, is timed on its own only as the budget's
        others = [r for r in available(device, p) if r != "torch-eager" and not (optimise and r == "torch-optimised")
                  ] if all_runtimes else []
        if p == ref_precision and runtime != "torch-eager" and runtime not in others:
            others.append(runtime)
        for r in others:
            entry[runtime_key(r)] = measure_latency(model, height, width, device, p, warmup, iters,  # type: ignore[arg-type]
                                                    noise=noise, threads=threads, runtime=r)
        measurements[p] = entry
    ref = measurements[ref_precision][runtime_key(runtime)]
    measured = ref["median_ms"]
    opt = measurements[ref_precision].get("optimised") or {}
    opt_ms = opt.get("median_ms")
    report = {
        **environment(device),
        "height": height, "width": width, "batch": 1, "warmup": warmup, "iters": iters,
        "precisions": precisions, "precision_note": note,
        "measurements": measurements,
        "optimised_path": {"method": opt.get("method"), "status": opt.get("status", "not requested")},
        "reference_precision": ref_precision, "runtime": runtime,
        "runtimes": {p: {k: v.get("median_ms") for k, v in e.items() if k != "optimised"} for p, e in measurements.items()},
        "measured_ms": measured,
        "measured_fps": 1000.0 / measured if measured > 0 else None,
        "measured_min_ms": ref["min_ms"], "measured_p90_ms": ref["p90_ms"], "measured_noise_ratio": ref["noise_ratio"],
        "measured_noisy": ref["noisy"], "threads": ref["threads"], "noise_policy": (noise or DEFAULT_POLICY).as_dict(),
        "optimised_ms": opt_ms,
        "lut_prediction_ms": lut_prediction_ms,
        "lut_error_pct": (100.0 * (lut_prediction_ms - measured) / measured
                          if lut_prediction_ms is not None and measured > 0 else None),
        "budget_ms": budget_ms,
        "budget_met": (measured <= budget_ms) if budget_ms is not None else None,
        "budget_met_optimised": (opt_ms <= budget_ms) if budget_ms is not None and opt_ms is not None else None,
    }
    if ref_precision != precision:
        report["reference_precision_note"] = f"{precision} cannot be measured on {device.type}; fp32 used"
    return report
