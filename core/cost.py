"""A job's cost before it runs, without torch (the API process never imports it).

:mod:`core.estimate` builds the supernet on torch's meta device and counts what one training step
keeps; that takes seconds and needs torch. This module gives the same figures analytically, so the
API can refuse a job that exceeds the service's caps before accepting it:

- **parameters**: counted exactly from the channel plan (:func:`core.network.channel_plan`'s rule)
  and the op registry's shapes (stem, cell inputs, every mixed op, head; α and the GGM);
- **activation bytes per image** (what a training forward saves for backward): a sum over the
  network's feature maps (channels × pixels at each stride, the ceil-halving chain of the strided
  convolutions) weighted by coefficients fitted once to :func:`core.estimate.estimate_search` and
  stored as data in ``core/cost_coef.json`` (``python -m core.cost_fit`` refits them; one set for
  batched and one for per-edge cells). ``tests/core/test_cost.py`` checks random configurations
  against the meta-device figure within :data:`TOLERANCE`;
- **peak bytes** exactly as :meth:`core.estimate.SearchEstimate.peak_bytes` combines them;
- **steps**: epochs × steps per epoch (0 = one pass over the weight half of the split, as the
  searcher does).

A retrain trains the derived network (one op per kept edge instead of every op on every edge), so
the supernet's figure at the retrain's batch and resolution is an upper bound of its memory; the
service uses it as such.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

FP32 = 4
OVERHEAD = 1.25  # as core.estimate.OVERHEAD (checked by tests/core/test_cost.py)
TOLERANCE = 0.15
"""Largest relative difference of :func:`search_cost`'s activation and peak bytes from the meta
device's (tests/core/test_cost.py); parameters are exact."""
COEF_FILE = Path(__file__).with_name("cost_coef.json")

# the op registry's shapes (core/ops.py), as weight counts per edge of c channels at a stride;
# a new op must be added here (tests/core/test_cost.py fails for an op of the registry missing here)
OP_PARAMS = {
    "none": lambda c, stride: 0,
    "skip_connect": lambda c, stride: 0 if stride == 1 else c * c,  # FactorizedReduce: two c x c/2 1x1
    "max_pool_3x3": lambda c, stride: 0,
    "conv_3x3": lambda c, stride: 9 * c * c,
    "sep_conv_3x3": lambda c, stride: 9 * c + c * c,
    "dil_sep_conv_3x3_r2": lambda c, stride: 9 * c + c * c,
    "dil_sep_conv_3x3_r4": lambda c, stride: 9 * c + c * c,
    "dil_sep_conv_3x3_r8": lambda c, stride: 9 * c + c * c,
}
ALL_OPS = tuple(OP_PARAMS)  # registry order
RELU_FIRST = ("skip_connect", "conv_3x3", "sep_conv_3x3", "dil_sep_conv_3x3_r2", "dil_sep_conv_3x3_r4",
              "dil_sep_conv_3x3_r8")  # ops that start with a ReLU of their input (skip: at stride 2)
FEATURES = ("weights", "input", "stem", "head_proj", "head_fuse", "head_low", "classes", "pre_in", "pre_out", "nodes",
            "relu_states", "edges", "sep_family", *(f"{kind}:{o}" for kind in ("edge", "rsrc", "state") for o in ALL_OPS))
"""Feature maps of a supernet whose bytes the coefficients weigh (channels x pixels summed):
``edge:o``: every edge's output of op ``o`` (at the edge's output resolution); ``rsrc:o``: the
input of every stride-2 edge of op ``o`` (reduction cells); ``state:o``: every node with out-edges
once per op ``o`` (work shared by a node's out-edges in batched cells); ``relu_states``: every such
node once (one ReLU per node); ``edges``: every edge once (its weighted sum); ``sep_family``: the
input of every edge once when a separable op is searched (batched cells repeat it per out-edge
for the family's depthwise convolutions); ``nodes``: the cell's node sums; ``weights``: the weight parameters
(a convolution saves its weight for backward too); the rest stem, cell inputs and head."""


def op_names(subset: list[str] | None) -> list[str]:
    """As core.ops.op_names: a subset in registry order, 'none' always included."""
    if subset is None:
        return list(ALL_OPS)
    unknown = [o for o in subset if o not in OP_PARAMS]
    if unknown:
        raise ValueError(f"unknown ops {unknown}; known: {list(ALL_OPS)}")
    return [o for o in ALL_OPS if o in subset or o == "none"]


def _half(n: int) -> int:
    return -(-n // 2)


def _conv(cin: int, cout: int, k: int, bn: bool = True) -> int:
    return cin * cout * k * k + (2 * cout if bn else 0)


@dataclass(frozen=True)
class Cost:
    weight_params: int
    arch_params: int
    saved_bytes_per_image: int
    crop: tuple[int, int]
    batch: int
    steps: int

    @property
    def state_bytes(self) -> int:
        return FP32 * (3 * self.weight_params + 4 * self.arch_params)

    @property
    def peak_bytes(self) -> int:
        return int(OVERHEAD * (self.state_bytes + self.batch * self.saved_bytes_per_image))

    @property
    def image_pixels(self) -> int:
        """Pixels a training run pushes through the network (steps x batch x crop): the compute proxy."""
        return self.steps * self.batch * self.crop[0] * self.crop[1]

    def as_dict(self) -> dict:
        return {**asdict(self), "crop": list(self.crop), "state_bytes": self.state_bytes,
                "peak_bytes": self.peak_bytes, "image_pixels": self.image_pixels}


def features(net: dict, ops: list[str], crop: tuple[int, int]) -> tuple[int, int, dict[str, float]]:
    """A supernet's exact weight-parameter count, its number of edges per cell, and the feature
    vector (channels x pixels of each kind of feature map) the fitted coefficients weigh.
    ``net`` holds NetworkConfig's fields."""
    h, w = crop
    stem, init, cells, nodes = net["stem_channels"], net["init_channels"], net["num_cells"], net["nodes"]
    red_cells = set(net["reduction_cells"])
    head, low, ncls, skip = net["head_channels"], net["low_level_channels"], net["num_classes"], net["low_level_skip"]
    s2 = max(stem // 2, 1)
    h2, w2 = _half(h), _half(w)
    h4, w4 = _half(h2), _half(w2)
    f = dict.fromkeys(FEATURES, 0.0)
    f["input"] = 3 * h * w
    f["stem"] = h2 * w2 * s2 + h4 * w4 * stem
    params = _conv(3, s2, 3) + _conv(s2, stem, 3)
    n_edges = sum(2 + i for i in range(nodes))
    c_pp = c_p = stem
    p_pp = p_p = h4 * w4  # pixels of the inputs of the next cell (k-2, k-1)
    hh, ww = h4, w4
    c = init
    for k in range(cells):
        red = k in red_cells
        if red:
            c *= 2
        p_in = hh * ww
        params += c_pp * c + c_p * c  # cell inputs: FactorizedReduce or 1x1 (both c_in x c), 1x1 (BN affine-free)
        f["pre_in"] += p_pp * c_pp + p_p * c_p
        f["pre_out"] += 2 * p_in * c
        if red:
            hh, ww = _half(hh), _half(ww)
        p_out = hh * ww
        relu = any(o in RELU_FIRST for o in ops)
        for j in range(2 + nodes - 1):  # source nodes with out-edges: the two inputs, intermediate 0..nodes-2
            p_src = p_in if j < 2 else p_out
            for o in ops:
                f[f"state:{o}"] += p_src * c
            if relu:
                f["relu_states"] += p_src * c
        sep = any(o.startswith(("sep_", "dil_sep_")) for o in ops)
        for i in range(nodes):
            for j in range(2 + i):
                stride = 2 if red and j < 2 else 1
                f["edges"] += p_out * c
                if sep:
                    f["sep_family"] += (p_in if j < 2 else p_out) * c
                for o in ops:
                    params += OP_PARAMS[o](c, stride)
                    f[f"edge:{o}"] += p_out * c
                    if stride == 2:
                        f[f"rsrc:{o}"] += p_in * c
        f["nodes"] += nodes * p_out * c
        c_pp, c_p = c_p, nodes * c
        p_pp, p_p = p_p, p_out
    c_last = c_p
    params += _conv(c_last, head, 1)
    f["head_proj"] = hh * ww * head
    if skip:
        params += _conv(stem, low, 1) + _conv(head + low, head, 3)
        f["head_fuse"] = h4 * w4 * head
        f["head_low"] = h4 * w4 * low
        f["classes"] = h4 * w4 * ncls
    else:
        f["classes"] = hh * ww * ncls
    params += head * ncls + ncls  # classifier (with bias)
    f["weights"] = float(params)
    return params, n_edges, f


def arch_params(net: dict, ggm: dict, ops: list[str], shared_cells: bool) -> int:
    n_ops = len(ops)
    n_edges = sum(2 + i for i in range(net["nodes"]))
    n = (2 if shared_cells else net["num_cells"]) * n_edges * n_ops
    if ggm.get("enabled", True):
        hidden, embed, bias = ggm.get("hidden", 32), ggm.get("embed", True), ggm.get("bias", False)
        width = hidden if embed else n_ops
        if embed:
            n += n_ops * hidden + (hidden if bias else 0)
        if ggm.get("adjacency", "similarity") == "similarity":
            n += 2 * width * hidden
        n += width * hidden + hidden * hidden + hidden * n_ops + (n_ops if bias else 0)
    return n


@lru_cache(maxsize=1)
def coefficients() -> dict:
    return json.loads(COEF_FILE.read_text())


def search_cost(spec: dict, crop: tuple[int, int], batch: int, steps: int) -> Cost:
    """Cost of a search (``spec``: a SearchJobSpec as a JSON dict, defaults filled in) at ``crop``."""
    net, ggm, search = spec["network"], spec.get("ggm") or {}, spec.get("search") or {}
    ops = op_names(search.get("ops"))
    params, _, f = features(net, ops, crop)
    coef = coefficients()["batched" if search.get("batched_cells", True) else "per_edge"]
    saved = sum(coef.get(k, 0.0) * v for k, v in f.items())
    return Cost(weight_params=params, arch_params=arch_params(net, ggm, ops, search.get("shared_cells", False)),
                saved_bytes_per_image=int(math.ceil(max(saved, 0.0))), crop=(int(crop[0]), int(crop[1])),
                batch=int(batch), steps=int(steps))


def search_crop(search: dict, height: int, width: int) -> tuple[int, int]:
    """As core.search.search_crop."""
    return (min(search.get("crop_height", 240) or height, height), min(search.get("crop_width", 320) or width, width))
