"""Derivation (GAS.md §6): α' -> genotype, random genotypes, budget filling and over-budget repair.

Three derivations (``latency.derivation``), in :data:`DERIVATIONS`:

- ``argmax`` (the paper's, DARTS's): on each kept edge the strongest non-``none`` op of α';
- ``fill`` [ours]: on each kept edge the strongest *parametric* op, then the repair's greedy steps to
  cheaper ops, in the order that gives up the least α' probability per ms saved, until the LUT
  predicts the budget. Weight-free ops (skip, pooling) are kept only where the budget needs them,
  where α' prefers them most. Why: argmax reads op strength from α magnitudes, and on a barely
  trained supernet those favour weight-free ops (the DARTS collapse), which left attempts 1–2 of
  docs/SEARCH_QUALITY.md 30–50 % under budget and no better than random networks at the budget.
  Measured worse than that (attempt 3): an option, not the default.
- ``pt`` [ours, after DARTS-PT, Wang et al. ICLR 2021; the default since attempt 4]: ops and edges ranked by how much the trained
  supernet's loss rises when each is removed (:mod:`core.perturb`), not by α' magnitudes; then, where
  the LUT predicts more than the budget, the same greedy steps to cheaper ops, giving up the least
  importance per ms saved. α', the GGM and the latency loss still shape the supernet it scores.

Every derivation reads a :class:`Preference` (per cell: a score per edge and op, and a score per
edge; higher = keep): ``argmax`` and ``fill`` the softmax of α', ``pt`` the perturbation scores.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .cell import cell_edges
from .genotype import Cell, Edge, Genotype, Provenance
from .latency import LatencyModel
from .noise import Measurement
from .ops import OPS
from .specs import Derivation, NetworkConfig

EDGES_PER_NODE = 2  # each intermediate node keeps its two strongest inputs


@dataclass
class Preference:
    """What a derivation reads, per cell: ``op[k]`` [edges, ops] (how much each op is worth on each edge)
    and ``edge[k]`` [edges] (how much each edge is worth); higher = keep. ``source`` names where the
    scores come from (``alpha``: softmax of α'; ``perturbation``: :func:`core.perturb.perturbation_preference`)."""

    op: list[torch.Tensor]
    edge: list[torch.Tensor]
    source: str = "alpha"

    @classmethod
    def from_alphas(cls, alphas: list[torch.Tensor], ops: list[str]) -> "Preference":
        """softmax(α') per edge; an edge is worth its strongest op other than ``none`` (DARTS)."""
        keep = torch.tensor([not OPS[o].zero for o in ops])
        probs = [F.softmax(a.detach().float().cpu(), dim=-1) for a in alphas]
        return cls(probs, [p.masked_fill(~keep, -1.0).max(dim=-1).values for p in probs], "alpha")

    @classmethod
    def of(cls, x: "Preference | list[torch.Tensor]", ops: list[str]) -> "Preference":
        return x if isinstance(x, Preference) else cls.from_alphas(x, ops)


def derive_genotype(alphas: "list[torch.Tensor] | Preference", ops: list[str], cfg: NetworkConfig,
                    provenance: Provenance | None = None, parametric_only: bool = False) -> Genotype:
    """Per cell: keep the 2 incoming edges of each node with the highest edge preference (for α':
    the largest max_{o≠none} softmax(α')), and on each the preferred non-``none`` op (the preferred
    parametric op with ``parametric_only``, where the op set has one)."""
    pref = Preference.of(alphas, ops)
    keep = torch.tensor([not OPS[o].zero for o in ops])
    op_keep = keep & torch.tensor([OPS[o].parametric for o in ops]) if parametric_only else keep
    if not bool(op_keep.any()):
        op_keep = keep
    edges = cell_edges(cfg.nodes)
    cells = []
    for k, (p, best_p) in enumerate(zip(pref.op, pref.edge)):
        best_o = p.masked_fill(~op_keep, -float("inf")).argmax(dim=-1)
        nodes = []
        for i in range(cfg.nodes):
            rows = [e for e, (_, dst) in enumerate(edges) if dst == i]
            # Stable ordering: strength descending, then the earlier source first.
            top = sorted(rows, key=lambda e: (-float(best_p[e]), edges[e][0]))[:EDGES_PER_NODE]
            top.sort(key=lambda e: edges[e][0])
            nodes.append(tuple(Edge(input=edges[e][0], op=ops[int(best_o[e])]) for e in top))
        cells.append(Cell(reduction=k in cfg.reduction_cells, nodes=nodes))
    return Genotype(ops=list(ops), network=cfg, cells=cells, provenance=provenance or Provenance())


def random_genotype(cfg: NetworkConfig, ops: list[str], generator: torch.Generator,
                    parametric_p: float | None = None) -> Genotype:
    """A uniformly random architecture of the search space (for LUT validation and baselines).

    ``parametric_p`` skews the op draws instead: each kept edge takes a parametric op with that probability
    (uniform among them), else a weight-free one; a sweep of it from 0 to 1 gives networks that span the space
    from its cheapest to its dearest (bench/latency_trust.py ``--sampling spread``)."""
    kept_ops = [o for o in ops if not OPS[o].zero]
    pools = ([o for o in kept_ops if OPS[o].parametric], [o for o in kept_ops if not OPS[o].parametric])
    cells = []
    for k in range(cfg.num_cells):
        nodes = []
        for i in range(cfg.nodes):
            sources = torch.randperm(2 + i, generator=generator)[:EDGES_PER_NODE].sort().values.tolist()
            if parametric_p is None or not all(pools):
                picks = [kept_ops[o] for o in torch.randint(len(kept_ops), (EDGES_PER_NODE,), generator=generator).tolist()]
            else:
                picks = []
                for u in torch.rand(EDGES_PER_NODE, generator=generator).tolist():
                    pool = pools[0] if u < parametric_p else pools[1]
                    picks.append(pool[int(torch.randint(len(pool), (1,), generator=generator))])
            nodes.append(tuple(Edge(input=s, op=o) for s, o in zip(sources, picks)))
        cells.append(Cell(reduction=k in cfg.reduction_cells, nodes=nodes))
    return Genotype(ops=list(ops), network=cfg, cells=cells, provenance=Provenance(source="random"))


@dataclass
class RepairReport:
    budget_ms: float
    measured_before_ms: float
    measured_after_ms: float
    predicted_before_ms: float
    predicted_after_ms: float
    rounds: int
    edges_changed: list[dict] = field(default_factory=list)
    stopped: str = "within budget"  # why the repair ended (REPAIR_STOPS)
    trusted: bool = True  # False: it ended on a noisy measurement, or on one the LUT disagrees with
    measurements: list[dict] = field(default_factory=list)  # every end-to-end measurement, in order

    @property
    def repaired(self) -> bool:
        return bool(self.edges_changed)

    @property
    def budget_met(self) -> bool:
        return self.measured_after_ms <= self.budget_ms

    def as_dict(self) -> dict:
        return {"budget_ms": self.budget_ms, "measured_before_ms": self.measured_before_ms,
                "measured_after_ms": self.measured_after_ms, "predicted_before_ms": self.predicted_before_ms,
                "predicted_after_ms": self.predicted_after_ms, "rounds": self.rounds, "repaired": self.repaired,
                "budget_met": self.budget_met, "edges_changed": self.edges_changed, "stopped": self.stopped,
                "stop_reason": REPAIR_STOPS[self.stopped], "trusted": self.trusted,
                "measurements": self.measurements}


REPAIR_STOPS = {
    "within budget": "the measured latency is within the budget",
    "noisy": "a measurement stayed noisy (spread within the reading, or the host's speed drifted from the table's) after its retries: the repair does not act on it; run the job on a device with no other work on it (a dedicated worker, `GAS_WORKER_CONCURRENCY=1`), and if the host is now quiet but the table was made under load, delete the table (`gas luts delete ID`) so that it is measured again",
    "disagree": "the measured change after a round disagrees with the LUT's prediction beyond repair_max_disagreement",
    "edge limit": "the next step would change more than repair_max_fraction of the network's edges",
    "nothing cheaper": "every kept edge already has the cheapest op",
    "rounds": "repair_rounds measured rounds were used up",
}
"""Why a repair ends (``RepairReport.stopped``), each with the sentence its report carries."""


def _cheapest_step(genotype: Genotype, alphas: "list[torch.Tensor] | Preference",
                   lat: LatencyModel) -> tuple[int, int, int, str, float] | None:
    """The (cell, node, slot, new op, ms saved) that gives up the least op preference (for α': softmax
    probability) per ms saved."""
    pref = Preference.of(alphas, lat.ops)
    index = {o: n for n, o in enumerate(lat.ops)}
    edges = {edge: e for e, edge in enumerate(cell_edges(genotype.network.nodes))}
    best, best_score = None, float("inf")
    for k, cell in enumerate(genotype.cells):
        p = pref.op[k]
        for i, pair in enumerate(cell.nodes):
            for slot, edge in enumerate(pair):
                e = edges[(edge.input, i)]
                cur_ms = float(lat.grid[k, e, index[edge.op]])
                for o, name in enumerate(lat.ops):
                    saved = cur_ms - float(lat.grid[k, e, o])
                    if OPS[name].zero or saved <= 0:
                        continue
                    score = float(p[e, index[edge.op]] - p[e, o]) / saved
                    if score < best_score:
                        best, best_score = (k, i, slot, name, saved), score
    return best


def _replace(genotype: Genotype, k: int, i: int, slot: int, op: str) -> Genotype:
    doc = genotype.model_dump(mode="json")
    doc["cells"][k]["nodes"][i][slot]["op"] = op
    return Genotype.model_validate(doc)


def step_down_to(genotype: Genotype, alphas: "list[torch.Tensor] | Preference", lat: LatencyModel, target_ms: float,
                 max_steps: int, changes: list[dict] | None = None) -> tuple[Genotype, int]:
    """Apply :func:`_cheapest_step` until the LUT predicts at most ``target_ms`` (or nothing cheaper is
    left, or ``max_steps``); each change is appended to ``changes``. Returns the genotype and the steps."""
    steps = 0
    pref = Preference.of(alphas, lat.ops)
    while lat.genotype_ms(genotype) > target_ms and steps < max_steps:
        step = _cheapest_step(genotype, pref, lat)
        if step is None:
            break
        k, i, slot, op, saved = step
        old = genotype.cells[k].nodes[i][slot].op
        genotype = _replace(genotype, k, i, slot, op)
        if changes is not None:
            changes.append({"cell": k, "node": i, "slot": slot, "from": old, "to": op, "saved_ms": round(saved, 4)})
        steps += 1
    return genotype, steps


def derive_to_budget(alphas: "list[torch.Tensor] | Preference", ops: list[str], cfg: NetworkConfig, lat: LatencyModel,
                     budget_ms: float, provenance: Provenance | None = None) -> tuple[Genotype, dict]:
    """The ``fill`` derivation: strongest parametric op per kept edge, then step down to ``budget_ms``
    by the LUT. Returns the genotype and a report (LUT ms of the start and the end, the changes)."""
    alphas = Preference.of(alphas, ops)
    argmax_ms = lat.genotype_ms(derive_genotype(alphas, ops, cfg))
    genotype = derive_genotype(alphas, ops, cfg, provenance, parametric_only=True)
    start_ms = lat.genotype_ms(genotype)
    changes: list[dict] = []
    genotype, _ = step_down_to(genotype, alphas, lat, budget_ms, max_steps=10 ** 6, changes=changes)
    return genotype, {"derivation": "fill", "budget_ms": budget_ms, "argmax_predicted_ms": round(argmax_ms, 4),
                      "predicted_start_ms": round(start_ms, 4),
                      "predicted_ms": round(lat.genotype_ms(genotype), 4), "edges_changed": changes}


def derive(mode: Derivation, alphas: "list[torch.Tensor] | Preference", ops: list[str], cfg: NetworkConfig, lat: LatencyModel,
           budget_ms: float, provenance: Provenance | None = None) -> tuple[Genotype, dict]:
    """Dispatch on :data:`DERIVATIONS`; returns the genotype and what the derivation did. ``alphas``: α'
    or the :class:`Preference` that :func:`preference_source` of ``mode`` names."""
    preference_source(mode)  # refuses an unknown mode
    fn = DERIVATIONS[mode]
    pref = Preference.of(alphas, ops)
    genotype, doc = fn(pref, ops, cfg, lat, budget_ms, provenance)
    return genotype, {**doc, "preference": pref.source}


def preference_source(mode: str) -> str:
    """What ``mode`` ranks ops and edges by: ``alpha`` or ``perturbation``; unknown modes are a ValueError."""
    if mode not in DERIVATIONS:
        raise ValueError(f"unknown derivation {mode!r}; known: {sorted(DERIVATIONS)}")
    return PREFERENCE_SOURCES[mode]


def _derive_argmax(alphas: list[torch.Tensor], ops: list[str], cfg: NetworkConfig, lat: LatencyModel,
                   budget_ms: float, provenance: Provenance | None = None) -> tuple[Genotype, dict]:
    genotype = derive_genotype(alphas, ops, cfg, provenance)
    return genotype, {"derivation": "argmax", "budget_ms": budget_ms,
                      "predicted_ms": round(lat.genotype_ms(genotype), 4), "edges_changed": []}


def _derive_pt(pref: Preference, ops: list[str], cfg: NetworkConfig, lat: LatencyModel, budget_ms: float,
               provenance: Provenance | None = None) -> tuple[Genotype, dict]:
    """Most important op per most important edges, then down to the budget by the LUT (least importance
    lost per ms saved)."""
    if pref.source != "perturbation":
        raise ValueError("the 'pt' derivation reads perturbation scores (core.perturb), not α'")
    genotype = derive_genotype(pref, ops, cfg, provenance)
    start_ms = lat.genotype_ms(genotype)
    changes: list[dict] = []
    genotype, _ = step_down_to(genotype, pref, lat, budget_ms, max_steps=10 ** 6, changes=changes)
    return genotype, {"derivation": "pt", "budget_ms": budget_ms, "predicted_start_ms": round(start_ms, 4),
                      "predicted_ms": round(lat.genotype_ms(genotype), 4), "edges_changed": changes}


DERIVATIONS: dict[str, Callable[..., tuple[Genotype, dict]]] = {
    "argmax": _derive_argmax, "fill": derive_to_budget, "pt": _derive_pt}
PREFERENCE_SOURCES: dict[str, str] = {"argmax": "alpha", "fill": "alpha", "pt": "perturbation"}
"""What each derivation ranks by (the pipeline computes perturbation scores only for those that need them)."""


def repair_to_budget(genotype: Genotype, alphas: "list[torch.Tensor] | Preference", lat: LatencyModel,
                     measure_ms: Callable[[Genotype], "float | Measurement | dict"], budget_ms: float, max_rounds: int,
                     max_steps: int, max_fraction: float = 0.5,
                     max_disagreement: float = 0.5) -> tuple[Genotype, RepairReport]:
    """Step the weakest edges to cheaper ops (by the LUT) until the *measured* latency fits.

    Each round converts the measured excess into a LUT-scale target (measured/predicted ratio),
    applies the cheapest steps until the LUT predicts the target, then measures again. It acts only
    on a measurement that passed the noise check (``measure_ms`` may return a plain number, taken as
    quiet, or a :class:`~core.noise.Measurement` / measure_latency dict with its verdict), and stops
    with a reason (:data:`REPAIR_STOPS`) when a measurement stays noisy, when the measured change
    after a round is off the LUT-scaled expectation by more than ``max_disagreement`` (relative),
    or before changing more than ``max_fraction`` of the network's edges.
    """
    alphas = Preference.of(alphas, lat.ops)
    total_edges = sum(len(pair) for cell in genotype.cells for pair in cell.nodes)
    edge_limit = int(max_fraction * total_edges)
    predicted0 = lat.genotype_ms(genotype)

    def take(g: Genotype, round_: int) -> Measurement:
        m = Measurement.of(measure_ms(g))
        report.measurements.append({"round": round_, **m.as_dict(), "predicted_ms": lat.genotype_ms(g)})
        return m

    report = RepairReport(budget_ms, 0.0, 0.0, predicted0, predicted0, 0)
    m = take(genotype, 0)
    report.measured_before_ms = m.ms
    touched: set[tuple[int, int, int]] = set()
    rounds, stopped = 0, "within budget"
    while m.ms > budget_ms:
        if m.noisy:
            stopped = "noisy"
            break
        if rounds >= max_rounds:
            stopped = "rounds"
            break
        rounds += 1
        predicted = lat.genotype_ms(genotype)
        target = predicted * budget_ms / m.ms
        steps = 0
        while lat.genotype_ms(genotype) > target and steps < max_steps:
            step = _cheapest_step(genotype, alphas, lat)
            if step is None:
                stopped = "nothing cheaper"
                break
            k, i, slot, op, saved = step
            if (k, i, slot) not in touched and len(touched) >= edge_limit:
                stopped = "edge limit"
                break
            touched.add((k, i, slot))
            old = genotype.cells[k].nodes[i][slot].op
            genotype = _replace(genotype, k, i, slot, op)
            report.edges_changed.append({"cell": k, "node": i, "slot": slot, "from": old, "to": op,
                                         "saved_ms": round(saved, 4), "round": rounds})
            steps += 1
        if steps == 0:
            break  # stopped says why: nothing cheaper, or the edge limit
        before = m
        m = take(genotype, rounds)
        expected = before.ms * lat.genotype_ms(genotype) / predicted
        if not m.noisy and abs(m.ms / expected - 1.0) > max_disagreement:
            stopped = "disagree"
            break
        if stopped != "within budget":
            break  # a limit was hit inside the round: measured, reported, no further rounds
    else:
        stopped = "within budget"
    if m.noisy and m.ms > budget_ms:
        stopped = "noisy"
    report.stopped, report.trusted = stopped, not m.noisy and stopped != "disagree"
    report.rounds, report.measured_after_ms = rounds, m.ms
    report.predicted_after_ms = lat.genotype_ms(genotype)
    if report.repaired:
        genotype.provenance.source = "repaired"
        genotype.provenance.repaired_edges = len(report.edges_changed)
    return genotype, report
