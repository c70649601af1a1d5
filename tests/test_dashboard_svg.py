"""The dashboard's SVG builders (api/dashboard/svg.py), without a browser: parse the XML, count and
check the drawn elements and their scales."""
from __future__ import annotations

import random
import xml.etree.ElementTree as ET

import pytest

from api.dashboard import svg

NS = {"s": "http://www.w3.org/2000/svg"}


def parse(text: str) -> ET.Element:
    return ET.fromstring(text)


def with_class(root: ET.Element, cls: str) -> list[ET.Element]:
    return [e for e in root.iter() if cls in (e.get("class") or "").split()]


def random_alphas(k: int, nodes: int, n_ops: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    out = []
    for _ in range(k):
        cell = []
        for _ in svg.cell_edges(nodes):
            raw = [rng.random() for _ in range(n_ops)]
            s = sum(raw)
            cell.append([v / s for v in raw])
        out.append(cell)
    return out


@pytest.mark.parametrize("k,nodes,n_ops", [(3, 2, 8), (8, 4, 8), (1, 1, 2), (14, 3, 5)])
def test_heatmap_has_one_rect_per_cell_edge_op(k, nodes, n_ops):
    ops = [f"o{i}" for i in range(n_ops)]
    alphas = random_alphas(k, nodes, n_ops)
    root = parse(svg.alpha_heatmap(alphas, ops, reduction_cells=[1] if k > 1 else [], epoch=7))
    rects = with_class(root, "hm-cell")
    n_edges = len(svg.cell_edges(nodes))
    assert len(rects) == k * n_edges * n_ops
    assert root.get("data-epoch") == "7" and root.get("data-cells") == str(k)
    # every (cell, edge, op) exactly once, with its probability
    seen = {(r.get("data-cell"), r.get("data-edge"), r.get("data-op")) for r in rects}
    assert len(seen) == len(rects)
    r0 = next(r for r in rects if (r.get("data-cell"), r.get("data-edge"), r.get("data-op")) == ("0", "0", "o1"))
    assert float(r0.get("data-p")) == pytest.approx(alphas[0][0][1], abs=1e-4)
    blocks = with_class(root, "hm-block")
    assert len(blocks) == k and [b.get("data-cell") for b in blocks] == [str(i) for i in range(k)]
    assert len(with_class(root, "reduction")) == (1 if k > 1 else 0)


def test_heatmap_colour_scale_is_monotone_and_ends_fixed():
    assert svg.color(0.0) == "#ffffff" and svg.color(1.0) == "#08306b"
    lum = [sum(int(svg.color(p / 10)[i:i + 2], 16) for i in (1, 3, 5)) for p in range(11)]
    assert lum == sorted(lum, reverse=True)
    assert svg.color(2.0) == svg.color(1.0) and svg.color(-1) == svg.color(0)


def test_heatmap_refuses_ragged_input():
    alphas = random_alphas(2, 2, 4)
    alphas[1][0] = alphas[1][0][:3]
    with pytest.raises(ValueError, match="cell 1"):
        svg.alpha_heatmap(alphas, ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="edge count"):
        svg.nodes_of_edges(4)


def test_heatmap_escapes_op_names():
    root = parse(svg.alpha_heatmap(random_alphas(1, 1, 2), ["<b>&", 'x"y']))
    assert {r.get("data-op") for r in with_class(root, "hm-cell")} == {"<b>&", 'x"y'}


def genotype(k: int, nodes: int, reduction=(1,)) -> dict:
    cells = []
    for c in range(k):
        cells.append({"reduction": c in reduction,
                      "nodes": [[{"input": 0, "op": "sep_conv_3x3"}, {"input": 1 + i, "op": "skip_connect"}]
                                for i in range(nodes)]})
    return {"cells": cells, "ops": ["sep_conv_3x3", "skip_connect"]}


@pytest.mark.parametrize("k,nodes", [(3, 2), (8, 4), (2, 1)])
def test_one_dag_per_cell_with_the_right_nodes_and_edges(k, nodes):
    dags = [parse(d) for d in svg.genotype_dags(genotype(k, nodes))]
    assert len(dags) == k
    for c, root in enumerate(dags):
        assert root.get("data-cell") == str(c)
        assert len(with_class(root, "dag-node")) == 2 + nodes + 1  # two inputs, the nodes, the output
        assert len(with_class(root, "input")) == 2 and len(with_class(root, "output")) == 1
        kept = with_class(root, "kept")
        assert len(kept) == 2 * nodes and len(with_class(root, "concat")) == nodes
        assert sorted(e.get("data-op") for e in kept) == sorted(["sep_conv_3x3", "skip_connect"] * nodes)
        # each kept edge goes into a later node than its source
        assert all(int(e.get("data-from")) < int(e.get("data-to")) for e in kept)
        assert ("reduction" in root.get("class").split()) == (c == 1)
        assert bool(with_class(root, "reduction-mark")) == (c == 1)


def test_dag_refuses_an_edge_from_a_later_node():
    bad = {"reduction": False, "nodes": [[{"input": 2, "op": "a"}, {"input": 0, "op": "b"}]]}
    with pytest.raises(ValueError, match="earlier"):
        svg.genotype_dag(bad, 0)


def test_pareto_front():
    pts = [(1.0, 0.3), (2.0, 0.5), (1.5, 0.2), (3.0, 0.45), (4.0, 0.6), (2.0, 0.4)]
    assert svg.pareto_front(pts) == [0, 1, 4]
    assert svg.pareto_front([]) == []


def test_scatter_marks_the_front_and_scales_points():
    pts = [{"x": 10.0, "y": 0.3, "label": "a", "href": "/ui/jobs/a"}, {"x": 20.0, "y": 0.5, "label": "b", "kind": "retrain"},
           {"x": 30.0, "y": 0.4, "label": "c"}]
    root = parse(svg.scatter(pts, budget=25.0, width=600, height=400))
    drawn = with_class(root, "pt")
    assert len(drawn) == 3 and len(with_class(root, "pareto")) == 2
    assert {e.get("data-x") for e in with_class(root, "pareto")} == {"10.0000", "20.0000"}
    assert len(with_class(root, "pareto-front")) == 1 and len(with_class(root, "budget")) == 1
    links = [a for a in root.iter("{http://www.w3.org/2000/svg}a")]
    assert [a.get("href") for a in links] == ["/ui/jobs/a"]
    # x axis: 0 .. 1.1 * max(x) over the plot width: a point's cx is proportional to its latency
    cx = [float(e.find("s:circle", NS).get("cx")) for e in drawn if e.find("s:circle", NS) is not None]
    x0 = 56
    assert (cx[1] - x0) / (cx[0] - x0) == pytest.approx(3.0, rel=1e-3)
    sq = with_class(root, "pt")[1].find("s:rect", NS)
    assert sq is not None  # retrains are squares


def test_bars_scale_to_the_max_and_draw_markers():
    root = parse(svg.bars([("a", 1.0), ("b", 0.5), ("c", 0.0)], max_value=1.0, lines=[("budget", 0.75)]))
    bars = with_class(root, "bar")
    assert [b.get("data-label") for b in bars] == ["a", "b", "c"]
    w = [float(b.get("width")) for b in bars]
    assert w[0] == pytest.approx(2 * w[1]) and w[2] == 0
    assert len(with_class(root, "marker")) == 1


def test_confusion_heatmap_is_row_normalised_with_the_diagonal_outlined():
    names = ["road", "car", "sky <&>"]
    matrix = [[90, 10, 0], [30, 60, 10], [0, 0, 0]]  # the third class never occurs in the ground truth
    root = parse(svg.confusion_heatmap(matrix, names))
    cells = with_class(root, "cm-cell")
    assert len(cells) == 9 and root.get("data-classes") == "3"
    p = {(c.get("data-true"), c.get("data-pred")): float(c.get("data-p")) for c in cells}
    assert p[("road", "road")] == pytest.approx(0.9) and p[("car", "road")] == pytest.approx(0.3)
    for t in names[:2]:  # each present row sums to 1
        assert sum(v for (tt, _), v in p.items() if tt == t) == pytest.approx(1.0)
    assert all(v == 0 for (t, _), v in p.items() if t == names[2])  # an absent class: an empty row
    diag = [c for c in cells if c.get("data-true") == c.get("data-pred")]
    assert all(c.get("stroke") == "#111" for c in diag) and all(c.get("stroke") == "#fff" for c in cells if c not in diag)
    assert p[("road", "road")] > p[("car", "car")] and cells[0].get("fill") == svg.color(0.9)
    with pytest.raises(ValueError):
        svg.confusion_heatmap([[1, 2]], ["a"])
