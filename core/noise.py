"""Noise verdict of a timing (issue 11): spread, a documented threshold, bounded re-measurement.

A timing is *noisy* when its p90 exceeds its minimum by more than ``LatencyConfig.noise_max_ratio``
(p90/min); an end-to-end timing (whose median a decision acts on) is noisy too when its median exceeds
its minimum by more than ``noise_max_median_ratio`` (median/min, 1.25): beside two CPU hogs a reading
passed p90/min at 1.95 with its median 32 % slower than the quiet one (a silent error), while quiet
readings stay at median/min <= 1.13 (bench/latency_trust.py; docs/CORE.md). On a quiet CPU the
end-to-end and LUT timings of this repository stay at p90/min <= 1.75; with two CPU hogs beside a
one-thread measurement on a 2-core host the end-to-end ratio reached 2.7-5, and with two threads 6-58
(docs/CORE.md, "Latency you can trust"). A noisy timing is measured again up to ``noise_retries``
times after a ``noise_retry_pause_s`` pause; one that stays noisy is kept but marked, and the job says
so instead of acting on it.

Torch-free: it judges any measurement that has ``min_ms`` and ``p90_ms``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, TypeVar

from .specs import LatencyConfig

NOISE_METRIC = "p90/min"
MEDIAN_METRIC = "median/min"


class Spread(Protocol):
    @property
    def min_ms(self) -> float | None: ...

    @property
    def p90_ms(self) -> float: ...


@dataclass(frozen=True)
class NoisePolicy:
    max_ratio: float
    retries: int
    pause_s: float
    max_median_ratio: float = float("inf")  # judged only where a median is given (end-to-end timings)

    @classmethod
    def from_config(cls, cfg: LatencyConfig) -> "NoisePolicy":
        return cls(cfg.noise_max_ratio, cfg.noise_retries, cfg.noise_retry_pause_s, cfg.noise_max_median_ratio)

    def as_dict(self) -> dict:
        return {"metric": NOISE_METRIC, "max_ratio": self.max_ratio, "median_metric": MEDIAN_METRIC,
                "max_median_ratio": self.max_median_ratio, "retries": self.retries, "pause_s": self.pause_s}


DEFAULT_POLICY = NoisePolicy.from_config(LatencyConfig())
"""The policy of the default settings (used where a caller names none: benchmarks, retrain FPS)."""


def noise_ratio(min_ms: float | None, p90_ms: float) -> float | None:
    """p90/min, or None when the minimum is unknown (a table from before issue 11) or not positive."""
    if min_ms is None or min_ms <= 0:
        return None
    return p90_ms / min_ms


def is_noisy(min_ms: float | None, p90_ms: float, policy: NoisePolicy, median_ms: float | None = None) -> bool:
    """p90/min above ``policy.max_ratio``, or (where ``median_ms`` is given) median/min above ``max_median_ratio``."""
    r = noise_ratio(min_ms, p90_ms)
    if r is None:
        return False
    return r > policy.max_ratio or (median_ms is not None and median_ms / min_ms > policy.max_median_ratio)


T = TypeVar("T")

GIVE_UP_AFTER = 3
"""Consecutive timings of one table that stayed noisy after their retries, after which the rest of
that table is measured once each (the host is busy; the table is flagged either way) [ours]."""


class BusyHost:
    """Per table: stop spending retries once :data:`GIVE_UP_AFTER` timings in a row stayed noisy."""

    def __init__(self, policy: NoisePolicy):
        self.policy, self.streak = policy, 0

    def current(self) -> NoisePolicy:
        if self.streak >= GIVE_UP_AFTER:
            return dataclasses.replace(self.policy, retries=0, pause_s=0.0)
        return self.policy

    def record(self, noisy: bool) -> None:
        self.streak = self.streak + 1 if noisy else 0


def measure_until_quiet(measure: Callable[[], T], noisy: Callable[[T], bool], policy: NoisePolicy,
                        sleep: Callable[[float], None] = time.sleep) -> tuple[T, int, bool]:
    """Run ``measure`` until ``noisy`` says no, at most ``1 + policy.retries`` times.

    Returns the last measurement (the most recent evidence of the machine's state), the number of
    attempts and whether it is still noisy."""
    attempts = 0
    while True:
        result = measure()
        attempts += 1
        bad = noisy(result)
        if not bad or attempts > policy.retries:
            return result, attempts, bad
        sleep(policy.pause_s)


@dataclass(frozen=True)
class Measurement:
    """One end-to-end timing as a decision sees it: the median it acts on and whether it may act."""

    ms: float
    noisy: bool = False
    min_ms: float | None = None
    p90_ms: float | None = None
    attempts: int = 1
    drift: float | None = None  # the host's speed now / when the table was made (core/drift.py); None: unchecked
    drifted: bool = False  # drift beyond latency.drift_max: then noisy too (nothing acts on it)
    raw_ms: float | None = None  # the reading before its drift correction (core/drift.py); None: not corrected

    @classmethod
    def of(cls, value: "float | Measurement | dict") -> "Measurement":
        """A plain number is a quiet measurement (e.g. a LUT sum standing in for the clock in a test);
        a :func:`core.fps.measure_latency` dict keeps its spread and verdict."""
        if isinstance(value, Measurement):
            return value
        if isinstance(value, dict):
            return cls(float(value["median_ms"]), bool(value.get("noisy", False)), value.get("min_ms"),
                       value.get("p90_ms"), int(value.get("attempts", 1)), value.get("drift"),
                       bool(value.get("drifted", False)), value.get("raw_median_ms"))
        return cls(float(value))

    def as_dict(self) -> dict:
        return {"ms": self.ms, "noisy": self.noisy, "min_ms": self.min_ms, "p90_ms": self.p90_ms,
                "attempts": self.attempts, "drift": self.drift, "drifted": self.drifted, "raw_ms": self.raw_ms}


@contextlib.contextmanager
def cpu_hogs(n: int, settle_s: float = 0.5) -> Iterator[None]:
    """``n`` busy-loop processes for the duration of the block: the load under which the noise verdict
    and the table checks are tested (tests/core/test_latency_under_load.py) and benchmarked
    (bench/latency_trust.py)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(settle_s if n else 0.0)  # let them reach the run queue
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
