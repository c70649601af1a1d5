"""Latency lookup tables and the differentiable expected latency (GAS.md §4).

A :class:`LatencyTable` holds measured timings of every (part, op, channels, shape, stride) that a
network of a given macro config sees at the deployment resolution, on this device, at this
precision, batch 1. It is built by :func:`build_table` (a measurement step, never lazily inside a
forward pass), saved as JSON, reused; a missing key raises :class:`MissingLatency`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .cell import cell_edges, edge_stride
from .network import STEM_STRIDE, Head, Stem, channel_plan
from .ops import OPS, FactorizedReduce, ReLUConvBN, build_op
from .noise import BusyHost, NoisePolicy, is_noisy, measure_until_quiet
from .specs import NetworkConfig
from .threads import Threads, measuring
from .timing import TimingStats, device_name, software_versions, time_callable

LUT_FORMAT_VERSION = 2  # 2: spread (min) and noise verdict per entry, runtime and threads in the identity, validations
RUNTIME = "torch-eager"  # the default runtime (core/runtimes.py holds the registry)
BATCH = 1  # the LUT and every FPS figure are batch 1


class MissingLatency(KeyError):
    """A latency the table does not hold: measure it (build_table) before asking for it."""


@dataclass(frozen=True, order=True)
class LutKey:
    part: str  # "op" | "pre" | "glue" | "stem" | "head"
    name: str  # op name, or the module kind of a fixed part
    c_in: int
    c_out: int
    height: int  # input height of the part
    width: int
    stride: int

    def as_str(self) -> str:
        return f"{self.part}/{self.name}/c{self.c_in}-{self.c_out}/{self.height}x{self.width}/s{self.stride}"


@dataclass(frozen=True)
class LutContext:
    device: str
    precision: str
    batch: int
    height: int
    width: int
    torch: str
    cuda: str | None
    cudnn: str | None
    cudnn_benchmark: bool
    channels_last: bool
    burst: int = 1  # back-to-back calls per timed sample
    runtime: str = RUNTIME
    intra_op_threads: int = 0  # threads the entries were timed with (0: not recorded)
    inter_op_threads: int = 0
    runtime_version: str | None = None  # e.g. onnxruntime's version; None for torch-eager (torch is above)

    def table_id(self) -> str:
        doc = asdict(self)
        if doc["runtime_version"] is None:  # torch-eager tables keep the ids they had before runtimes existed
            del doc["runtime_version"]
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def current_context(device: torch.device, precision: str, height: int, width: int, burst: int = 1,
                    threads: Threads | None = None, runtime: str = RUNTIME) -> LutContext:
    """The identity of a table measured now, here, in ``runtime``, under ``threads`` (None: the threads in force)."""
    from .runtimes import get_runtime

    v = software_versions()
    with measuring(threads) as used:
        name = device_name(device)
    return LutContext(name, precision, BATCH, height, width, v["torch"], v["cuda"], v["cudnn"],
                      bool(torch.backends.cudnn.benchmark), device.type == "cuda", burst, runtime,
                      used.intra_op, used.inter_op, get_runtime(runtime).version())


def network_key(cfg: NetworkConfig, ops: Iterable[str]) -> str:
    """Which search space a validation of a table refers to (a table can serve several)."""
    doc = {"network": cfg.model_dump(mode="json"), "ops": sorted(ops)}
    return "net-" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class LatencyTable:
    context: LutContext
    entries: dict[LutKey, TimingStats] = field(default_factory=dict)
    validations: dict[str, dict] = field(default_factory=dict)  # network_key -> lut_check.validate_table result

    @property
    def id(self) -> str:
        return self.context.table_id()

    def noisy_keys(self, keys: Iterable[LutKey], policy: NoisePolicy | None = None) -> list[LutKey]:
        """Entries flagged noisy when measured, or whose recorded spread fails ``policy`` now (a table
        cached with a laxer threshold, or with noise checks off)."""
        return [k for k in keys if k in self.entries and (self.entries[k].noisy or (
            policy is not None and is_noisy(self.entries[k].min_ms, self.entries[k].p90_ms, policy)))]

    def ms(self, key: LutKey) -> float:
        try:
            return self.entries[key].median_ms
        except KeyError:
            raise MissingLatency(f"no latency for {key.as_str()} in table {self.id} ({self.context.device}, "
                                 f"{self.context.precision}, {self.context.height}x{self.context.width})") from None

    def to_json(self) -> str:
        return json.dumps({
            "format_version": LUT_FORMAT_VERSION, "id": self.id, "context": asdict(self.context),
            "entries": [{**asdict(k), **v.as_dict()} for k, v in sorted(self.entries.items())],
            "validations": self.validations,
        }, indent=1)

    def save(self, path: str | Path) -> None:
        from .checkpoint import atomic_write_bytes

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, self.to_json().encode())

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        doc = json.loads(Path(path).read_text())
        if doc.get("format_version") != LUT_FORMAT_VERSION:
            raise ValueError(f"{path}: LUT format_version {doc.get('format_version')!r}, expected {LUT_FORMAT_VERSION}")
        ctx = LutContext(**doc["context"])
        key_fields = set(LutKey.__dataclass_fields__)
        stat_fields = set(TimingStats.__dataclass_fields__)
        entries = {LutKey(**{k: e[k] for k in key_fields}): TimingStats(**{k: e[k] for k in stat_fields if k in e})
                   for e in doc["entries"]}
        return cls(ctx, entries, dict(doc.get("validations") or {}))


# -- what a network needs ------------------------------------------------------------------------
def _down(n: int) -> int:
    return (n + 1) // 2  # every stride-2 op here maps n -> ceil(n / 2)


@dataclass(frozen=True)
class CellShapes:
    h: int  # resolution of s1 (and of every edge's input, except inside a reduction cell: edge_input_hw)
    w: int
    h0: int  # resolution of s0
    w0: int


def cell_shapes(cfg: NetworkConfig, height: int, width: int) -> list[CellShapes]:
    h, w = height, width
    for _ in range(STEM_STRIDE.bit_length() - 1):
        h, w = _down(h), _down(w)
    out, prev_in = [], (h, w)
    for p in channel_plan(cfg):
        h0, w0 = prev_in
        out.append(CellShapes(h, w, h0, w0))
        prev_in = (h, w)
        if p.reduction:
            h, w = _down(h), _down(w)
    return out


def stem_key(cfg: NetworkConfig, height: int, width: int) -> LutKey:
    return LutKey("stem", "stem", 3, cfg.stem_channels, height, width, STEM_STRIDE)


def head_key(cfg: NetworkConfig, height: int, width: int) -> LutKey:
    last = cell_shapes(cfg, height, width)[-1]
    plan = channel_plan(cfg)[-1]
    h, w = (_down(last.h), _down(last.w)) if plan.reduction else (last.h, last.w)
    return LutKey("head", "head" + ("_skip" if cfg.low_level_skip else ""), cfg.nodes * plan.c, cfg.num_classes, h, w, 1)


def pre_keys(cfg: NetworkConfig, height: int, width: int) -> list[tuple[LutKey, LutKey]]:
    keys = []
    for p, s in zip(channel_plan(cfg), cell_shapes(cfg, height, width)):
        k0 = LutKey("pre", "factorized_reduce" if p.reduction_prev else "relu_conv_bn_1x1", p.c_prev_prev, p.c, s.h0, s.w0,
                    2 if p.reduction_prev else 1)
        k1 = LutKey("pre", "relu_conv_bn_1x1", p.c_prev, p.c, s.h, s.w, 1)
        keys.append((k0, k1))
    return keys


def glue_keys(cfg: NetworkConfig, height: int, width: int) -> list[LutKey]:
    """Per cell: the node sums and the output concatenation, at the cell's output resolution."""
    keys = []
    for p, s in zip(channel_plan(cfg), cell_shapes(cfg, height, width)):
        h, w = (_down(s.h), _down(s.w)) if p.reduction else (s.h, s.w)
        keys.append(LutKey("glue", "cell", p.c, cfg.nodes * p.c, h, w, 1))
    return keys


def edge_input_hw(shapes: CellShapes, source: int, reduction: bool) -> tuple[int, int]:
    """Resolution of the input of an edge leaving node ``source``: the cell's input resolution for
    the input nodes (0, 1); inside a reduction cell the intermediate nodes (source >= 2) are
    already at the reduced resolution."""
    if reduction and source >= 2:
        return _down(shapes.h), _down(shapes.w)
    return shapes.h, shapes.w


def op_key(op: str, c: int, shapes: CellShapes, source: int, reduction: bool) -> LutKey:
    """The key of ``op`` on the edge leaving node ``source`` of a cell with these shapes."""
    h, w = edge_input_hw(shapes, source, reduction)
    return LutKey("op", op, c, c, h, w, edge_stride(source, reduction))


def required_keys(cfg: NetworkConfig, ops: Iterable[str], height: int, width: int) -> list[LutKey]:
    keys = {stem_key(cfg, height, width), head_key(cfg, height, width)}
    for k0, k1 in pre_keys(cfg, height, width):
        keys.update((k0, k1))
    keys.update(glue_keys(cfg, height, width))
    sources = {src for src, _ in cell_edges(cfg.nodes)}
    for p, s in zip(channel_plan(cfg), cell_shapes(cfg, height, width)):
        for src in sources:
            keys.update(op_key(o, p.c, s, src, p.reduction) for o in ops if not OPS[o].zero)
    return sorted(keys)


# -- measurement -----------------------------------------------------------------------------
class _GlueProbe(nn.Module):
    """What a derived cell does besides its ops: one sum per node, then the concatenation."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat([xs[i] + xs[i + 1] for i in range(0, len(xs), 2)], dim=1)


class _HeadProbe(nn.Module):
    def __init__(self, cfg: NetworkConfig, c_last: int, out_size: tuple[int, int]):
        super().__init__()
        self.head, self.out_size = Head(cfg, c_last), out_size

    def forward(self, feat: torch.Tensor, stem: torch.Tensor) -> torch.Tensor:
        return self.head(feat, stem, self.out_size)


def _module_and_inputs(key: LutKey, cfg: NetworkConfig, height: int, width: int) -> tuple[nn.Module, list[torch.Tensor]]:
    x = torch.randn(BATCH, key.c_in, key.height, key.width)
    if key.part == "op":
        return build_op(key.name, key.c_in, key.stride, affine=True), [x]
    if key.part == "pre":
        mod = FactorizedReduce(key.c_in, key.c_out) if key.name == "factorized_reduce" else ReLUConvBN(key.c_in, key.c_out, 1, 1, 0)
        return mod, [x]
    if key.part == "glue":
        n_inputs = 2 * (key.c_out // key.c_in)
        return _GlueProbe(), [torch.randn(BATCH, key.c_in, key.height, key.width) for _ in range(n_inputs)]
    if key.part == "stem":
        return Stem(cfg.stem_channels), [x]
    if key.part == "head":
        stem_hw = cell_shapes(cfg, height, width)[0]
        stem = torch.randn(BATCH, cfg.stem_channels, stem_hw.h, stem_hw.w)
        return _HeadProbe(cfg, key.c_in, (height, width)), [x, stem]
    raise ValueError(f"unknown LUT part {key.part!r}")


def measure_key(key: LutKey, cfg: NetworkConfig, height: int, width: int, device: torch.device, precision: str,
                warmup: int, repeats: int, burst: int = 1, noise: NoisePolicy | None = None,
                threads: Threads | None = None, runtime: str = RUNTIME) -> TimingStats:
    """Time one key in ``runtime``; with a noise policy a noisy timing is repeated (bounded) and kept
    flagged if it stays noisy."""
    from .runtimes import callable_for

    mod, inputs = _module_and_inputs(key, cfg, height, width)
    with measuring(threads):
        fn = callable_for(runtime, mod, inputs, device, precision, threads)

    def once() -> TimingStats:
        with torch.no_grad(), measuring(threads):
            return time_callable(fn, device, warmup, repeats, burst)

    if noise is None:
        return once()
    stats, attempts, noisy = measure_until_quiet(once, lambda t: is_noisy(t.min_ms, t.p90_ms, noise), noise)
    return TimingStats(stats.median_ms, stats.p10_ms, stats.p90_ms, stats.count, stats.min_ms, noisy, attempts)


def table_path(cache_dir: str | Path, ctx: LutContext) -> Path:
    return Path(cache_dir) / f"lut-{ctx.table_id()}.json"


def load_or_new(ctx: LutContext, cache_dir: str | Path | None) -> LatencyTable:
    """The cached table of this identity, or an empty one. A file whose recorded identity is not ``ctx``
    (copied from another machine, or written by another torch/runtime/thread setting and renamed) or
    that cannot be read is not reused: the job measures a new table, which replaces it once it passes."""
    path = table_path(cache_dir, ctx) if cache_dir else None
    if not (path and path.exists()):
        return LatencyTable(ctx)
    try:
        table = LatencyTable.load(path)
    except (ValueError, TypeError, KeyError):  # another format version, a damaged file
        return LatencyTable(ctx)
    return table if table.context == ctx else LatencyTable(ctx)


def measure_into(table: LatencyTable, keys: list[LutKey], cfg: NetworkConfig, device: torch.device, warmup: int,
                 repeats: int, progress: Callable[[int, int, LutKey], None] | None = None,
                 noise: NoisePolicy | None = None, threads: Threads | None = None) -> None:
    """(Re-)measure ``keys`` into ``table`` with the table's own precision, resolution and burst
    (retries of noisy entries stop after :data:`core.noise.GIVE_UP_AFTER` in a row stayed noisy)."""
    ctx = table.context
    busy = BusyHost(noise) if noise is not None else None
    for i, key in enumerate(keys):
        stats = measure_key(key, cfg, ctx.height, ctx.width, device, ctx.precision, warmup, repeats, ctx.burst,
                            busy.current() if busy else None, threads, ctx.runtime)
        table.entries[key] = stats
        if busy:
            busy.record(stats.noisy)
        if progress:
            progress(i + 1, len(keys), key)


def build_table(cfg: NetworkConfig, ops: list[str], height: int, width: int, device: torch.device, precision: str,
                warmup: int, repeats: int, cache_dir: str | Path | None = None,
                progress: Callable[[int, int, LutKey], None] | None = None, burst: int = 1,
                noise: NoisePolicy | None = None, threads: Threads | None = None,
                runtime: str = RUNTIME) -> LatencyTable:
    """Measure every key the network needs (reusing a cached table of the same context), unchecked.
    ``burst``: back-to-back calls per timed sample (1 = each call timed alone). A job uses
    :func:`core.lut_trust.trusted_table`, which validates a table before it caches or trusts it."""
    ctx = current_context(device, precision, height, width, burst, threads, runtime)
    table = load_or_new(ctx, cache_dir)
    missing = [k for k in required_keys(cfg, ops, height, width) if k not in table.entries]
    measure_into(table, missing, cfg, device, warmup, repeats, progress, noise, threads)
    if cache_dir and missing:
        table.save(table_path(cache_dir, ctx))
    return table


# -- expected latency ------------------------------------------------------------------------
def calibration_scale(table: LatencyTable, cfg: NetworkConfig, ops: Iterable[str]) -> float:
    """The scale of the table's passing validation for this search space (core/lut_check.py), else 1.0."""
    v = table.validations.get(network_key(cfg, ops)) or {}
    cal = v.get("calibration") if v.get("passed") else None
    return float(cal["scale"]) if cal and cal.get("scale") else 1.0


class LatencyModel(nn.Module):
    """LAT(α') = const + Σ_k Σ_e w_e Σ_{o≠none} p_{k,e,o} · LAT_k(e, o)  (differentiable in α').

    [ours] Two corrections make the expectation comparable to a derived network, which keeps 2 of
    the 2+i inputs of node i and never keeps ``none``: w_e = 2/(2+i), and p is the softmax over the
    non-``none`` ops.

    [ours] Every term is multiplied by ``scale``: by default the calibration of the table's passing
    validation for this search space (:func:`calibration_scale`; 1.0 when it has none), so that the
    prediction, the derivation's budget arithmetic and the repair speak of whole-network milliseconds.
    """

    def __init__(self, table: LatencyTable, cfg: NetworkConfig, ops: list[str], height: int, width: int,
                 scale: float | None = None):
        super().__init__()
        self.scale = calibration_scale(table, cfg, ops) if scale is None else float(scale)
        self.cfg, self.ops, self.height, self.width = cfg, list(ops), height, width
        edges = cell_edges(cfg.nodes)
        grid = torch.zeros(cfg.num_cells, len(edges), len(ops), dtype=torch.float64)
        for k, (p, s) in enumerate(zip(channel_plan(cfg), cell_shapes(cfg, height, width))):
            for e, (src, _) in enumerate(edges):
                for o, name in enumerate(ops):
                    if not OPS[name].zero:
                        grid[k, e, o] = table.ms(op_key(name, p.c, s, src, p.reduction))
        const = table.ms(stem_key(cfg, height, width)) + table.ms(head_key(cfg, height, width))
        const += sum(table.ms(k0) + table.ms(k1) for k0, k1 in pre_keys(cfg, height, width))
        const += sum(table.ms(k) for k in glue_keys(cfg, height, width))
        grid, const = grid * self.scale, const * self.scale
        self.register_buffer("grid", grid.float(), persistent=False)
        self.register_buffer("edge_weight", torch.tensor([2.0 / (2 + i) for _, i in edges]), persistent=False)
        self.register_buffer("nonzero", torch.tensor([not OPS[o].zero for o in ops]), persistent=False)
        self.const_ms = float(const)
        self.table_id = table.id

    def forward(self, alphas: list[torch.Tensor]) -> torch.Tensor:
        a = torch.stack(alphas).float()
        p = F.softmax(a.masked_fill(~self.nonzero, float("-inf")), dim=-1)
        return self.const_ms + (p * self.grid * self.edge_weight[None, :, None]).sum()

    def genotype_ms(self, genotype) -> float:
        """LUT prediction for a derived network: const + Σ of its kept operations."""
        index = {name: o for o, name in enumerate(self.ops)}
        edges = {edge: e for e, edge in enumerate(cell_edges(self.cfg.nodes))}
        total = self.const_ms
        for k, cell in enumerate(genotype.cells):
            for i, pair in enumerate(cell.nodes):
                for edge in pair:
                    total += float(self.grid[k, edges[(edge.input, i)], index[edge.op]])
        return total
