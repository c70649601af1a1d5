"""Compiling the search's training forward (issue "search speed"; setting ``search.compile``).

- ``off``: eager PyTorch.
- ``default``: ``torch.compile`` (inductor) of :meth:`SuperNet.forward_mixed`, the forward both steps share; its
  backward is compiled too (AOTAutograd). It fuses the elementwise tails (BN, ReLU, the mixing sums) that make
  most of a step's ~8k kernels at these channel counts. The softmax or Gumbel sample of α and the GGM stay eager
  (a few dozen small ops), so the compiled graph is the same for every α.
- ``reduce-overhead``: as ``default``, and the compiled kernels are replayed as CUDA graphs (one launch per
  graph). CUDA only: on a CPU it compiles as ``default``, and the report says so.

Two graphs are compiled: the architecture step's (α' needs gradients) and the weight step's (α' detached).
The free-op dropout rate is a buffer, not a constant (:class:`core.cell.FreeOpDropout`), so its change every
epoch does not compile again. The supernet evaluation and derivation stay eager (other shapes, no gradients).

A failure to compile is never silent. The first step of each kind (the first three with CUDA graphs: warm-up,
capture, first replay) runs under a guard: if it raises, what it changed is put back (buffers such as BN
statistics, the RNG), the step runs again eagerly, and every later step is eager. The job's progress and its report (``compile``) say what was asked for, what ran, and why.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Literal, TypeVar

import torch

from .redact import redact_text

CompileMode = Literal["off", "default", "reduce-overhead"]
BACKEND: str | Callable = "inductor"
"""torch.compile backend of ``search.compile`` (tests use ``aot_eager``: the same tracing, no C++ toolchain)."""
REASON_CHARS = 400  # how much of a compile error's message the report keeps

T = TypeVar("T")


def _dynamo_counts() -> dict[str, int]:
    """Graphs compiled, graph breaks and CUDA graphs skipped (inductor falls back to plain kernels for a graph it
    cannot capture, and only logs it) so far in this process, from torch's counters; zeros where it has none."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - a torch without dynamo
        return {"graphs": 0, "graph_breaks": 0, "cudagraph_skips": 0}
    return {"graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "cudagraph_skips": int(counters["inductor"].get("cudagraph_skips", 0))}


def _cuda_graphs_recorded(device: torch.device) -> int | None:
    """CUDA graphs recorded so far by inductor's cudagraph trees on ``device`` (None where it cannot be read: the
    manager is private API). The skip counter alone is not enough: with graph partitioning (on by default in
    recent torch) a graph that is never captured is not always counted as skipped."""
    if device.type != "cuda":
        return None
    try:
        from torch._inductor import cudagraph_trees
        manager = cudagraph_trees.get_manager(device.index or 0, create_if_none_exists=False)
        if manager is None:
            return 0
        todo, n = [node for nodes in manager.roots.values() for node in nodes], 0
        while todo:
            node = todo.pop()
            n += 1
            todo.extend(c for cs in node.children.values() for c in cs)
        return n
    except Exception:  # private API that moves between torch releases: reported as null ("unknown"), never raised
        return None


GUARDED_CALLS = {"default": 1, "reduce-overhead": 3}
"""Calls of each step kind run under the guard: inductor compiles at the first; cudagraph trees warm up at the
first, capture at the second and replay from the third, and capture can fail too."""


class CompiledForward:
    """``SuperNet.forward_mixed``, compiled as ``mode`` asks, with the guarded fallback to eager."""

    def __init__(self, model: torch.nn.Module, mode: CompileMode, device: torch.device,
                 progress: Callable[[dict], None] = lambda _: None, backend: str | Callable | None = None):
        self.model, self.requested, self.device, self.progress = model, mode, device, progress
        self.backend = backend or BACKEND
        self.note: str | None = None
        self.fallback: str | None = None
        self.first_step_s: dict[str, float] = {}  # per step kind: seconds of its guarded calls (compile, capture)
        self._calls: dict[str, int] = {}
        self._counts0 = _dynamo_counts()
        used = mode
        if mode == "reduce-overhead" and device.type != "cuda":
            used = "default"
            self.note = f"reduce-overhead replays CUDA graphs, which need CUDA: compiled as 'default' on {device.type}"
        self.used: str = "eager" if mode == "off" else used
        if self.used == "eager":
            self._fn = model.forward_mixed
            return
        self._fn = torch.compile(model.forward_mixed, backend=self.backend,
                                 mode=None if self.used == "default" else self.used)
        progress({"phase": "compile", "message": f"search.compile={mode}: the first architecture and weight steps "
                  f"compile the supernet's forward and backward (torch.compile, {self._backend_name()}) and take "
                  f"longer" + (f"; {self.note}" if self.note else "")})

    def _backend_name(self) -> str:
        return self.backend if isinstance(self.backend, str) else getattr(self.backend, "__name__", "custom")

    def __call__(self, x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        return self._fn(x, weights)

    @property
    def compiled(self) -> bool:
        return self.used != "eager"

    def step(self, kind: str, run: Callable[[], T]) -> T:
        """Run one training step of ``kind`` ("architecture" or "weight"). The first compiled calls of each kind
        (``GUARDED_CALLS``) are guarded: when one raises, its changes are undone and it runs again eagerly, as do
        all later steps."""
        if self.used == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are no longer read
        calls = self._calls.get(kind, 0)
        if not self.compiled or calls >= GUARDED_CALLS[self.used]:
            return run()
        buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        t = time.perf_counter()
        try:
            out = run()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except Exception as exc:  # any failure of a guarded compiled step: go eager, say why
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, self.device)
            self._go_eager(kind, exc)
            return run()
        self.first_step_s[kind] = round(self.first_step_s.get(kind, 0.0) + time.perf_counter() - t, 3)
        self._calls[kind] = calls + 1
        if self._calls[kind] == GUARDED_CALLS[self.used]:
            msg = f"{kind} step compiled and run in {self.first_step_s[kind]:.1f} s"
            if self.used == "reduce-overhead":
                skipped = _dynamo_counts()["cudagraph_skips"] - self._counts0["cudagraph_skips"]
                recorded = _cuda_graphs_recorded(self.device)
                msg += f"; CUDA graphs recorded so far: {'unknown' if recorded is None else recorded}"
                if skipped or recorded == 0:
                    msg += (f", skipped: {skipped} (kernels without graph replay run compiled but launch one by one; "
                            "torch's log says why)")
            self.progress({"phase": "compile", "message": msg})
        return out

    def _go_eager(self, kind: str, exc: Exception) -> None:
        msg = redact_text(" ".join(str(exc).split()))[:REASON_CHARS]  # redacted before cut: no path cut in half
        self.fallback = (f"{kind} step {self._calls.get(kind, 0) + 1} failed compiled ({type(exc).__name__}: {msg}); "
                         "it was undone and run again eagerly, as is every later step; set search.compile=off to skip "
                         "the attempt")
        self.used = "eager"
        self._fn = self.model.forward_mixed
        self.progress({"phase": "compile", "message": f"search.compile={self.requested} fell back to eager: {self.fallback}"})

    def as_dict(self) -> dict[str, Any]:
        now = _dynamo_counts()
        return {"requested": self.requested, "used": self.used,
                "backend": None if self.requested == "off" else self._backend_name(), "note": self.note,
                "fallback": self.fallback, "first_step_s": dict(self.first_step_s),
                **{k: now[k] - self._counts0[k] for k in now},
                "cuda_graphs_recorded": _cuda_graphs_recorded(self.device) if self.used == "reduce-overhead" else None}
