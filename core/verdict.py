"""One latency verdict per job (issue 11): the summary, the report and its FPS section agree.

A job may time its network more than once (the repair's last end-to-end measurement, the FPS
report's eager median at the budget's precision). :func:`latency_verdict` picks the one the job
stands by and says why:

- only measurements that passed the noise check are candidates; among them the one with the tightest
  spread (lowest p90/min) wins; ``trusted`` is False when every measurement stayed noisy (the job
  then reports the least noisy one and says its latency is not to be relied on);
- two measurements *agree* when their [min, p90] ranges overlap; when they do not, ``agree`` is False
  and the reason names both and the one trusted.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timed:
    name: str
    median_ms: float
    min_ms: float | None
    p90_ms: float | None
    noisy: bool

    @classmethod
    def of(cls, name: str, stats: dict) -> "Timed":
        """From a measure_latency dict or a repair measurement (``ms`` for the median)."""
        median = stats.get("median_ms", stats.get("ms"))
        return cls(name, float(median), stats.get("min_ms"), stats.get("p90_ms"), bool(stats.get("noisy", False)))

    @property
    def spread(self) -> float:
        if self.min_ms and self.p90_ms and self.min_ms > 0:
            return self.p90_ms / self.min_ms
        return float("inf")

    def range(self) -> tuple[float, float]:
        return (self.min_ms if self.min_ms is not None else self.median_ms,
                self.p90_ms if self.p90_ms is not None else self.median_ms)

    def describe(self) -> str:
        lo, hi = self.range()
        return f"{self.name} {self.median_ms:.3f} ms [{lo:.3f}, {hi:.3f}]{' noisy' if self.noisy else ''}"


def _overlap(a: Timed, b: Timed) -> bool:
    (alo, ahi), (blo, bhi) = a.range(), b.range()
    return alo <= bhi and blo <= ahi


def latency_verdict(measurements: list[Timed], budget_ms: float | None) -> dict:
    """``{"measured_latency_ms", "fps", "budget_met", "source", "trusted", "agree", "reason", "measurements"}``."""
    if not measurements:
        raise ValueError("no measurement to judge")
    quiet = [m for m in measurements if not m.noisy]
    pool = quiet or measurements
    chosen = min(pool, key=lambda m: (m.spread, m.median_ms))
    agree = all(_overlap(a, b) for i, a in enumerate(measurements) for b in measurements[i + 1:])
    others = [m for m in measurements if m is not chosen]
    if not quiet:
        reason = ("every measurement stayed noisy after its retries: the latency is not to be relied on; "
                  f"reporting the least noisy, {chosen.describe()}")
    elif len(measurements) == 1:
        reason = f"the only measurement, {chosen.describe()}"
    else:
        why = "the only quiet one" if len(quiet) == 1 else "the tightest spread (p90/min) of the quiet ones"
        reason = f"trusting {chosen.describe()}: {why}"
        if not agree:
            reason += "; they disagree beyond their spread: " + ", ".join(m.describe() for m in others)
    ms = chosen.median_ms
    return {"measured_latency_ms": ms, "fps": 1000.0 / ms if ms > 0 else None,
            "budget_met": (ms <= budget_ms) if budget_ms is not None else None, "source": chosen.name,
            "trusted": bool(quiet), "agree": agree, "reason": reason,
            "measurements": {m.name: {"median_ms": m.median_ms, "min_ms": m.min_ms, "p90_ms": m.p90_ms,
                                      "noisy": m.noisy} for m in measurements}}
