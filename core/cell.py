"""Cells (GAS.md §2): a DAG with 2 input nodes and B intermediate nodes.

``SearchCell`` holds a mixed operation on every edge; ``DerivedCell`` holds the two kept
(input, op) pairs per node of a genotype. Both share the edge enumeration of :func:`cell_edges`
and the input preprocessing of :class:`CellInputs`.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from .genotype import Cell as CellGenotype
from .ops import OPS, FactorizedReduce, ReLUConvBN, build_op


@lru_cache(maxsize=None)
def cell_edges(nodes: int) -> tuple[tuple[int, int], ...]:
    """Edges of the cell DAG as (source node, intermediate node index), in α row order.

    Node ids: 0 = cell k-2, 1 = cell k-1, 2+i = intermediate node i.
    """
    return tuple((j, i) for i in range(nodes) for j in range(2 + i))


def edge_stride(source: int, reduction: bool) -> int:
    """Every operation that touches an input node of a reduction cell has stride 2 [paper]."""
    return 2 if reduction and source < 2 else 1


class CellInputs(nn.Module):
    """Brings the outputs of cells k-2 and k-1 to C channels (factorized reduce when k-2 is larger)."""

    def __init__(self, c_prev_prev: int, c_prev: int, c: int, reduction_prev: bool, affine: bool):
        super().__init__()
        self.pre0 = (FactorizedReduce(c_prev_prev, c, affine) if reduction_prev
                     else ReLUConvBN(c_prev_prev, c, 1, 1, 0, affine))
        self.pre1 = ReLUConvBN(c_prev, c, 1, 1, 0, affine)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pre0(s0), self.pre1(s1)


def search_op(name: str, c: int, stride: int) -> nn.Module:
    """An op as the search mixed op holds it: BN without affine parameters, and ops marked
    ``search_bn`` (pooling) followed by an affine-free BN, so they sit on the BN'd convs' scale (DARTS)."""
    op = build_op(name, c, stride, affine=False)
    return nn.Sequential(op, nn.BatchNorm2d(c, affine=False)) if OPS[name].search_bn else op


def _compiling() -> bool:
    """True while torch.compile traces (``torch.compiler.is_compiling``; False on a torch without it)."""
    check = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(check()) if check is not None else False


class FreeOpDropout(nn.Module):
    """Dropout on a weight-free op's output (``SearchConfig.free_op_dropout``), in training mode only.

    Eager: ``torch.native_dropout``, which is what ``F.dropout`` runs on CUDA (one fused kernel, a 1-byte mask
    saved for backward); on a CPU ``F.dropout`` would save a 4-byte mask per element instead. Traced by
    torch.compile (core/compile.py): the keep probability is read from a (non-persistent) buffer, not a Python
    float, because a float would be a constant of the graph and the searcher changes the rate every epoch, so
    every epoch would compile again. The compiled mask is drawn in fp32 (under bf16 autocast a bf16 draw would
    quantise the rate)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("keep", torch.ones(()), persistent=False)
        self.p = 0.0  # the rate, as a float for the eager path
        self.active = False

    def set_p(self, p: float) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}")
        self.keep.fill_(1.0 - p)
        self.p, self.active = float(p), p > 0.0

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if not (self.active and self.training):
            return y
        if not _compiling():  # what F.dropout runs on CUDA; on a CPU F.dropout would save a 4-byte mask
            return torch.native_dropout(y, self.p, True)[0]
        return y * (torch.rand_like(y, dtype=torch.float32) < self.keep) / self.keep.to(y.dtype)


class MixedOp(nn.Module):
    """ō(x) = Σ_o w_o · o(x) over the candidate ops of one edge."""

    def __init__(self, ops: list[str], c: int, stride: int):
        super().__init__()
        self.ops = nn.ModuleList(search_op(o, c, stride) for o in ops)
        self.zero = [OPS[o].zero for o in ops]
        self.free = [not OPS[o].parametric and not OPS[o].zero for o in ops]
        self.free_drop = FreeOpDropout()  # its rate is set by the searcher (SearchConfig.free_op_dropout)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = None
        for w, op, zero, free in zip(weights, self.ops, self.zero, self.free):
            if zero:
                continue  # contributes nothing but its share of the softmax
            y = op(x)
            if free:
                y = self.free_drop(y)
            y = w * y
            out = y if out is None else out + y
        return out


class SearchCell(nn.Module):
    def __init__(self, ops: list[str], nodes: int, c_prev_prev: int, c_prev: int, c: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.nodes = nodes
        self.inputs = CellInputs(c_prev_prev, c_prev, c, reduction_prev, affine=False)
        self.edges = nn.ModuleList(MixedOp(ops, c, edge_stride(j, reduction)) for j, _ in cell_edges(nodes))
        self.out_channels = nodes * c

    def set_free_dropout(self, p: float) -> None:
        for edge in self.edges:
            edge.free_drop.set_p(float(p))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = list(self.inputs(s0, s1))
        e = 0
        for i in range(self.nodes):
            acc = None
            for j in range(2 + i):
                y = self.edges[e](states[j], weights[e])
                acc = y if acc is None else acc + y
                e += 1
            states.append(acc)
        return torch.cat(states[2:], dim=1)


class DerivedCell(nn.Module):
    def __init__(self, genotype: CellGenotype, c_prev_prev: int, c_prev: int, c: int, reduction_prev: bool):
        super().__init__()
        self.reduction = genotype.reduction
        self.inputs = CellInputs(c_prev_prev, c_prev, c, reduction_prev, affine=True)
        self.sources = [tuple(e.input for e in pair) for pair in genotype.nodes]
        self.ops = nn.ModuleList(
            build_op(e.op, c, edge_stride(e.input, self.reduction), affine=True)
            for pair in genotype.nodes for e in pair
        )
        self.out_channels = len(genotype.nodes) * c

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = list(self.inputs(s0, s1))
        for i, (a, b) in enumerate(self.sources):
            states.append(self.ops[2 * i](states[a]) + self.ops[2 * i + 1](states[b]))
        return torch.cat(states[2:], dim=1)
