"""The runtime is part of the budget (issue 11 section 5): a registry of runtimes a network is timed in.

A budget names a runtime (``LatencyConfig.runtime``) as well as device, precision and resolution. The
LUT (every entry timed in that runtime), the end-to-end measurements (validation, repair) and the FPS
report's reference timing all run the module through :func:`callable_for`, so the search is steered by,
and its verdict given for, the runtime the model will be deployed in.

- ``torch-eager``: the module itself, eval mode, under ``torch.no_grad()`` (cast to the precision,
  channels_last on CUDA: :func:`core.timing.prepare`).
- ``onnxruntime``: the module exported to ONNX in memory (classic TorchScript exporter, opset 17, the
  same as :mod:`core.export`) and run by an ``onnxruntime.InferenceSession`` on the CPU execution
  provider, fp32, with the measurement's intra-/inter-op threads as session options (0 = onnxruntime's
  default). Other devices or precisions are refused with a message saying so.

- ``torch-optimised``: the module captured as a CUDA graph on CUDA (static input, replayed), and on the
  CPU a frozen ``torch.jit.trace`` (``torch.compile`` on the CPU needs a C++ toolchain and minutes per
  module, too slow for a table of a few hundred entries). One method per device type
  (:data:`OPTIMISED_METHOD`), never a silent fallback: a module the method cannot capture is a
  ValueError naming the method, and the job fails with it instead of timing something else.

A runtime is a registry entry (name -> :class:`Runtime`): onnxruntime's CUDA/TensorRT providers would be
one more entry.
"""
from __future__ import annotations

import copy
import inspect
import io
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .threads import Threads
from .timing import prepare

ONNX_OPSET = 17
"""Opset of the in-memory exports timed in onnxruntime (as ExportConfig.opset's default)."""


@dataclass(frozen=True)
class Runtime:
    name: str
    unsupported: Callable[[torch.device, str], str | None]  # why it cannot run here, or None
    build: Callable[[nn.Module, list[torch.Tensor], torch.device, str, Threads | None], Callable[[], object]]
    version: Callable[[], str | None]


def _eager_build(module: nn.Module, inputs: list[torch.Tensor], device: torch.device, precision: str,
                 threads: Threads | None) -> Callable[[], object]:
    mod, xs = prepare(module, inputs, device, precision)

    def run() -> object:
        with torch.no_grad():
            return mod(*xs)
    return run


OPTIMISED_METHOD = {"cuda": "cuda_graphs", "cpu": "jit_trace_freeze"}
"""The capture ``torch-optimised`` uses per device type (core/fps.py: OPTIMISERS)."""


def _optimised_unsupported(device: torch.device, precision: str) -> str | None:
    if device.type not in OPTIMISED_METHOD:
        return f"torch-optimised has no capture method for {device.type} (known: {sorted(OPTIMISED_METHOD)})"
    if device.type == "cpu" and precision != "fp32":
        return f"torch-optimised is measured in fp32 only on the CPU, not {precision}"
    return None


def _optimised_build(module: nn.Module, inputs: list[torch.Tensor], device: torch.device, precision: str,
                     threads: Threads | None) -> Callable[[], object]:
    from .fps import OPTIMISERS

    if reason := _optimised_unsupported(device, precision):
        raise ValueError(reason)
    method = OPTIMISED_METHOD[device.type]
    mod, xs = prepare(copy.deepcopy(module), inputs, device, precision)
    try:
        with torch.no_grad():
            return OPTIMISERS[method](mod, xs)
    except Exception as exc:  # noqa: BLE001 - reported with the method's name, never replaced by another path
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"torch-optimised ({method}) cannot capture this module: {type(exc).__name__}: {first}; "
                         f"choose the runtime torch-eager or onnxruntime for this budget") from exc


def _ort_unsupported(device: torch.device, precision: str) -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed on this worker"
    if device.type != "cpu":
        return f"onnxruntime is measured on the CPU execution provider only here; this device is {device.type}"
    if precision != "fp32":
        return f"onnxruntime is measured in fp32 only here, not {precision}"
    return None


def onnx_bytes(module: nn.Module, inputs: list[torch.Tensor]) -> bytes:
    """``module`` (a CPU fp32 eval copy) exported to ONNX in memory, one graph input per tensor."""
    net = copy.deepcopy(module).to("cpu", torch.float32).eval()
    xs = tuple(t.detach().to("cpu", torch.float32).contiguous() for t in inputs)
    kwargs: dict = {"opset_version": ONNX_OPSET, "do_constant_folding": True,
                    "input_names": [f"x{i}" for i in range(len(xs))]}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(net, xs, buf, **kwargs)
    return buf.getvalue()


def ort_session(model_bytes: bytes, threads: Threads | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads.intra_op if threads and threads.intra_op > 0 else 0
    opts.inter_op_num_threads = threads.inter_op if threads and threads.inter_op > 0 else 0
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def _ort_build(module: nn.Module, inputs: list[torch.Tensor], device: torch.device, precision: str,
               threads: Threads | None) -> Callable[[], object]:
    if reason := _ort_unsupported(device, precision):
        raise ValueError(reason)
    sess = ort_session(onnx_bytes(module, inputs), threads)
    names = [i.name for i in sess.get_inputs()]
    feeds = {n: t.detach().to("cpu", torch.float32).numpy() for n, t in zip(names, inputs)}
    return lambda: sess.run(None, feeds)


def _ort_version() -> str | None:
    try:
        import onnxruntime

        return onnxruntime.__version__
    except ImportError:
        return None


RUNTIMES: dict[str, Runtime] = {
    "torch-eager": Runtime("torch-eager", lambda d, p: None, _eager_build, lambda: None),
    "onnxruntime": Runtime("onnxruntime", _ort_unsupported, _ort_build, _ort_version),
    "torch-optimised": Runtime("torch-optimised", _optimised_unsupported, _optimised_build, lambda: None),
}
DEFAULT_RUNTIME = "torch-eager"


def get_runtime(name: str) -> Runtime:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}; known: {sorted(RUNTIMES)}") from None


def check_runtime(name: str, device: torch.device, precision: str) -> None:
    """Raise ValueError naming why ``name`` cannot be measured on ``device`` at ``precision``."""
    if reason := get_runtime(name).unsupported(device, precision):
        raise ValueError(f"runtime {name!r}: {reason}")


def callable_for(name: str, module: nn.Module, inputs: list[torch.Tensor], device: torch.device, precision: str,
                 threads: Threads | None = None) -> Callable[[], object]:
    """A zero-argument callable running ``module`` on ``inputs`` in runtime ``name`` (built once: the
    export and session creation are not timed)."""
    check_runtime(name, device, precision)
    return get_runtime(name).build(module, inputs, device, precision, threads)


def available(device: torch.device, precision: str) -> list[str]:
    """The runtimes this worker can measure at ``precision`` on ``device`` (for the FPS report)."""
    return [n for n, r in RUNTIMES.items() if r.unsupported(device, precision) is None]
