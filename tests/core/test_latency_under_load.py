"""Issue 11, done-when: a search beside CPU hogs of the test's own gives the quiet result or says its
measurements were too noisy, never a silently different network; a cached table made under load is
detected and measured again.

Real searches, real tables, real clocks; the load is real too (busy-loop processes, one per core,
started and killed by the test). Nothing about timing is mocked. The "quiet" runs are as quiet as
the host is: on a shared host they may themselves be flagged, which the assertions allow.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch

from core.jobs import run_search
from core.latency import LatencyTable, build_table, network_key
from core.lut_trust import trusted_table
from core.ops import op_names
from core.specs import LatencyConfig, NetworkConfig, SearchConfig, SearchJobSpec
from core.noise import cpu_hogs as noise_hogs
from core.threads import Threads

NET = NetworkConfig(num_cells=3, reduction_cells=[1], init_channels=8, stem_channels=8, head_channels=16,
                    low_level_channels=8, nodes=2)
H, W = 48, 64
HOGS = os.cpu_count() or 1  # one busy loop per core: the "two CPU hogs" on its 2-core worker
FAST = dict(height=H, width=W, warmup_runs=2, repeats=10, lut_burst=5, e2e_repeats=20, noise_retries=1,
            noise_retry_pause_s=0.05, lut_remeasure=1)


def cpu_hogs(n: int = HOGS):
    """``n`` busy-loop processes beside the test for the duration of the block."""
    return noise_hogs(n, settle_s=0.3)


def _spec(camvid_ref, budget_ms: float) -> SearchJobSpec:
    # weight 0: the latency term does not steer α, so the budget (chosen from the quiet measurement)
    # only decides whether the repair runs; the derived network is the same for every budget.
    return SearchJobSpec(dataset=camvid_ref, network=NET,
                         latency=LatencyConfig(budget_ms=budget_ms, weight=0.0, lut_check_networks=2,
                                               **{**FAST, "lut_remeasure": 0}),
                         search=SearchConfig(epochs=2, warmup_epochs=1, steps_per_epoch=2, batch_size=2,
                                             crop_height=0, crop_width=0, seed=3),
                         fps_iters=10)


def _run(spec: SearchJobSpec, workdir: Path, lut_dir: Path) -> tuple[dict, dict, list[dict]]:
    events: list[dict] = []
    t0 = time.perf_counter()
    summary = run_search(spec, workdir, progress=events.append, lut_dir=lut_dir)
    report = json.loads((workdir / "artifacts" / "report.json").read_text())
    print(f"{workdir.name}: {time.perf_counter() - t0:.1f} s, {summary}")
    return summary, report, events


def _one_verdict(summary: dict, report: dict) -> None:
    assert summary["budget_met"] == report["budget_met"] == report["fps"]["budget_met"]
    assert summary["measured_latency_ms"] == pytest.approx(report["measured_latency_ms"], rel=1e-3)
    assert summary["fps"] == pytest.approx(1000.0 / report["measured_latency_ms"])
    assert report["budget_met"] == (report["measured_latency_ms"] <= report["budget_ms"])


def test_search_beside_cpu_hogs_is_the_quiet_result_or_says_it_was_noisy(camvid_ref, tmp_path):
    probe, _, _ = _run(_spec(camvid_ref, 1e4), tmp_path / "probe", tmp_path / "lut_quiet")
    budget = 1.5 * probe["measured_latency_ms"]  # the quiet network fits; a slowed clock would not
    quiet, quiet_report, _ = _run(_spec(camvid_ref, budget), tmp_path / "quiet", tmp_path / "lut_quiet")
    _one_verdict(quiet, quiet_report)
    with cpu_hogs():
        loaded, report, events = _run(_spec(camvid_ref, budget), tmp_path / "loaded", tmp_path / "lut_loaded")
    _one_verdict(loaded, report)
    noisy_said = report.get("measurements_trusted", True) is False and bool(report.get("noise_warnings"))
    if loaded["genotype_hash"] != quiet["genotype_hash"]:
        assert noisy_said, ("a different network without a word about noise: "
                            f"{report['repair'].get('edges_changed')}, measured {report['measured_latency_ms']} ms")
    if noisy_said:
        assert loaded["measurements_trusted"] is False and loaded["noise_warnings"] > 0
        assert any(e["phase"] == "noise" and e.get("noisy") for e in events), "the progress stream must say so too"
    # whatever the clock said, the repair never rewrote most of the network
    total = NET.num_cells * NET.nodes * 2
    changed = {(c["cell"], c["node"], c["slot"]) for c in report["repair"].get("edges_changed", [])}
    assert len(changed) <= total // 2
    # the quiet table, cached and trusted, read under load: the table's reference network now runs slower
    # than when it was validated (core/drift.py), so the reading is taken again and then not acted on,
    # and the job says so (attempt 7: a slow stretch of the host made the repair cut two networks)
    with cpu_hogs():
        cached, creport, _ = _run(_spec(camvid_ref, budget), tmp_path / "cached", tmp_path / "lut_quiet")
    _one_verdict(cached, creport)
    first = creport["repair"]["measurements"][0]
    # the drift is checked whenever the table the job used has a reference network (a quiet table whose every
    # check network stayed noisy has none: seen on a busy CI runner, where the "quiet" phase was not quiet)
    ref = ((creport["lut"]["trust"].get("validation") or {}).get("reference"))
    assert (first["drift"] is not None) == (ref is not None), f"reference {ref is not None}, reading {first}"
    # under the hogs the reading is noisy, or (a host that gave the hogs spare capacity: seen on this VM) it
    # is quiet and then it must agree with the quiet job's reading of the same network within the noise ratio
    if not first["noisy"] and cached["genotype_hash"] == quiet["genotype_hash"]:
        q0 = quiet_report["repair"]["measurements"][0]["ms"]
        assert max(first["ms"], q0) / min(first["ms"], q0) <= 2.0, f"a reading under hogs passed as quiet: {first}"
    if cached["genotype_hash"] != quiet["genotype_hash"] or first["drifted"]:
        assert creport["measurements_trusted"] is False and cached["noise_warnings"] > 0
    if first["drifted"]:
        assert not creport["repair"].get("edges_changed"), "the repair acted on a drifted reading"


def test_a_cached_table_made_under_load_is_detected_and_measured_again(tmp_path):
    ops = op_names()
    # The old way: two intra-op threads, no noise check, no validation, cached as it came out.
    # (core.latency.build_table, which a job no longer calls directly).
    job = LatencyConfig(intra_op_threads=2, lut_check_networks=3, **FAST)
    with cpu_hogs():
        made = build_table(NET, ops, H, W, torch.device("cpu"), job.precision, job.warmup_runs, job.repeats,
                           tmp_path, burst=job.lut_burst, threads=Threads(job.intra_op_threads, 0))
    assert list(tmp_path.glob(f"lut-{made.id}.json")), "precondition: the unchecked table was cached"
    loaded_entries = dict(made.entries)
    events: list[dict] = []
    table, trust = trusted_table(NET, ops, job, torch.device("cpu"), tmp_path, seed=0, progress=events.append)
    assert trust.cached and table.id == made.id  # the same identity: this is the cached table
    assert trust.remeasured, f"a table made beside {HOGS} hogs was reused as it was: {trust.as_dict()}"
    assert any("re-measuring" in e.get("message", "") for e in events)
    assert any(table.entries[k] != loaded_entries[k] for k in loaded_entries)
    cached = LatencyTable.load(next(tmp_path.glob(f"lut-{made.id}.json")))
    if trust.trusted:  # re-measured, validated, cached again with its validation
        assert cached.validations[network_key(NET, ops)]["passed"] and cached.entries == table.entries
    else:  # still not trustworthy here: kept out of the cache's trust, so the next job checks it again
        assert not (cached.validations.get(network_key(NET, ops)) or {}).get("passed")
        assert trust.reasons


def test_without_repair_the_single_reading_is_recorded_as_the_repair_records_its_readings(camvid_ref, tmp_path):
    spec = _spec(camvid_ref, 1e-3)  # a budget nothing meets: a repair would act; with repair off nothing changes
    spec = spec.model_copy(update={"latency": spec.latency.model_copy(update={"repair": False})})
    summary, report, _ = _run(spec, tmp_path / "norepair", tmp_path / "lut")
    rep = report["repair"]
    assert rep["repaired"] is False and summary["budget_met"] is False and len(rep["measurements"]) == 1
    m = rep["measurements"][0]
    assert {"round", "ms", "noisy", "min_ms", "p90_ms", "attempts", "drift", "drifted", "raw_ms"} <= set(m)
    assert rep["measured_before_ms"] == rep["measured_after_ms"] == m["ms"] and m["round"] == 0
    if m["drift"] is not None and not m["drifted"]:  # drift-corrected as every other reading
        assert m["ms"] == pytest.approx(m["raw_ms"] / m["drift"])
