"""Thread counts of a measurement (issue 11): set per job, before measuring, recorded with the numbers.

``LatencyConfig.intra_op_threads`` (default 1) is applied around every timing (LUT entry, end to end,
FPS) and restored afterwards, so training keeps torch's default. One intra-op thread is the default
because it is what stays measurable on a shared host: on 2 shared cores, timing with two threads
stalled for a second or more while one thread stayed near its quiet time (issue 11; docs/CORE.md).
0 means torch's default (all cores: right when the deployment has the machine to itself).
``inter_op_threads`` can only be set once per process, before any inter-op work; a job sets it at
its start and the value that holds is the one recorded.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator

import torch


@dataclass(frozen=True)
class Threads:
    intra_op: int  # 0 = torch's default
    inter_op: int

    def as_dict(self) -> dict:
        return asdict(self)


def apply_inter_op(n: int) -> int:
    """Set the inter-op pool size if it is still settable; returns the size in force."""
    if n > 0 and torch.get_num_interop_threads() != n:
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # already started in this process: the recorded value says what holds
            pass
    return torch.get_num_interop_threads()


def effective(threads: Threads) -> Threads:
    """The counts a measurement under ``threads`` really uses (0 resolved to torch's current value)."""
    return Threads(threads.intra_op or torch.get_num_threads(), torch.get_num_interop_threads())


@contextmanager
def measuring(threads: Threads | None) -> Iterator[Threads]:
    """Intra-op threads at ``threads.intra_op`` for the block, restored after; None leaves them alone."""
    before = torch.get_num_threads()
    if threads is not None and threads.intra_op > 0 and threads.intra_op != before:
        torch.set_num_threads(threads.intra_op)
    try:
        yield Threads(torch.get_num_threads(), torch.get_num_interop_threads())
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
