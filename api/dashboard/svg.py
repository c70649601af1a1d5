"""SVG built on the server for the dashboard: α' heatmaps, genotype DAGs, scatter plots with a Pareto
front, bar charts. Pure functions from plain data (lists, dicts) to an SVG string: no torch, no
browser, unit-tested by parsing the XML (tests/test_dashboard_svg.py).

Every drawn datum carries a ``class`` (``hm-cell``, ``dag-node``, ``dag-edge``, ``pt``, ``bar``) and
``data-*`` attributes, so tests and the browser can count and address them, and a ``<title>`` (the
tooltip a browser shows on hover).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Iterable, Sequence

FONT = 'font-family="system-ui,sans-serif"'


def _e(v: object) -> str:
    return escape(str(v), quote=True)


def _num(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".") if math.isfinite(v) else "0"


def cell_edges(nodes: int) -> list[tuple[int, int]]:
    """(source, node) per edge, the order of α' rows (core.cell.cell_edges; repeated here: the API is torch-free)."""
    return [(j, i) for i in range(nodes) for j in range(2 + i)]


def source_label(j: int) -> str:
    return ("c(k-2)", "c(k-1)")[j] if j < 2 else f"n{j - 2}"


def nodes_of_edges(n_edges: int) -> int:
    """The number of intermediate nodes of a cell with ``n_edges`` α' rows (2 + 3 + ... + (n+1) edges)."""
    n, total = 0, 0
    while total < n_edges:
        total += 2 + n
        n += 1
    if total != n_edges:
        raise ValueError(f"{n_edges} edges is not the edge count of any cell (2, 5, 9, 14, ...)")
    return n


def color(p: float) -> str:
    """White (0) to deep blue (1), perceptually even enough for probabilities."""
    p = min(max(float(p), 0.0), 1.0)
    r, g, b = (int(round(255 + (t - 255) * p)) for t in (8, 48, 107))
    return f"#{r:02x}{g:02x}{b:02x}"


def _legend(y: float, label: str) -> str:
    """The 0..1 colour scale of :func:`color`, with ``label`` beside it."""
    rects = "".join(f'<rect x="{i * 16}" y="0" width="16" height="10" fill="{color(i / 10)}"/>' for i in range(11))
    return (f'<g class="legend" transform="translate(0,{y})">{rects}<text x="0" y="20">0</text>'
            f'<text x="172" y="20" text-anchor="end">1</text><text x="182" y="9">{_e(label)}</text></g>')


# ------------------------------------------------------------------------------------------ heatmap
def alpha_heatmap(alphas: Sequence[Sequence[Sequence[float]]], ops: Sequence[str],
                  reduction_cells: Iterable[int] = (), *, epoch: int | None = None, cell_size: int = 14) -> str:
    """The α' softmax probabilities of every cell as one SVG: a block per cell (rows = edges, columns =
    ops), K × E × |O| ``rect.hm-cell`` in all. Reduction cells are outlined and labelled."""
    if not alphas:
        raise ValueError("no α' to draw")
    n_ops = len(alphas[0][0])
    ops = list(ops) if ops and len(ops) == n_ops else [f"op{i}" for i in range(n_ops)]
    n_edges = len(alphas[0])
    nodes = nodes_of_edges(n_edges)
    edges = cell_edges(nodes)
    red = set(reduction_cells)
    label_w, gap = 64, 22
    head_h = 18 + 6 * max(len(str(o)) for o in ops)  # vertical op names above the columns
    block_w = label_w + n_ops * cell_size
    block_h = head_h + n_edges * cell_size + 20
    per_row = max(1, min(len(alphas), 6))
    rows = math.ceil(len(alphas) / per_row)
    width, height = per_row * (block_w + gap), rows * (block_h + gap) + 34
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="heatmap" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" {FONT} font-size="10" role="img" '
           f'data-cells="{len(alphas)}" data-edges="{n_edges}" data-ops="{n_ops}"'
           + (f' data-epoch="{epoch}"' if epoch is not None else "") + ">",
           f"<title>softmax(α') per cell, edge and op{'' if epoch is None else f' at epoch {epoch}'}</title>"]
    for k, cell in enumerate(alphas):
        if len(cell) != n_edges or any(len(row) != n_ops for row in cell):
            raise ValueError(f"cell {k}: expected {n_edges} edges × {n_ops} ops")
        x0 = (k % per_row) * (block_w + gap)
        y0 = (k // per_row) * (block_h + gap)
        is_red = k in red
        out.append(f'<g class="hm-block{" reduction" if is_red else ""}" data-cell="{k}" '
                   f'transform="translate({x0},{y0})">')
        out.append(f'<text x="0" y="12" font-weight="bold" font-size="12">cell {k}'
                   f'{" (reduction)" if is_red else ""}</text>')
        if is_red:
            out.append(f'<rect x="{label_w - 3}" y="{head_h - 3}" width="{n_ops * cell_size + 6}" '
                       f'height="{n_edges * cell_size + 6}" fill="none" stroke="#c2410c" stroke-width="2" '
                       f'stroke-dasharray="4 2"/>')
        for o, name in enumerate(ops):
            cx = label_w + o * cell_size + cell_size / 2
            out.append(f'<text x="{_num(cx + 3)}" y="{head_h - 4}" transform="rotate(-90 {_num(cx + 3)} {head_h - 4})" '
                       f'class="hm-op">{_e(name)}</text>')
        for e, row in enumerate(cell):
            j, i = edges[e]
            y = head_h + e * cell_size
            out.append(f'<text x="{label_w - 6}" y="{y + cell_size - 3}" text-anchor="end" class="hm-edge">'
                       f'{_e(source_label(j))}→n{i}</text>')
            best = max(range(n_ops), key=lambda o: row[o])
            for o, p in enumerate(row):
                x = label_w + o * cell_size
                stroke = ' stroke="#111" stroke-width="1"' if o == best else ' stroke="#fff" stroke-width="0.5"'
                out.append(f'<rect class="hm-cell" data-cell="{k}" data-edge="{e}" data-op="{_e(ops[o])}" '
                           f'data-p="{float(p):.4f}" x="{x}" y="{y}" width="{cell_size}" height="{cell_size}" '
                           f'fill="{color(p)}"{stroke}><title>cell {k}, {_e(source_label(j))}→n{i}, '
                           f'{_e(ops[o])}: {float(p):.3f}</title></rect>')
        out.append("</g>")
    out.append(_legend(height - 26, "probability of the op on the edge (outlined: the edge's strongest op)"))
    out.append("</svg>")
    return "".join(out)


# ------------------------------------------------------------------------------------- genotype DAG
@dataclass(frozen=True)
class DagLayout:
    width: int = 340
    node_r: int = 15
    row_h: int = 64


def genotype_dag(cell: dict, k: int, *, layout: DagLayout = DagLayout()) -> str:
    """One cell of a genotype as a small DAG: the two inputs, each intermediate node, the output (the
    concatenation of the intermediate nodes), and the op on each kept edge. ``cell`` is the genotype's
    ``{"reduction": bool, "nodes": [[{"input", "op"}, {"input", "op"}], ...]}``.

    ``g.dag-node`` count = 2 + nodes + 1; ``g.dag-edge`` count = 2 × nodes (kept edges) + nodes (to the output)."""
    nodes = cell["nodes"]
    n = len(nodes)
    reduction = bool(cell.get("reduction"))
    lay = layout
    height = (n + 1) * lay.row_h + 62
    pos: dict[int | str, tuple[float, float]] = {0: (50, 40), 1: (lay.width - 50, 40)}
    for i in range(n):
        pos[2 + i] = (lay.width / 2 + (i % 2 * 2 - 1) * 40 * (1 if n > 1 else 0), 40 + (i + 1) * lay.row_h)
    pos["out"] = (lay.width / 2, 40 + (n + 1) * lay.row_h)
    cls = "dag reduction" if reduction else "dag"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="{cls}" data-cell="{k}" data-nodes="{n}" '
           f'width="{lay.width}" height="{height}" viewBox="0 0 {lay.width} {height}" {FONT} font-size="10" role="img">',
           f"<title>cell {k}{' (reduction)' if reduction else ''}: {n} nodes</title>",
           '<defs><marker id="arr{k}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
           f'<text x="{lay.width / 2}" y="14" text-anchor="middle" font-weight="bold" font-size="12">cell {k}'
           f'{" · reduction (stride 2)" if reduction else ""}</text>']
    if reduction:
        out.append(f'<rect x="1" y="1" width="{lay.width - 2}" height="{height - 2}" fill="none" stroke="#c2410c" '
                   f'stroke-width="2" stroke-dasharray="6 3" class="reduction-mark"/>')

    def edge(a, b, label: str, kind: str, data: str) -> None:
        (x1, y1), (x2, y2) = pos[a], pos[b]
        d = math.hypot(x2 - x1, y2 - y1) or 1
        ux, uy = (x2 - x1) / d, (y2 - y1) / d
        sx, sy, ex, ey = x1 + ux * lay.node_r, y1 + uy * lay.node_r, x2 - ux * lay.node_r, y2 - uy * lay.node_r
        out.append(f'<g class="dag-edge {kind}" {data}><line x1="{_num(sx)}" y1="{_num(sy)}" x2="{_num(ex)}" '
                   f'y2="{_num(ey)}" stroke="#555" marker-end="url(#arr{k})"/>')
        if label:  # 40 % along the edge: edges converging on one node keep their labels apart
            mx, my = sx + (ex - sx) * 0.4, sy + (ey - sy) * 0.4
            out.append(f'<text x="{_num(mx)}" y="{_num(my)}" text-anchor="middle" fill="#1d4ed8" stroke="#fff" '
                       f'stroke-width="3" paint-order="stroke">{_e(label)}</text>')
        out.append("</g>")

    for i, pair in enumerate(nodes):
        for ed in pair:
            src = int(ed["input"])
            if src >= 2 + i:
                raise ValueError(f"cell {k} node {i}: input {src} is not an earlier node")
            edge(src, 2 + i, ed["op"], "kept", f'data-op="{_e(ed["op"])}" data-from="{src}" data-to="{2 + i}"')
    for i in range(n):
        edge(2 + i, "out", "", "concat", f'data-from="{2 + i}" data-to="out"')

    def node(key, label: str, kind: str, fill: str) -> None:
        x, y = pos[key]
        out.append(f'<g class="dag-node {kind}" data-node="{_e(key)}"><circle cx="{_num(x)}" cy="{_num(y)}" '
                   f'r="{lay.node_r}" fill="{fill}" stroke="#333"/><text x="{_num(x)}" y="{_num(y + 3.5)}" '
                   f'text-anchor="middle">{_e(label)}</text></g>')

    node(0, "k-2", "input", "#e5e7eb")
    node(1, "k-1", "input", "#e5e7eb")
    for i in range(n):
        node(2 + i, f"n{i}", "inner", "#dbeafe")
    node("out", "out", "output", "#fde68a")
    out.append("</svg>")
    return "".join(out)


def genotype_dags(genotype: dict) -> list[str]:
    """One DAG per cell of a genotype document (``cells`` of core.genotype)."""
    return [genotype_dag(c, k) for k, c in enumerate(genotype.get("cells") or [])]


# -------------------------------------------------------------------------------------- scatter
def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (lower latency x AND higher mIoU y), by increasing x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    t = math.ceil(lo / step) * step
    out = []
    while t <= hi + 1e-9:
        out.append(round(t, 10))
        t += step
    return out


def scatter(points: Sequence[dict], *, x_label: str = "measured latency (ms)", y_label: str = "mIoU",
            budget: float | None = None, width: int = 640, height: int = 400) -> str:
    """``points``: {x, y, label, href?, kind?}. Pareto-optimal points (lower x, higher y) get class
    ``pareto`` and are joined by the front polyline; a budget draws a vertical line."""
    ml, mr, mt, mb = 56, 16, 16, 44
    pw, ph = width - ml - mr, height - mt - mb
    xs = [float(p["x"]) for p in points] + ([budget] if budget else [])
    ys = [float(p["y"]) for p in points]
    x_lo, x_hi = (0.0, max(xs) * 1.1) if xs else (0.0, 1.0)
    y_lo, y_hi = (0.0, max(max(ys) * 1.1, 0.05)) if ys else (0.0, 1.0)
    x_hi, y_hi = x_hi or 1.0, min(y_hi, 1.0) if ys and max(ys) <= 1 else y_hi

    def sx(v: float) -> float:
        return ml + (v - x_lo) / (x_hi - x_lo) * pw

    def sy(v: float) -> float:
        return mt + ph - (v - y_lo) / (y_hi - y_lo) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="scatter" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" {FONT} font-size="11" role="img" data-x-max="{_num(x_hi)}" '
           f'data-y-max="{_num(y_hi)}"><title>{_e(y_label)} vs {_e(x_label)}</title>',
           f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    for t in _ticks(x_lo, x_hi):
        out.append(f'<g class="tick x"><line x1="{_num(sx(t))}" x2="{_num(sx(t))}" y1="{mt + ph}" y2="{mt + ph + 4}" '
                   f'stroke="#333"/><text x="{_num(sx(t))}" y="{mt + ph + 16}" text-anchor="middle">{_num(t)}</text></g>')
    for t in _ticks(y_lo, y_hi):
        out.append(f'<g class="tick y"><line x1="{ml - 4}" x2="{ml}" y1="{_num(sy(t))}" y2="{_num(sy(t))}" '
                   f'stroke="#333"/><text x="{ml - 6}" y="{_num(sy(t) + 4)}" text-anchor="end">{_num(t)}</text></g>')
    out.append(f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle">{_e(x_label)}</text>'
               f'<text x="14" y="{mt + ph / 2}" transform="rotate(-90 14 {mt + ph / 2})" text-anchor="middle">'
               f'{_e(y_label)}</text>')
    if budget:
        out.append(f'<g class="budget"><line x1="{_num(sx(budget))}" x2="{_num(sx(budget))}" y1="{mt}" '
                   f'y2="{mt + ph}" stroke="#c2410c" stroke-dasharray="5 3"/><text x="{_num(sx(budget) - 4)}" '
                   f'y="{mt + 12}" text-anchor="end" fill="#c2410c">budget {_num(budget)} ms</text></g>')
    front = pareto_front([(float(p["x"]), float(p["y"])) for p in points])
    if len(front) > 1:
        pts = " ".join(f"{_num(sx(points[i]['x']))},{_num(sy(points[i]['y']))}" for i in front)
        out.append(f'<polyline class="pareto-front" points="{pts}" fill="none" stroke="#16a34a" stroke-width="2"/>')
    on_front = set(front)
    for i, p in enumerate(points):
        cls = "pt pareto" if i in on_front else "pt"
        kind = _e(p.get("kind", ""))
        fill = "#16a34a" if i in on_front else "#2563eb"
        shape = (f'<rect x="{_num(sx(p["x"]) - 5)}" y="{_num(sy(p["y"]) - 5)}" width="10" height="10" fill="{fill}"/>'
                 if p.get("kind") == "retrain" else
                 f'<circle cx="{_num(sx(p["x"]))}" cy="{_num(sy(p["y"]))}" r="5" fill="{fill}"/>')
        title = f'<title>{_e(p.get("label", ""))}: {float(p["y"]):.4f} at {float(p["x"]):.3f} ms</title>'
        body = f'<g class="{cls}" data-kind="{kind}" data-x="{float(p["x"]):.4f}" data-y="{float(p["y"]):.4f}">{shape}{title}</g>'
        out.append(f'<a href="{_e(p["href"])}">{body}</a>' if p.get("href") else body)
    out.append("</svg>")
    return "".join(out)


# ----------------------------------------------------------------------------------------- bars
def bars(items: Sequence[tuple[str, float]], *, max_value: float | None = None, unit: str = "",
         lines: Sequence[tuple[str, float]] = (), width: int = 520, bar_h: int = 16, label_w: int = 130) -> str:
    """Horizontal bars (``rect.bar``), one per (label, value), scaled to ``max_value`` (default the
    largest value or line); ``lines`` are labelled vertical markers (a budget)."""
    vals = [v for _, v in items] + [v for _, v in lines]
    top = max_value if max_value else (max(vals) if vals and max(vals) > 0 else 1.0)
    pw = width - label_w - 70
    height = len(items) * (bar_h + 4) + 24
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="bars" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" {FONT} font-size="11" role="img" data-max="{_num(top)}">']
    for i, (label, v) in enumerate(items):
        y = 4 + i * (bar_h + 4)
        w = max(0.0, min(float(v), top)) / top * pw
        out.append(f'<g class="bar-row"><text x="{label_w - 6}" y="{y + bar_h - 4}" text-anchor="end">{_e(label)}</text>'
                   f'<rect class="bar" data-label="{_e(label)}" data-value="{float(v):.6g}" x="{label_w}" y="{y}" '
                   f'width="{_num(w)}" height="{bar_h}" fill="#2563eb"><title>{_e(label)}: {float(v):.4g}{_e(unit)}'
                   f'</title></rect><text x="{_num(label_w + w + 4)}" y="{y + bar_h - 4}">{float(v):.4g}{_e(unit)}</text></g>')
    for label, v in lines:
        x = label_w + min(float(v), top) / top * pw
        out.append(f'<g class="marker"><line x1="{_num(x)}" x2="{_num(x)}" y1="0" y2="{height - 14}" stroke="#c2410c" '
                   f'stroke-dasharray="4 2"/><text x="{_num(x)}" y="{height - 3}" text-anchor="middle" fill="#c2410c">'
                   f'{_e(label)} {float(v):.4g}{_e(unit)}</text></g>')
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------------------------- confusion matrix
def confusion_heatmap(matrix: Sequence[Sequence[float]], names: Sequence[str], *, cell_size: int = 22) -> str:
    """The confusion matrix row-normalised (each ground-truth class's pixels over the predicted classes):
    ``rect.cm-cell`` with ``data-true``/``data-pred``/``data-p``, the diagonal outlined. A class absent
    from the ground truth has an empty row."""
    n = len(matrix)
    if n == 0 or any(len(r) != n for r in matrix):
        raise ValueError("the confusion matrix must be square and non-empty")
    names = list(names) if len(names) == n else [f"class_{i}" for i in range(n)]
    label_w = 14 + 7 * max(len(str(x)) for x in names)
    head_h = label_w
    width, height = label_w + n * cell_size + 10, head_h + n * cell_size + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="confusion" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" {FONT} font-size="11" role="img" data-classes="{n}">',
           "<title>confusion matrix: rows ground truth, columns prediction, share of each row's pixels</title>"]
    for j, name in enumerate(names):
        cx = label_w + j * cell_size + cell_size / 2 + 4
        out.append(f'<text x="{_num(cx)}" y="{head_h - 4}" transform="rotate(-90 {_num(cx)} {head_h - 4})">{_e(name)}</text>')
    for i, row in enumerate(matrix):
        total = float(sum(row))
        y = head_h + i * cell_size
        out.append(f'<text x="{label_w - 6}" y="{y + cell_size - 6}" text-anchor="end">{_e(names[i])}</text>')
        for j, v in enumerate(row):
            p = float(v) / total if total > 0 else 0.0
            x = label_w + j * cell_size
            stroke = ' stroke="#111" stroke-width="1.5"' if i == j else ' stroke="#fff" stroke-width="0.5"'
            out.append(f'<rect class="cm-cell" data-true="{_e(names[i])}" data-pred="{_e(names[j])}" data-p="{p:.4f}" '
                       f'x="{x}" y="{y}" width="{cell_size}" height="{cell_size}" fill="{color(p)}"{stroke}>'
                       f'<title>{_e(names[i])} predicted as {_e(names[j])}: {100 * p:.1f} % of its pixels'
                       f'{"" if total > 0 else " (class absent)"}</title></rect>')
    out.append(_legend(height - 26, "share of the row's ground-truth pixels (outlined: correct)") + "</svg>")
    return "".join(out)
