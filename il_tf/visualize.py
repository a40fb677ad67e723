"""Pictures of DARTS cells: the normal and reduction cell of a genotype as PNG and SVG.

Drawn with matplotlib alone (no graphviz binary). The layout is fixed: the cell inputs
c_{k-2} and c_{k-1} on the left, the intermediate nodes 0..n-1 in columns left to right,
alternately high and low, and the output c_{k} on the right. Each edge is a circular arc
whose bend and label position are picked from a few candidates, one edge after the other,
to keep arcs off unrelated nodes and labels off nodes, arcs and each other.

Uses matplotlib's object API with the Agg canvas (never pyplot), so drawing works without a
display and does not touch a caller's pyplot state.
"""
import os
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from il_tf.search_space.genotypes import Genotype, get_genotype

CELLS = ("normal", "reduce")
FORMATS = ("png", "svg")

# Layout, in data units that are also inches (the axes fill the figure 1:1).
_COLUMN = 2.35          # horizontal distance between node columns
_STAGGER = 0.95         # intermediate nodes sit this far above / below the middle line
_INPUT_Y = 1.15         # c_{k-2} at +_INPUT_Y, c_{k-1} at -_INPUT_Y
_Y_LIMIT = 2.55         # arcs must stay within +-_Y_LIMIT
_NODE_SIZE = {"input": (0.95, 0.5), "inner": (0.5, 0.5), "output": (0.75, 0.5)}
_NODE_COLOR = {"input": "#c1e1c1", "inner": "#add8e6", "output": "#eee8aa"}
_BULGES = (0.0, 0.35, -0.35, 0.7, -0.7, 1.05, -1.05, 1.4, -1.4)
_LABEL_AT = (0.5, 0.42, 0.58, 0.34, 0.66)
_FONT_SIZE = 9.5

# Op families get a colour each so that a reader can follow an edge to its label.
_OP_COLOR = (
    ("sep_conv", "#1f5fa8"),
    ("dil_conv", "#7b3294"),
    ("max_pool", "#b35806"),
    ("avg_pool", "#1b7837"),
    ("skip", "#555555"),
    ("none", "#999999"),
)


def _op_color(op: str) -> str:
    for prefix, color in _OP_COLOR:
        if op.startswith(prefix):
            return color
    return "#000000"


def _matplotlib():
    try:
        import matplotlib  # pylint: disable=g-import-not-at-top
        from matplotlib import figure, patches  # pylint: disable=g-import-not-at-top
        from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
    except ImportError:
        raise ImportError("drawing cells needs matplotlib: pip install 'matplotlib>=3.8'") from None
    return matplotlib, figure, patches, backend_agg


class _Node:

    def __init__(self, key: int, kind: str, text: str, x: float, y: float):
        self.key, self.kind, self.text, self.x, self.y = key, kind, text, x, y
        self.w, self.h = _NODE_SIZE[kind]

    def box(self, margin: float = 0.0) -> Tuple[float, float, float, float]:
        return (self.x - self.w / 2 - margin, self.y - self.h / 2 - margin,
                self.x + self.w / 2 + margin, self.y + self.h / 2 + margin)


def _layout(steps: int) -> Dict[int, _Node]:
    """Nodes keyed as genotype input indices: 0, 1 the inputs, i + 2 node i, -1 the output."""
    nodes = {0: _Node(0, "input", r"$c_{k-2}$", 0.0, _INPUT_Y),
             1: _Node(1, "input", r"$c_{k-1}$", 0.0, -_INPUT_Y)}
    for i in range(steps):
        y = _STAGGER if i % 2 == 0 else -_STAGGER
        nodes[i + 2] = _Node(i + 2, "inner", str(i), _COLUMN * (i + 1), y)
    nodes[-1] = _Node(-1, "output", r"$c_{k}$", _COLUMN * (steps + 1), 0.0)
    return nodes


def _arc(p0, p2, bulge: float, n: int = 80) -> np.ndarray:
    """Points of matplotlib's `arc3` curve from p0 to p2 whose midpoint is `bulge` off the chord.

    arc3 is the quadratic Bezier with control point mid + rad * (dy, -dx); its midpoint is
    rad * |d| / 2 from the chord, hence rad = 2 * bulge / |d|.
    """
    p0, p2 = np.asarray(p0, float), np.asarray(p2, float)
    d = p2 - p0
    control = (p0 + p2) / 2 + _rad(p0, p2, bulge) * np.array([d[1], -d[0]])
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * control + t ** 2 * p2


def _rad(p0, p2, bulge: float) -> float:
    length = float(np.hypot(*(np.asarray(p2, float) - np.asarray(p0, float))))
    return 2.0 * bulge / length if length else 0.0


def _inside(points: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return ((points[:, 0] > x0) & (points[:, 0] < x1) &
            (points[:, 1] > y0) & (points[:, 1] < y1))


def _boxes_overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _segments_cross(a: np.ndarray, b: np.ndarray) -> int:
    """How many times two polylines cross (proper segment intersections)."""
    p, r = a[:-1, None, :], (a[1:] - a[:-1])[:, None, :]
    q, s = b[None, :-1, :], (b[1:] - b[:-1])[None, :, :]
    denom = r[..., 0] * s[..., 1] - r[..., 1] * s[..., 0]
    qp = q - p
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (qp[..., 0] * s[..., 1] - qp[..., 1] * s[..., 0]) / denom
        u = (qp[..., 0] * r[..., 1] - qp[..., 1] * r[..., 0]) / denom
    hit = (denom != 0) & (t > 0) & (t < 1) & (u > 0) & (u < 1)
    return int(hit.sum())


class _Placed:
    """The arcs and label boxes drawn so far, for scoring the next edge's candidates."""

    def __init__(self, nodes: Dict[int, _Node]):
        self.nodes = nodes
        self.curves: List[Tuple[Tuple[int, int], np.ndarray]] = []
        self.labels: List[Tuple[float, float, float, float]] = []

    def arc_cost(self, src: int, dst: int, curve: np.ndarray, bulge: float) -> float:
        """Cost of an arc: bends, leaving the drawing, touching nodes, arcs and labels."""
        cost = 2.0 * abs(bulge)
        if np.abs(curve[:, 1]).max() > _Y_LIMIT:
            cost += 1000.0
        for key, node in self.nodes.items():
            if key not in (src, dst) and _inside(curve, node.box(0.12)).any():
                cost += 200.0
        for (other_src, other_dst), other in self.curves:
            cost += 4.0 * _segments_cross(curve, other)
            # Arcs running along each other (away from the nodes they share) read as one.
            gap = np.linalg.norm(curve[:, None, :] - other[None, :, :], axis=-1).min(axis=1)
            away = np.ones(len(curve), bool)
            for key in {src, dst} & {other_src, other_dst}:
                away &= np.hypot(*(curve - (self.nodes[key].x, self.nodes[key].y)).T) > 0.7
            cost += 1.5 * float((away & (gap < 0.15)).sum())
        for box in self.labels:
            if _inside(curve, box).any():
                cost += 60.0
        return cost

    def label_cost(self, box) -> float:
        """Cost of a label box: leaving the drawing, covering nodes, arcs or other labels."""
        cost = 1000.0 if max(-box[1], box[3]) > _Y_LIMIT else 0.0
        for node in self.nodes.values():
            if _boxes_overlap(box, node.box(0.05)):
                cost += 200.0
        for _, other in self.curves:
            if _inside(other, box).any():
                cost += 60.0
        for other in self.labels:
            if _boxes_overlap(box, other):
                cost += 200.0
        return cost


def _label_box(center, size) -> Tuple[float, float, float, float]:
    w, h = size
    return (center[0] - w / 2, center[1] - h / 2, center[0] + w / 2, center[1] + h / 2)


def cell_figure(genotype: Union[Genotype, str], cell: str = "normal",
                title: Optional[str] = None):
    """A matplotlib `Figure` of one cell of a genotype.

    Args:
        genotype: a `Genotype`, a published name or a genotype.json path.
        cell: "normal" or "reduce".
        title: text above the drawing, e.g. the genotype's name; the cell kind is appended.

    Returns:
        A `matplotlib.figure.Figure` on an Agg canvas (save it with `savefig`).
    """
    _, figure, patches, backend_agg = _matplotlib()
    genotype = get_genotype(genotype)
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
    edges = getattr(genotype, cell)
    concat = getattr(genotype, cell + "_concat")
    steps = len(edges) // 2
    nodes = _layout(steps)

    x_min, x_max = -0.75, _COLUMN * (steps + 1) + 0.6
    y_min, y_max = -_Y_LIMIT - 0.15, _Y_LIMIT + 0.85
    fig = figure.Figure(figsize=(x_max - x_min, y_max - y_min))
    backend_agg.FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(x_min, x_max)
    ax.set_ylim(y_min, y_max)
    ax.set_axis_off()
    renderer = fig.canvas.get_renderer()
    to_data = ax.transData.inverted()

    def text_size(text: str) -> Tuple[float, float]:
        artist = ax.text(0, 0, text, fontsize=_FONT_SIZE, family="DejaVu Sans")
        extent = artist.get_window_extent(renderer)
        artist.remove()
        (x0, y0), (x1, y1) = to_data.transform([(extent.x0, extent.y0), (extent.x1, extent.y1)])
        return (x1 - x0) + 0.14, (y1 - y0) + 0.1  # plus the white box's padding

    node_patches = {}
    for key, node in nodes.items():
        x0, y0, _, _ = node.box()
        patch = patches.FancyBboxPatch(
            (x0, y0), node.w, node.h, boxstyle="round,pad=0,rounding_size=0.12",
            facecolor=_NODE_COLOR[node.kind], edgecolor="#333333", linewidth=1.2, zorder=3)
        ax.add_patch(patch)
        ax.text(node.x, node.y, node.text, ha="center", va="center", fontsize=13, zorder=4)
        node_patches[key] = patch

    # (src, dst, label): op edges, then the unlabelled concat edges into the output.
    todo = [(index, position // 2 + 2, op) for position, (op, index) in enumerate(edges)]
    # Short edges first: they have the fewest good routes; long ones then bend around them.
    todo.sort(key=lambda e: (abs(nodes[e[0]].x - nodes[e[1]].x), e[1], e[0]))
    todo += [(c, -1, None) for c in concat]

    placed = _Placed(nodes)
    for src, dst, op in todo:
        p0, p2 = (nodes[src].x, nodes[src].y), (nodes[dst].x, nodes[dst].y)
        size = text_size(op) if op else None
        best = None
        for bulge in _BULGES:
            curve = _arc(p0, p2, bulge)
            arc_cost = placed.arc_cost(src, dst, curve, bulge)
            if not op:
                candidates = [(arc_cost, None)]
            else:
                # Label position by the curve's parameter, close enough to arc length here.
                boxes = [_label_box(curve[int(round(at * (len(curve) - 1)))], size)
                         for at in _LABEL_AT]
                candidates = [(arc_cost + placed.label_cost(box) + 4.0 * abs(at - 0.5), box)
                              for at, box in zip(_LABEL_AT, boxes)]
            for cost, box in candidates:
                if best is None or cost < best[0]:
                    best = (cost, bulge, curve, box)
        _, bulge, curve, box = best
        placed.curves.append(((src, dst), curve))
        color = _op_color(op) if op else "#888888"
        ax.add_patch(patches.FancyArrowPatch(
            p0, p2, connectionstyle=f"arc3,rad={_rad(p0, p2, bulge):.4f}",
            patchA=node_patches[src], patchB=node_patches[dst], arrowstyle="-|>",
            mutation_scale=13, linewidth=1.4 if op else 1.0, color=color,
            linestyle="-" if op else (0, (4, 3)), zorder=2, shrinkA=1, shrinkB=1))
        if op:
            placed.labels.append(box)
            ax.text((box[0] + box[2]) / 2, (box[1] + box[3]) / 2, op, ha="center", va="center",
                    fontsize=_FONT_SIZE, family="DejaVu Sans", color=color, zorder=5,
                    bbox=dict(boxstyle="round,pad=0.18", facecolor="white", edgecolor=color,
                              linewidth=0.6, alpha=0.92))

    heading = ("Normal cell" if cell == "normal" else "Reduction cell")
    if title:
        heading = f"{title}: {heading.lower()}"
    ax.text(x_min + 0.15, y_max - 0.22, heading, ha="left", va="top", fontsize=13,
            fontweight="bold")
    note = "edges are labelled with their op; dashed: concatenated into the output"
    if cell == "reduce":
        note = "ops on edges from $c_{k-2}$, $c_{k-1}$ have stride 2; " + note
    ax.text(x_min + 0.15, y_max - 0.58, note, ha="left", va="top", fontsize=9, color="#444444")
    return fig


def _save_atomically(fig, path: str, fmt: str, dpi: int) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".cell-", suffix="." + fmt, dir=directory)
    os.close(fd)
    try:
        metadata = {"Date": None} if fmt == "svg" else None  # reproducible SVG files
        fig.savefig(tmp, format=fmt, dpi=dpi, facecolor="white", metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def draw_genotype(genotype: Union[Genotype, str], out_dir: Union[str, os.PathLike],
                  title: Optional[str] = None, formats: Sequence[str] = FORMATS,
                  dpi: int = 150) -> List[str]:
    """Draws both cells of a genotype into `out_dir` as normal.<fmt> and reduce.<fmt>.

    Args:
        genotype: a `Genotype`, a published name or a genotype.json path.
        out_dir: directory to write into; created if missing. Existing pictures are replaced
            atomically.
        title: text above each drawing; defaults to the name when `genotype` is a name.
        formats: file formats, any of "png", "svg" (or others matplotlib writes, e.g. "pdf").
        dpi: resolution of raster formats.

    Returns:
        The paths written, normal cell first, in `formats` order per cell.

    Raises:
        GenotypeError: if `genotype` is not a known name or a valid genotype file.
        ImportError: if matplotlib is missing, with the command that installs it.
        ValueError: on a picture format matplotlib cannot write.
    """
    matplotlib, figure, _, backend_agg = _matplotlib()
    supported = backend_agg.FigureCanvasAgg(figure.Figure()).get_supported_filetypes()
    unknown = [fmt for fmt in formats if fmt not in supported]
    if unknown or not formats:
        raise ValueError(f"unsupported picture format(s) {unknown or list(formats)}; "
                         f"use any of {', '.join(sorted(supported))}")
    if title is None and isinstance(genotype, str) and not os.path.exists(genotype):
        title = genotype.strip().upper()
    genotype = get_genotype(genotype)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    # Text stays text in SVG (smaller, searchable); a fixed hash salt keeps SVG ids stable.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "il_tf"}):
        for cell in CELLS:
            fig = cell_figure(genotype, cell, title=title)
            for fmt in formats:
                path = os.path.join(out_dir, f"{cell}.{fmt}")
                _save_atomically(fig, path, fmt, dpi)
                paths.append(path)
    return paths
