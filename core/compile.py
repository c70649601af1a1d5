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

A failure to compile is never silent. The first step of each kind runs under a guard: if it raises, what it
changed is put back (buffers such as BN statistics, the RNG), the step runs again eagerly, and every later
step is eager. The job's progress and its report (``compile``) say what was asked for, what ran, and why.
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
    except Exception:  # pragma: no cover - a torch without dynamo
        return {"graphs": 0, "graph_breaks": 0, "cudagraph_skips": 0}
    return {"graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "cudagraph_skips": int(counters["inductor"].get("cudagraph_skips", 0))}


class CompiledForward:
    """``SuperNet.forward_mixed``, compiled as ``mode`` asks, with the guarded fallback to eager."""

    def __init__(self, model: torch.nn.Module, mode: CompileMode, device: torch.device,
                 progress: Callable[[dict], None] = lambda _: None, backend: str | Callable | None = None):
        self.model, self.requested, self.device, self.progress = model, mode, device, progress
        self.backend = backend or BACKEND
        self.note: str | None = None
        self.fallback: str | None = None
        self.first_step_s: dict[str, float] = {}
        self._proven: set[str] = set()
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
        """Run one training step of ``kind`` ("architecture" or "weight"). The first compiled one of each kind
        is guarded: when it raises, its changes are undone and it runs again eagerly, as do all later steps."""
        if self.used == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are no longer read
        if not self.compiled or kind in self._proven:
            return run()
        buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        t = time.perf_counter()
        try:
            out = run()
        except Exception as exc:  # any failure of the first compiled step: go eager, say why
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, self.device)
            self._go_eager(kind, exc)
            return run()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.first_step_s[kind] = round(time.perf_counter() - t, 3)
        self._proven.add(kind)
        msg = f"{kind} step compiled and run in {self.first_step_s[kind]:.1f} s"
        skipped = _dynamo_counts()["cudagraph_skips"] - self._counts0["cudagraph_skips"]
        if self.used == "reduce-overhead" and skipped:
            msg += (f"; CUDA graphs skipped for {skipped} graph(s) so far (their kernels run compiled but without "
                    "graph replay; torch's log says why)")
        self.progress({"phase": "compile", "message": msg})
        return out

    def _go_eager(self, kind: str, exc: Exception) -> None:
        msg = " ".join(str(exc).split())[:REASON_CHARS]
        self.fallback = redact_text(f"the first {kind} step failed compiled ({type(exc).__name__}: {msg}); "
                                    "it was undone and run again eagerly, as is every later step")
        self.used = "eager"
        self._fn = self.model.forward_mixed
        self.progress({"phase": "compile", "message": f"search.compile={self.requested} fell back to eager: {self.fallback}"})

    def as_dict(self) -> dict[str, Any]:
        now = _dynamo_counts()
        return {"requested": self.requested, "used": self.used,
                "backend": None if self.requested == "off" else self._backend_name(), "note": self.note,
                "fallback": self.fallback, "first_step_s": dict(self.first_step_s),
                **{k: now[k] - self._counts0[k] for k in now}}
