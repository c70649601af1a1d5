"""Host-speed drift between a latency table and an end-to-end reading (issue 11) [ours].

The noise verdict (core/noise.py) judges the spread *inside* one reading. On a shared host the speed also
changes *between* readings: in attempt 7 of docs/SEARCH_QUALITY.md every network ran 35-46 % faster at the
end of an hour than when the table was validated at its start, and the repair cut two networks on readings
taken in a slow stretch (13.4 ms; the same networks 6-10 ms later), while every one of those readings passed
the noise check.

So the table's validation keeps one of its networks as a **reference** (its genotype and its end-to-end
median then). A job reads the reference right before each end-to-end reading of its own network; the ratio
now/then is the host's drift since the table was made. A reading whose reference is off by more than
``latency.drift_max`` is taken again (``noise_retries`` times, after ``noise_retry_pause_s``); if it stays
drifted it is kept but marked (``drifted``, and ``noisy`` so that nothing acts on it: the repair stops,
the verdict is not trusted, the job says why). A table validated before this check has no reference: its
readings are marked ``drift: null`` (unchecked).

Within ``drift_max`` the drift is not only tolerated but corrected (``latency.drift_correct``): the reading is
divided by it, i.e. expressed at the host speed the table was validated at, and the raw reading is kept beside
it (``raw_median_ms``...). Attempt 8 measured why: the readings a search took of its derived network were up to
24 % slower than the same network in a quiet loop afterwards, by as much as its reference said (4.05 ms raw,
drift ×1.23, 3.28 corrected, 3.27 in the loop), and the repair cut networks on the raw figures; in attempt 9
the host ran faster than recorded and the correction worked the other way as well (see :func:`corrected`).

Torch-free: the readings come in as callables returning :func:`core.fps.measure_latency` dicts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .noise import NoisePolicy, measure_until_quiet

Reading = Callable[[], dict]


@dataclass(frozen=True)
class Reference:
    """A network of the table's validation and its end-to-end median when the table was validated."""

    genotype: dict
    measured_ms: float

    @classmethod
    def of(cls, validation: dict | None) -> "Reference | None":
        ref = (validation or {}).get("reference")
        if not ref or not ref.get("genotype") or not ref.get("measured_ms"):
            return None
        return cls(ref["genotype"], float(ref["measured_ms"]))

    def as_dict(self) -> dict:
        return {"genotype": self.genotype, "measured_ms": self.measured_ms}


def drift_ratio(now_ms: float, then_ms: float) -> float:
    """The reference's median now over then: 1.3 = the host is 30 % slower than when the table was made."""
    return now_ms / then_ms


def is_drifted(ratio: float, max_drift: float) -> bool:
    """Off by more than ``max_drift`` either way (a ratio of 1/(1+d) is as far as 1+d); 0 = never."""
    return max_drift > 0 and max(ratio, 1.0 / ratio) - 1.0 > max_drift


TIMES = ("median_ms", "min_ms", "p90_ms")


def corrected(m: dict) -> dict:
    """A checked reading within its drift limit, divided by its drift (``drift_corrected``): the time it would
    have taken at the host speed the table was validated at. Its raw times are kept as ``raw_median_ms``,
    ``raw_min_ms``, ``raw_p90_ms``. Both ways: in 17 readings of attempts 8, 8b and 9 (docs/CORE.md) against
    the benchmark's quiet loop, the mean error was 10.3 % raw, 5.9 % corrected both ways and 7.4 % corrected
    only downwards (a rule tried after 8b and reversed by 9, where hosts ran faster than recorded). An
    unchecked or drifted reading is returned as is (a drifted one is not acted on at all)."""
    if m.get("drift") is None or m.get("drifted") or not m["drift"] > 0:
        return {**m, "drift_corrected": False}
    out = {**m, "drift_corrected": True}
    for k in TIMES:
        if m.get(k) is not None:
            out["raw_" + k], out[k] = m[k], m[k] / m["drift"]
    return out


def reference_drift(read_reference: Reading, reference_then_ms: float, max_drift: float) -> dict:
    """One reading of the reference alone: the host's drift now (for a reading taken just before it, e.g. the
    FPS report's)."""
    now = float(read_reference()["median_ms"])
    ratio = drift_ratio(now, reference_then_ms)
    return {"reference_ms": now, "reference_then_ms": reference_then_ms, "drift": ratio,
            "drifted": is_drifted(ratio, max_drift)}


def read_with_reference(read: Reading, read_reference: Reading | None, reference_then_ms: float | None,
                        max_drift: float, policy: NoisePolicy, correct: bool = False) -> dict:
    """``read()`` with the reference read just before it, re-taken while noisy or drifted (bounded by
    ``policy``). The result is ``read()``'s dict plus ``reference_ms``, ``reference_then_ms``, ``drift``
    (None: unchecked), ``drifted``, ``drift_corrected``; ``noisy`` is true when the reading is noisy *or*
    drifted, and ``attempts`` counts the pairs taken. With ``correct`` the times are :func:`corrected`."""
    if read_reference is None or not reference_then_ms or max_drift <= 0:
        m = read()
        return {**m, "reference_ms": None, "reference_then_ms": reference_then_ms, "drift": None, "drifted": False,
                "drift_corrected": False}

    def once() -> dict:
        d = reference_drift(read_reference, reference_then_ms, max_drift)
        m = read()
        return {**m, **d, "spread_noisy": bool(m.get("noisy"))}

    # read() re-takes a noisy reading itself (core/fps.timed_stats); here only a drifted one is taken again
    m, attempts, _ = measure_until_quiet(once, lambda d: d["drifted"], policy)
    spread_noisy = m.pop("spread_noisy")
    out = {**m, "noisy": m["drifted"] or spread_noisy, "attempts": attempts}
    return corrected(out) if correct else {**out, "drift_corrected": False}


def drift_note(what: str, m: dict, max_drift: float) -> str:
    """The sentence a job logs for a reading that stayed drifted."""
    return (f"{what}: the host's speed drifted since the latency table was measured (its reference network "
            f"{m['reference_ms']:.3f} ms now, {m['reference_then_ms']:.3f} ms then: ×{m['drift']:.2f}, beyond "
            f"drift_max {max_drift}) after {m.get('attempts', 1)} attempt(s); not acted on. Run the worker alone, or "
            f"delete the table (`gas luts delete`) to measure it again under today's conditions")
