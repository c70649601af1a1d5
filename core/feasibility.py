"""Choosing a budget (issue 11 section 6): what is feasible before a search.

For a search space (network shape, op subset) at a resolution and precision on this worker's device
and runtime, a feasibility job answers with three networks of the space:

- **cheapest**: per node the two inputs whose cheapest op is cheapest, each with that op (the LUT's
  minimum over every derivable network: no budget below it can be met by any network of the space);
- **dearest**: the same with the dearest ops (every network of the space meets a budget above it);
- **typical**: the median LUT latency of ``typical_samples`` uniformly random networks (the one
  nearest the median is the one measured), with the 10th-90th percentile range.

The table is the job's trusted table (:func:`core.lut_trust.trusted_table`): the cached, validated one
when it exists (nothing is measured for it), else measured, validated and cached, so the search that
follows reuses it. With ``measure`` (default) the three networks are also timed end to end, because
the LUT sum of a whole network under-predicts it (15-25 % on this repository's CPU tables): the
measured figures are the ones to pick a budget from; both are reported, with each timing's spread and
noise verdict. Every timing runs under the device's measuring lock (:mod:`core.device_lock`).
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import save_json
from .derive import EDGES_PER_NODE, random_genotype
from .device_lock import DeviceLock, default_lock_dir
from .fps import measure_latency
from .genotype import Cell, Edge, Genotype, Provenance
from .latency import LatencyModel
from .lut_trust import trusted_table
from .network import DerivedNet
from .noise import NoisePolicy
from .ops import OPS, op_names
from .runtimes import check_runtime
from .pipeline import _check, _dirs, job_threads, pick_device, save_report
from .specs import FeasibilityJobSpec
from .timing import set_cudnn_benchmark

NETWORKS = ("cheapest", "typical", "dearest")


def extreme_genotype(model: LatencyModel, dearest: bool) -> Genotype:
    """The derivable network of the space with the smallest (or largest) LUT latency: the fixed parts
    are the same for every network, so per node the two inputs (and per input the op) that minimise
    (maximise) the table's sum are taken."""
    pick = max if dearest else min
    edges = {(src, node): e for e, (src, node) in enumerate(_edges(model))}
    kept = [o for o, name in enumerate(model.ops) if not OPS[name].zero]
    cells = []
    for k in range(model.cfg.num_cells):
        nodes = []
        for i in range(model.cfg.nodes):
            best = []  # (cost, source, op index) of each possible input of node i
            for src in range(2 + i):
                o = pick(kept, key=lambda o: float(model.grid[k, edges[(src, i)], o]))
                best.append((float(model.grid[k, edges[(src, i)], o]), src, o))
            best.sort(key=lambda t: (-t[0] if dearest else t[0], t[1]))
            chosen = sorted(best[:EDGES_PER_NODE], key=lambda t: t[1])
            nodes.append(tuple(Edge(input=src, op=model.ops[o]) for _, src, o in chosen))
        cells.append(Cell(reduction=k in model.cfg.reduction_cells, nodes=nodes))
    return Genotype(ops=list(model.ops), network=model.cfg, cells=cells,
                    provenance=Provenance(source="manual", lut_id=model.table_id))


def _edges(model: LatencyModel):
    from .cell import cell_edges

    return cell_edges(model.cfg.nodes)


def typical_genotype(model: LatencyModel, samples: int, seed: int) -> tuple[Genotype, list[float]]:
    """The random network whose LUT latency is nearest the median of ``samples`` random networks, and
    every sample's LUT latency."""
    gen = torch.Generator().manual_seed(seed)
    nets = [random_genotype(model.cfg, model.ops, gen) for _ in range(samples)]
    preds = [model.genotype_ms(g) for g in nets]
    med = statistics.median(preds)
    i = min(range(len(preds)), key=lambda j: abs(preds[j] - med))
    return nets[i], preds


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def feasibility_pipeline(spec: FeasibilityJobSpec, workdir: Path, progress: Callable[[dict], None],
                         should_cancel: Callable[[], bool], lut_dir: str | Path | None) -> dict:
    art, _ = _dirs(workdir)
    device = pick_device()
    set_cudnn_benchmark()  # before the table: its identity records the flag
    lat, cfg = spec.latency, spec.network
    ops = op_names(spec.ops)
    check_runtime(lat.runtime, device, lat.precision)
    noise, threads = NoisePolicy.from_config(lat), job_threads(lat)
    lut_dir = Path(lut_dir) if lut_dir else workdir / "lut"
    lock = DeviceLock.for_device(device, default_lock_dir(lut_dir), progress, should_cancel)
    _check(should_cancel, "before the latency table")
    with lock.hold("latency_table"):  # read the cache under the lock: a table another job just measured is reused
        table, trust = trusted_table(cfg, ops, lat, device, lut_dir, spec.seed, progress, should_cancel)
    _check(should_cancel, "while measuring the latency table")
    model = LatencyModel(table, cfg, ops, lat.height, lat.width, scale=None if lat.lut_calibrate else 1.0)
    typical, preds = typical_genotype(model, spec.typical_samples, spec.seed)
    nets = {"cheapest": extreme_genotype(model, dearest=False), "typical": typical,
            "dearest": extreme_genotype(model, dearest=True)}
    rows: dict[str, dict] = {}
    for name, g in nets.items():
        rows[name] = {"genotype_hash": g.arch_hash(), "lut_ms": round(model.genotype_ms(g), 4),
                      "ops": sorted({e.op for c in g.cells for pair in c.nodes for e in pair})}
    warnings = []
    if spec.measure:
        progress({"phase": "measure", "message": "measuring the cheapest, a typical and the dearest network end to end"})
        with lock.hold("end_to_end"):
            for name, g in nets.items():
                _check(should_cancel, "while measuring")
                m = measure_latency(DerivedNet(g), lat.height, lat.width, device, lat.precision, lat.warmup_runs,
                                    spec.repeats, noise=noise, threads=threads, runtime=lat.runtime)
                rows[name]["measured"] = {"median": round(m["median_ms"], 4), "min": round(m["min_ms"], 4),
                                          "p90": round(m["p90_ms"], 4), "noisy": m["noisy"],
                                          "attempts": m["attempts"]}
                rows[name]["measured_fps"] = round(1000.0 / m["median_ms"], 2) if m["median_ms"] > 0 else None
                if m["noisy"]:
                    msg = f"end-to-end timing of the {name} network stayed noisy (p90/min > {noise.max_ratio})"
                    warnings.append(msg)
                    progress({"phase": "noise", "noisy": True, "message": msg})
    if not trust.trusted:
        warnings.append(f"latency table {table.id} not trusted (not cached): {'; '.join(trust.reasons)}")
    trusted = trust.trusted and not any(r.get("measured", {}).get("noisy") for r in rows.values())

    def figure(name: str) -> float:
        r = rows[name]
        return r["measured"]["median"] if "measured" in r else r["lut_ms"]

    basis = "measured end to end" if spec.measure else "LUT sum (not measured end to end)"
    advice = (f"on {table.context.device} ({table.context.runtime}, {lat.precision}, {lat.height}x{lat.width}): no "
              f"network of this space runs under {figure('cheapest'):.2f} ms, a typical one takes "
              f"{figure('typical'):.2f} ms and the dearest {figure('dearest'):.2f} ms ({basis})")
    validation = trust.validation or {}
    doc = {
        "device": table.context.device, "runtime": table.context.runtime, "precision": lat.precision,
        "resolution": [lat.height, lat.width], "batch": 1, "threads": {"intra_op": table.context.intra_op_threads,
                                                                       "inter_op": table.context.inter_op_threads},
        "table": {"id": table.id, "trusted": trust.trusted, "cached": trust.cached, "saved": trust.saved,
                  "validated_now": trust.validated,
                  "median_rel_error": validation.get("median_rel_error"),
                  "rank_correlation": validation.get("rank_correlation"),
                  "mean_signed_error": validation.get("mean_signed_error"), "calibration_scale": model.scale},
        "networks": rows, "typical_lut_range_ms": [round(_percentile(preds, 0.1), 4), round(_percentile(preds, 0.9), 4)],
        "typical_samples": len(preds), "basis": basis, "measurements_trusted": trusted, "warnings": warnings,
        "advice": advice,
    }
    for name, g in nets.items():
        g.save(art / f"genotype_{name}.json")
    report = {"kind": "feasibility", "feasibility": doc, "lut": {"id": table.id, "trust": trust.as_dict()},
              "device_lock": lock.as_dict(), "settings": spec.model_dump(mode="json")}
    save_report(art, report, spec, workdir)
    save_json(art / "feasibility.json", doc)
    return {"feasibility": doc, "device": table.context.device, "measurements_trusted": trusted}
