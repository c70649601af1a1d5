"""The macro network (GAS.md §2, [ours, configurable]): stem to 1/4, K cells, light head.

``SuperNet`` (search: mixed ops, one α per cell, the GGM) and ``DerivedNet`` (a genotype) share
:class:`Stem`, :class:`Head` and the channel plan of :func:`channel_plan`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .batched_cell import BatchedSearchCell
from .cell import DerivedCell, SearchCell, cell_edges
from .genotype import Genotype, parse_genotype
from .ggm import GCNGuidedModule
from .ops import op_names
from .specs import GGMConfig, NetworkConfig

STEM_STRIDE = 4  # the stem reduces the input to 1/4 (two stride-2 convolutions)
ALPHA_INIT_STD = 1e-3  # std of the random α initialisation (DARTS); near-uniform op weights at start


def conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Stem(nn.Sequential):
    """3x3 stride-2 conv to half the stem width, then 3x3 stride-2 conv to the stem width."""

    def __init__(self, channels: int):
        super().__init__(conv_bn_relu(3, max(channels // 2, 1), 3, 2), conv_bn_relu(max(channels // 2, 1), channels, 3, 2))


class Head(nn.Module):
    """1x1 conv-BN-ReLU on the last cell; optional fusion with the 1/4 stem feature; 1x1 classifier."""

    def __init__(self, cfg: NetworkConfig, c_last: int):
        super().__init__()
        self.proj = conv_bn_relu(c_last, cfg.head_channels, 1)
        self.low = conv_bn_relu(cfg.stem_channels, cfg.low_level_channels, 1) if cfg.low_level_skip else None
        c_fuse = cfg.head_channels + (cfg.low_level_channels if cfg.low_level_skip else 0)
        self.fuse = conv_bn_relu(c_fuse, cfg.head_channels, 3) if cfg.low_level_skip else None
        self.classifier = nn.Conv2d(cfg.head_channels, cfg.num_classes, 1)

    def forward(self, feat: torch.Tensor, stem: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y = self.proj(feat)
        if self.low is not None:
            y = F.interpolate(y, size=stem.shape[-2:], mode="bilinear", align_corners=False)
            y = self.fuse(torch.cat([y, self.low(stem)], dim=1))
        return F.interpolate(self.classifier(y), size=size, mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class CellPlan:
    index: int
    c_prev_prev: int
    c_prev: int
    c: int
    reduction: bool
    reduction_prev: bool
    stride_in: int  # input resolution of the cell relative to the network input (4, 8, ...)


def channel_plan(cfg: NetworkConfig) -> list[CellPlan]:
    plans = []
    c_pp = c_p = cfg.stem_channels
    c = cfg.init_channels
    stride = STEM_STRIDE
    red_prev = False
    for k in range(cfg.num_cells):
        red = k in cfg.reduction_cells
        if red:
            c *= 2
        plans.append(CellPlan(k, c_pp, c_p, c, red, red_prev, stride))
        c_pp, c_p = c_p, cfg.nodes * c
        if red:
            stride *= 2
        red_prev = red
    return plans


class SuperNet(nn.Module):
    """The search supernet: every cell has its own α (or one per cell type in shared mode)."""

    def __init__(self, cfg: NetworkConfig, ggm: GGMConfig, ops: list[str] | None = None,
                 shared_cells: bool = False, gumbel: bool = False, gumbel_tau: float = 1.0, batched: bool = True):
        super().__init__()
        self.cfg = cfg
        self.ops = op_names(ops)
        self.shared_cells = shared_cells
        self.gumbel, self.gumbel_tau = gumbel, gumbel_tau
        self.plans = channel_plan(cfg)
        self.stem = Stem(cfg.stem_channels)
        cell_cls = BatchedSearchCell if batched else SearchCell
        self.batched = batched
        self.cells = nn.ModuleList(
            cell_cls(self.ops, cfg.nodes, p.c_prev_prev, p.c_prev, p.c, p.reduction, p.reduction_prev)
            for p in self.plans)
        self.head = Head(cfg, self.cells[-1].out_channels)
        n_edges, n_ops = len(cell_edges(cfg.nodes)), len(self.ops)
        n_alpha = 2 if shared_cells else cfg.num_cells
        # Registered parameters, so they are in state_dict() and in checkpoints.
        self.alphas = nn.ParameterList(nn.Parameter(ALPHA_INIT_STD * torch.randn(n_edges, n_ops)) for _ in range(n_alpha))
        self.ggm = GCNGuidedModule(n_ops, cfg.nodes, ggm) if ggm.enabled else None
        self.ggm_cfg = ggm

    # -- parameter groups -------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return self.alpha_parameters() + self.ggm_parameters()

    def alpha_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas)

    def ggm_parameters(self) -> list[nn.Parameter]:
        return list(self.ggm.parameters()) if self.ggm is not None else []

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def set_free_op_dropout(self, p: float) -> None:
        """Dropout rate on the outputs of weight-free ops (skip, pooling) in every mixed op (P-DARTS)."""
        for cell in self.cells:
            cell.set_free_dropout(p)

    # -- architecture -------------------------------------------------------------------------
    def raw_alpha(self, k: int) -> torch.Tensor:
        if self.shared_cells:
            return self.alphas[1 if self.plans[k].reduction else 0]
        return self.alphas[k]

    def alpha_prime(self) -> list[torch.Tensor]:
        """α'_1 = α_1; α'_k = α_k + γ·Φ(GCN(α_{k-1})) for k >= 2 (GAS.md §3); with
        ``GGMConfig.recursive`` the message comes from α'_{k-1} instead (a sequential chain)."""
        out: list[torch.Tensor] = []
        for k in range(self.cfg.num_cells):
            a = self.raw_alpha(k)
            if k > 0 and self.ggm is not None:
                prev = out[k - 1] if self.ggm_cfg.recursive else self.raw_alpha(k - 1)
                a = a + self.ggm_cfg.gamma * self.ggm(prev)
            out.append(a)
        return out

    def op_weights(self, alphas: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.gumbel and self.training:
            return [F.gumbel_softmax(a, tau=self.gumbel_tau, dim=-1) for a in alphas]
        return [F.softmax(a, dim=-1) for a in alphas]

    def forward(self, x: torch.Tensor, alphas: list[torch.Tensor] | None = None,
                detach_arch: bool = False) -> torch.Tensor:
        """``alphas``: α' already computed by the caller (reused for the latency term)."""
        if alphas is None:
            alphas = self.alpha_prime()
            if detach_arch:
                alphas = [a.detach() for a in alphas]
        return self.forward_mixed(x, self.op_weights(alphas))

    def forward_mixed(self, x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        """The forward with given mixing weights per cell ([edges, ops], used as they are: no softmax), e.g.
        a genotype's one-hot path (bench/supernet_ranking.py)."""
        stem = self.stem(x)
        s0 = s1 = stem
        for cell, w in zip(self.cells, weights):
            s0, s1 = s1, cell(s0, s1, w)
        return self.head(s1, stem, x.shape[-2:])


class DerivedNet(nn.Module):
    """A discrete network built from a genotype; the same architecture every time."""

    def __init__(self, genotype: Genotype | dict | str):
        super().__init__()
        self.genotype = parse_genotype(genotype)
        cfg = self.genotype.network
        self.plans = channel_plan(cfg)
        self.stem = Stem(cfg.stem_channels)
        self.cells = nn.ModuleList(
            DerivedCell(g, p.c_prev_prev, p.c_prev, p.c, p.reduction_prev)
            for g, p in zip(self.genotype.cells, self.plans))
        self.head = Head(cfg, self.cells[-1].out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)
        s0 = s1 = stem
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.head(s1, stem, x.shape[-2:])
