"""GCN-Guided Module (GAS.md §3): α'_k = α_k + γ·Φ(GCN(α_{k-1})).

The graph has one node per edge of cell k-1 with the rows of α_{k-1} as features. Two graph
convolutions Z = A·ReLU(A·X·W1)·W2, then Φ, a linear map back to |O| columns, zero-initialised so
that α' = α at the start [ours]. One module is shared by all cell pairs [ours]; its parameters are
architecture-side (updated with α, never by the weight optimizer), in their own optimizer group
(``GGMConfig.lr``, no weight decay: with Φ = 0 the other weights have no loss gradient, and a
coupled decay alone, normalised by Adam, would shrink them to zero and make the similarity graph
uniform).

The message is shaped so that it guides α instead of replacing it [ours, issue 8]:
- ``bias=False``: no bias in the embedding or in Φ, so there is no shared channel that adds the
  same vector to every edge of every cell;
- ``center_message``: the message's mean over the edges of a cell is subtracted, so the GGM
  cannot impose one global op preference on every edge (that is what α_k's own rows are for);
- ``input_norm="standardize"``: the GCN reads each row of α_{k-1} less its mean, divided by the
  cell's standard deviation, i.e. which ops each edge prefers, not how far α has moved from its 1e-3
  initialisation. On raw α the message and Φ's gradient scale with α: the similarity softmax sees
  logits near 0 and is uniform, every edge gets the same message, the centring removes it, and the
  GGM stays at α' = α for a whole search (measured: ``ggm_shift`` 0.0 in every cell of six CamVid
  searches, docs/SEARCH_QUALITY.md attempt 7);
- ``message_bound``: the message is b·tanh(m/b), bounded by b logits before γ (applied after the centring,
  so a bounded message's mean over edges is near zero, not exactly zero).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cell import cell_edges
from .specs import GGMConfig


def topology_adjacency(nodes: int) -> torch.Tensor:
    """Edges that chain (one's target is the other's source) or share a node, with self-loops,
    symmetric-normalised D^-1/2 (A + I) D^-1/2."""
    edges = [(src, 2 + dst) for src, dst in cell_edges(nodes)]
    n = len(edges)
    a = torch.eye(n)
    for p, (s1, t1) in enumerate(edges):
        for q, (s2, t2) in enumerate(edges):
            if p != q and (t1 == s2 or t2 == s1 or s1 == s2 or t1 == t2):
                a[p, q] = 1.0
    d = a.sum(1).rsqrt()
    return d[:, None] * a * d[None, :]


class GCNGuidedModule(nn.Module):
    def __init__(self, n_ops: int, nodes: int, cfg: GGMConfig):
        super().__init__()
        self.adjacency = cfg.adjacency
        self.center, self.bound, self.input_norm = cfg.center_message, cfg.message_bound, cfg.input_norm
        width = cfg.hidden if cfg.embed else n_ops
        self.embed = nn.Linear(n_ops, cfg.hidden, bias=cfg.bias) if cfg.embed else nn.Identity()
        if cfg.adjacency == "similarity":
            self.theta = nn.Linear(width, cfg.hidden, bias=False)
            self.phi_sim = nn.Linear(width, cfg.hidden, bias=False)
        else:
            self.register_buffer("a_topo", topology_adjacency(nodes), persistent=False)
        self.w1 = nn.Linear(width, cfg.hidden, bias=False)
        self.w2 = nn.Linear(cfg.hidden, cfg.hidden, bias=False)
        self.phi = nn.Linear(cfg.hidden, n_ops, bias=cfg.bias)
        nn.init.zeros_(self.phi.weight)
        if self.phi.bias is not None:
            nn.init.zeros_(self.phi.bias)

    def normalize(self, alpha: torch.Tensor) -> torch.Tensor:
        """The GCN's input: α's rows centred (softmax ignores a row's offset) and scaled to unit std per cell."""
        if self.input_norm == "raw":
            return alpha
        x = alpha - alpha.mean(dim=-1, keepdim=True)
        return x / (x.pow(2).mean().sqrt() + 1e-12)

    def adjacency_matrix(self, x: torch.Tensor) -> torch.Tensor:
        if self.adjacency == "similarity":
            return F.softmax(self.theta(x) @ self.phi_sim(x).t(), dim=-1)
        return self.a_topo

    def forward(self, alpha_prev: torch.Tensor) -> torch.Tensor:
        """The message Φ(GCN(α_{k-1})), shape E x |O| (before γ)."""
        x = self.embed(self.normalize(alpha_prev))
        a = self.adjacency_matrix(x)
        z = a @ self.w2(F.relu(a @ self.w1(x)))
        m = self.phi(z)
        if self.center:
            m = m - m.mean(dim=0, keepdim=True)
        if self.bound > 0:
            m = self.bound * torch.tanh(m / self.bound)
        return m
