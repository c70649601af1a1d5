"""A latency table a job can trust (issue 11): measured with noise checks, validated, then cached.

:func:`trusted_table` loads the cached table of this identity (device, precision, resolution,
burst, runtime, torch/CUDA/cuDNN versions, thread counts: a change of any of them is another table),
measures what is missing, and validates it against ``lut_check_networks`` random networks measured
end to end (:mod:`core.lut_check`) unless a passing validation for this search space is already
recorded in it. An entry is noisy when it was flagged so, or when its recorded spread fails this
job's noise threshold (a table cached with noise checks off or a laxer threshold is caught here).
A table with noisy entries or a failed validation is measured again (the noisy entries, or every
entry the network needs when the check found it inaccurate; a check that was only noisy is simply
repeated), at most ``lut_remeasure`` times. Only a table that passes is saved to the cache; one that still fails is used by this job
but flagged (``trusted: false`` with reasons), never cached.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .latency import (LatencyModel, LatencyTable, LutKey, current_context, load_or_new, measure_into, network_key,
                      required_keys, table_path)
from .lut_check import validate_table
from .noise import NoisePolicy
from .specs import LatencyConfig, NetworkConfig
from .threads import Threads

Event = Callable[[dict], None]


@dataclass
class TableTrust:
    """What a job knows about its table."""

    trusted: bool = True
    cached: bool = False  # loaded from the cache (possibly re-measured)
    saved: bool = False
    validated: bool = False  # validation ran in this job (False: a recorded passing one was reused, or none asked)
    remeasured: list[str] = field(default_factory=list)  # why each re-measurement happened
    reasons: list[str] = field(default_factory=list)  # why the table is not trusted
    noisy_entries: int = 0
    validation: dict | None = None

    def as_dict(self) -> dict:
        return {"trusted": self.trusted, "cached": self.cached, "saved": self.saved, "validated": self.validated,
                "remeasured": self.remeasured, "reasons": self.reasons, "noisy_entries": self.noisy_entries,
                "validation": self.validation}


def trusted_table(cfg: NetworkConfig, ops: list[str], lat: LatencyConfig, device: torch.device,
                  cache_dir: str | Path | None, seed: int, progress: Event = lambda e: None,
                  should_cancel: Callable[[], bool] = lambda: False) -> tuple[LatencyTable, TableTrust]:
    noise = NoisePolicy.from_config(lat)
    threads = Threads(lat.intra_op_threads, lat.inter_op_threads)
    ctx = current_context(device, lat.precision, lat.height, lat.width, lat.lut_burst, threads, lat.runtime)
    table = load_or_new(ctx, cache_dir)
    trust = TableTrust(cached=bool(table.entries))
    needed = required_keys(cfg, ops, lat.height, lat.width)
    net = network_key(cfg, ops)

    def measure(keys: list[LutKey]) -> None:
        def each(i: int, n: int, key: LutKey) -> None:
            # one progress line for the phase (a message makes an event): the entries only move its step counter
            ev = {"phase": "latency_table", "step": i, "steps": n}
            if i == 1:
                ev["message"] = f"measuring {n} latency-table entries"
            progress(ev)
            if should_cancel():
                raise _Stop

        try:
            measure_into(table, keys, cfg, device, lat.warmup_runs, lat.repeats, each, noise, threads)
        except _Stop:
            pass

    missing = [k for k in needed if k not in table.entries]
    measure(missing)
    recorded = table.validations.get(net)
    if (recorded and not missing and not should_cancel() and passes_for(recorded, lat)
            and not table.noisy_keys(needed, noise)):
        trust.validation = recorded  # passed when it was cached (and by this job's limits), nothing added since
        return table, trust
    # what is validated below replaces the record: an old calibration never meets new or re-measured entries
    table.validations.pop(net, None)
    if should_cancel():
        trust.trusted, trust.reasons = False, ["cancelled"]
        return table, trust
    for attempt in range(lat.lut_remeasure + 1):
        if should_cancel():
            trust.reasons = ["cancelled"]
            break
        noisy = table.noisy_keys(needed, noise)
        validation = None
        if lat.lut_check_networks:
            progress({"phase": "validate_lut", "message": f"checking the table against {lat.lut_check_networks} "
                                                           f"random networks measured end to end"})
            model = LatencyModel(table, cfg, ops, lat.height, lat.width, scale=1.0)  # the raw sums: the fit's input
            validation = validate_table(model, lat.lut_check_networks, device, lat.precision, lat.warmup_runs,
                                        lat.e2e_repeats, seed, should_cancel, noise=noise, threads=threads,
                                        max_error=lat.lut_max_error, min_rank_corr=lat.lut_min_rank_corr,
                                        runtime=lat.runtime, calibrate=lat.lut_calibrate,
                                        max_scale=lat.lut_max_scale)
            trust.validated, trust.validation = True, validation
        reasons = ([f"{len(noisy)} of {len(needed)} entries stayed noisy"] if noisy else [])
        reasons += [f"validation failed: {r}" for r in (validation or {}).get("reasons", [])]
        trust.noisy_entries = len(noisy)
        if not reasons:
            trust.reasons = []
            break
        trust.reasons = reasons
        if attempt == lat.lut_remeasure:
            break
        inaccurate = validation is not None and not validation["accurate"]
        again = needed if inaccurate else noisy  # a check that was only noisy is repeated, the table kept
        trust.remeasured.append("; ".join(reasons))
        progress({"phase": "latency_table", "message": f"re-measuring {len(again)} entries: {'; '.join(reasons)}",
                  "noisy": True})
        measure(list(again))
    trust.trusted = not trust.reasons
    if trust.trusted:
        if validation_done := trust.validation:
            table.validations[net] = validation_done
        if cache_dir:
            table.save(table_path(cache_dir, ctx))
            trust.saved = True
    else:
        progress({"phase": "noise", "noisy": True,
                  "message": f"latency table {table.id} not trusted and not cached: {'; '.join(trust.reasons)}"})
    return table, trust


def passes_for(recorded: dict, lat: LatencyConfig) -> bool:
    """A recorded validation is reused only if it passed and passes *this* job's limits too, validated the
    way this job would (with or without calibration): the table cache is shared by every tenant, and one
    job's laxer limits must not decide for another's."""
    if not recorded.get("passed") or bool(recorded.get("calibration")) != lat.lut_calibrate:
        return False
    err, rho = recorded.get("median_rel_error"), recorded.get("rank_correlation")
    if err is None or err > lat.lut_max_error or (rho is not None and rho < lat.lut_min_rank_corr):
        return False
    scale = (recorded.get("calibration") or {}).get("scale")
    return scale is None or 1.0 / lat.lut_max_scale <= scale <= lat.lut_max_scale


class _Stop(Exception):
    """Cancellation inside a table measurement (the caller checks should_cancel and raises Cancelled)."""
