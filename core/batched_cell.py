"""The search cell with its candidate ops batched per source node (issue "search speed") [ours].

Computes exactly what :class:`core.cell.SearchCell` computes (a test checks outputs and gradients on
the same weights), with far fewer kernel launches and saved activations:

- every edge leaving one node sees the same input, so a node's ``m`` out-edges are computed together
  (:class:`SourceOps`) as soon as the node is ready, instead of edge by edge when its target needs it;
- one ReLU per node feeds every ReLU-first op of every out-edge (the plain cell runs up to five
  identical ReLUs per edge, and saves each output for backward);
- ``conv_3x3`` of the ``m`` edges is one convolution with ``m·C`` output channels; the separable family
  (``sep_conv_3x3`` and the dilated ones) is one depthwise convolution per dilation over the input
  repeated ``m`` times, one grouped pointwise convolution for every (dilation, edge) and one affine-free
  BN; pooling (and its affine-free BN) is computed once per node, as every edge's pooling is identical;
  stride-2 skips (factorized reduce) are two 1x1 convolutions for all edges;
- each edge's weighted sum is one multiply (or einsum) per op family.

Ops the batching does not know (an op registered later without a ``fuse`` kind) fall back to one
module per edge, so the registry stays the single place where ops are defined.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cell import CellInputs, FreeOpDropout, SearchCell, cell_edges, edge_stride, search_op
from .ops import OPS


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, affine=False)


class SourceOps(nn.Module):
    """All candidate ops of the ``m`` edges leaving one node; returns ``[N, m, C, H', W']``."""

    def __init__(self, ops: list[str], c: int, stride: int, m: int):
        super().__init__()
        self.c, self.stride, self.m = c, stride, m
        kinds = {o: OPS[o].fuse for o in ops}
        self.conv_idx = [k for k, o in enumerate(ops) if kinds[o] == ("conv", 3)]
        sep = [(k, kinds[o][1]) for k, o in enumerate(ops) if kinds[o] and kinds[o][0] == "sep"]
        self.sep_idx, self.dilations = [k for k, _ in sep], [d for _, d in sep]
        self.pool_idx = [k for k, o in enumerate(ops) if kinds[o] == ("max_pool", 3)]
        self.skip_idx = [k for k, o in enumerate(ops) if kinds[o] == ("skip",)]
        self.other_idx = [k for k, o in enumerate(ops) if kinds[o] is None and not OPS[o].zero]
        self.free_idx = {k for k, o in enumerate(ops) if not OPS[o].parametric and not OPS[o].zero}
        if len(self.conv_idx) > 1 or len(self.pool_idx) > 1 or len(self.skip_idx) > 1:
            raise ValueError(f"at most one op of each of the conv, pool and skip kinds can be batched: {ops}")
        if self.conv_idx:
            self.conv_w = nn.Parameter(torch.empty(m * c, c, 3, 3))
            self.conv_bn = _bn(m * c)
        if self.sep_idx:
            self.dw_w = nn.ParameterList(nn.Parameter(torch.empty(m * c, 1, 3, 3)) for _ in self.dilations)
            self.pw_w = nn.Parameter(torch.empty(len(self.dilations) * m * c, c, 1, 1))
            self.sep_bn = _bn(len(self.dilations) * m * c)
        if self.pool_idx:
            self.pool_bn = _bn(c)
        if self.skip_idx and stride != 1:
            if c % 2:
                raise ValueError(f"a stride-2 skip needs an even channel count, got {c}")
            self.fr_w1 = nn.Parameter(torch.empty(m * c // 2, c, 1, 1))
            self.fr_w2 = nn.Parameter(torch.empty(m * c // 2, c, 1, 1))
            self.fr_bn = _bn(m * c)
        # Unknown ops: one module per edge (the plain mixed op's, so the registry stays the source of truth).
        self.others = nn.ModuleList(nn.ModuleList(search_op(ops[k], c, stride) for _ in range(m))
                                    for k in self.other_idx)
        self.free_drop = FreeOpDropout()  # its rate is set by the searcher (SearchConfig.free_op_dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every batched weight as its per-edge ``nn.Conv2d`` would be: kaiming-uniform with
        a=√5, whose bound depends on the fan-in only, which batching over edges keeps."""
        with torch.no_grad():
            for p in [*self.parameters(recurse=False), *(self.dw_w if self.sep_idx else [])]:
                nn.init.kaiming_uniform_(p, a=5 ** 0.5)

    def _free(self, y: torch.Tensor) -> torch.Tensor:
        """Dropout on a weight-free op's output, an independent mask per edge ([N, m, C, H, W])."""
        if self.free_drop.active and self.training:
            return self.free_drop(y.expand(-1, self.m, -1, -1, -1))
        return y

    def forward(self, x: torch.Tensor, relu_x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``x``: the node's output; ``relu_x``: its ReLU (shared); ``w``: [m, |O|] mixing weights."""
        n, m, c, s = x.shape[0], self.m, self.c, self.stride
        terms: list[torch.Tensor] = []
        if self.conv_idx:
            y = self.conv_bn(F.conv2d(relu_x, self.conv_w, stride=s, padding=1))
            terms.append(y.unflatten(1, (m, c)) * w[:, self.conv_idx[0]].view(1, m, 1, 1, 1))
        if self.sep_idx:
            rep = relu_x.repeat(1, m, 1, 1) if m > 1 else relu_x  # [N, m·C], edge-major
            dw = torch.cat([F.conv2d(rep, wd, stride=s, padding=d, dilation=d, groups=m * c)
                            for wd, d in zip(self.dw_w, self.dilations)], dim=1)  # (dilation, edge, channel)
            y = self.sep_bn(F.conv2d(dw, self.pw_w, groups=len(self.dilations) * m))
            y = y.unflatten(1, (len(self.dilations), m, c))
            terms.append(torch.einsum("nsmchw,ms->nmchw", y, w[:, self.sep_idx]))
        if self.pool_idx:
            y = self.pool_bn(F.max_pool2d(x, 3, stride=s, padding=1)).unsqueeze(1)
            terms.append(self._free(y) * w[:, self.pool_idx[0]].view(1, m, 1, 1, 1))
        if self.skip_idx:
            if s == 1:
                y = self._free(x.unsqueeze(1))
            else:
                a = F.conv2d(relu_x, self.fr_w1, stride=2)
                shifted = F.pad(relu_x[:, :, 1:, 1:], (0, relu_x.shape[-1] % 2, 0, relu_x.shape[-2] % 2))
                b = F.conv2d(shifted, self.fr_w2, stride=2)
                y = torch.cat([a.unflatten(1, (m, c // 2)), b.unflatten(1, (m, c // 2))], dim=2)
                y = self._free(self.fr_bn(y.flatten(1, 2)).unflatten(1, (m, c)))
            terms.append(y * w[:, self.skip_idx[0]].view(1, m, 1, 1, 1))
        for k, mods in zip(self.other_idx, self.others):
            y = torch.stack([op(x) for op in mods], dim=1)
            if k in self.free_idx:
                y = self._free(y)
            terms.append(y * w[:, k].view(1, m, 1, 1, 1))
        out = terms[0]
        for t in terms[1:]:
            out = out + t
        return out if out.shape[1] == m else out.expand(-1, m, -1, -1, -1)

    @torch.no_grad()
    def load_plain_(self, edges: list[nn.Module], ops: list[str]) -> None:
        """Copy the weights and BN statistics of the plain mixed ops of this node's ``m`` out-edges
        (the equivalence test; also converts a plain search state)."""
        c, m = self.c, self.m
        for t, edge in enumerate(edges):
            rows = slice(t * c, (t + 1) * c)
            if self.conv_idx:
                conv = edge.ops[self.conv_idx[0]]
                self.conv_w[rows].copy_(conv[1].weight)
                _copy_bn(self.conv_bn, conv[2], rows)
            for s_, k in enumerate(self.sep_idx):
                sep = edge.ops[k]
                self.dw_w[s_][rows].copy_(sep[1].weight)
                r2 = slice((s_ * m + t) * c, (s_ * m + t + 1) * c)
                self.pw_w[r2].copy_(sep[2].weight)
                _copy_bn(self.sep_bn, sep[3], r2)
            if self.pool_idx and t == 0:
                _copy_bn(self.pool_bn, edge.ops[self.pool_idx[0]][1], slice(0, c))
            if self.skip_idx and self.stride != 1:
                fr = edge.ops[self.skip_idx[0]]
                half = slice(t * c // 2, (t + 1) * c // 2)
                self.fr_w1[half].copy_(fr.conv1.weight)
                self.fr_w2[half].copy_(fr.conv2.weight)
                _copy_bn(self.fr_bn, fr.bn, rows)
            for k, mods in zip(self.other_idx, self.others):
                mods[t].load_state_dict(edge.ops[k].state_dict())


def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, rows: slice) -> None:
    dst.running_mean[rows].copy_(src.running_mean)
    dst.running_var[rows].copy_(src.running_var)
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


class BatchedSearchCell(nn.Module):
    """A search cell whose edges are computed per source node (:class:`SourceOps`); same interface and
    same function as :class:`core.cell.SearchCell`."""

    def __init__(self, ops: list[str], nodes: int, c_prev_prev: int, c_prev: int, c: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.nodes = nodes
        self.inputs = CellInputs(c_prev_prev, c_prev, c, reduction_prev, affine=False)
        edges = cell_edges(nodes)
        # out-edges of each source node, as α row indices (sources with none: the last node)
        self.out_rows = [[e for e, (j, _) in enumerate(edges) if j == src] for src in range(nodes + 1)]
        self.slot = {edges[e]: t for rows in self.out_rows for t, e in enumerate(rows)}
        self.sources = nn.ModuleList(SourceOps(ops, c, edge_stride(src, reduction), len(rows))
                                     for src, rows in enumerate(self.out_rows))
        # α rows regrouped by source, so one gather per forward gives every source its rows (then views)
        self.register_buffer("row_order", torch.tensor([e for rows in self.out_rows for e in rows]), persistent=False)
        self.out_channels = nodes * c
        self.needs_relu = any(s.conv_idx or s.sep_idx or (s.skip_idx and s.stride != 1) for s in self.sources)

    @property
    def free_dropout(self) -> float:
        return self.sources[0].free_drop.p

    def set_free_dropout(self, p: float) -> None:
        for s in self.sources:
            s.free_drop.set_p(float(p))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = list(self.inputs(s0, s1))
        outs: list[torch.Tensor] = []
        rows = weights.index_select(0, self.row_order).split([len(r) for r in self.out_rows])

        def push(src: int) -> None:
            x = states[src]
            outs.append(self.sources[src](x, F.relu(x) if self.needs_relu else x, rows[src]))

        push(0)
        push(1)
        for i in range(self.nodes):
            acc = None
            for j in range(2 + i):
                y = outs[j][:, self.slot[(j, i)]]
                acc = y if acc is None else acc + y
            states.append(acc)
            if i < self.nodes - 1:
                push(2 + i)
        return torch.cat(states[2:], dim=1)

    @torch.no_grad()
    def load_plain_(self, plain: SearchCell, ops: list[str]) -> None:
        """Copy every weight and BN statistic of a plain :class:`SearchCell` of the same shape."""
        self.inputs.load_state_dict(plain.inputs.state_dict())
        for src, rows in enumerate(self.out_rows):
            if rows:
                self.sources[src].load_plain_([plain.edges[e] for e in rows], ops)
