"""Pictures of a search: DARTS cells as PNG and SVG, and the alphas' course over the epochs.

Cells: the normal and reduction cell of a genotype (`cell_figure`, `draw_genotype`).

Drawn with matplotlib alone (no graphviz binary). The layout is fixed: the cell inputs
c_{k-2} and c_{k-1} on the left, the intermediate nodes 0..n-1 in columns left to right,
alternately high and low, and the output c_{k} on the right. Each edge is a circular arc
whose bend and label position are picked from a few candidates, one edge after the other,
to keep arcs off unrelated nodes and labels off nodes, arcs and each other.

The alphas' course (`alpha_course_figure`, `encode_alpha_course`, `draw_alpha_course`,
`alpha_course_image`): for every edge of both cells, the softmax weight of each op per
epoch, read from the `"alphas"` of a search's metrics.jsonl records, as the small line plots
of DARTS analyses. A figure is encoded once per format (`encode_figure`) and the contents
written as files (`write_pictures`) or decoded for TensorBoard (`png_image`).

Uses matplotlib's object API with the Agg canvas (never pyplot), so drawing works without a
display and does not touch a caller's pyplot state.
"""
import io
import os
import tempfile
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from il_tf.errors import OneLineError
from il_tf.runs import metrics as run_metrics
from il_tf.search_space import genotypes as genotypes_lib
from il_tf.search_space.genotypes import Genotype, get_genotype
from il_tf.search_space.ops import PRIMITIVES

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


def encode_figure(fig, formats: Sequence[str] = FORMATS, dpi: int = 110) -> Dict[str, bytes]:
    """A figure's file contents in each format: {format: bytes}, for `write_pictures`.

    Text stays text in SVG (smaller, searchable); a fixed hash salt and no date keep SVG files
    reproducible.

    Raises:
        ValueError: on a picture format matplotlib cannot write.
    """
    matplotlib, _, _, _ = _matplotlib()
    _check_formats(formats)
    encoded = {}
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "il_tf"}):
        for fmt in formats:
            buffer = io.BytesIO()
            fig.savefig(buffer, format=fmt, dpi=dpi, facecolor="white",
                        metadata={"Date": None} if fmt == "svg" else None)
            encoded[fmt] = buffer.getvalue()
    return encoded


def _write_atomically(data: bytes, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".picture-", suffix=os.path.splitext(path)[1],
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; pictures are for everyone to read
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
    _check_formats(formats)
    if title is None and isinstance(genotype, str) and not os.path.exists(genotype):
        title = genotype.strip().upper()
    genotype = get_genotype(genotype)
    paths = []
    for cell in CELLS:
        encoded = encode_figure(cell_figure(genotype, cell, title=title), formats, dpi)
        paths += write_pictures(encoded, os.path.join(os.fspath(out_dir), cell))
    return paths


# ----------------------------------------------------------------------------------------------
# The alphas' course: softmax(alpha) of every op on every edge, per epoch.

METRICS_FILE = run_metrics.METRICS_FILE
ALPHA_COURSE = "alpha_course"  # the pictures' name in a run directory: alpha_course.png, .svg

# One colour per op; the op families keep the cell pictures' hues, the 5x5 variant is lighter
# and dashed, so that a line can be matched with an edge label of the cell pictures.
_COURSE_STYLE = {
    "none": ("#a0a0a0", (0, (1, 1.5))),
    "max_pool_3x3": ("#d95f02", "-"),
    "avg_pool_3x3": ("#1b9e77", "-"),
    "skip_connect": ("#111111", "-"),
    "sep_conv_3x3": ("#1f5fa8", "-"),
    "sep_conv_5x5": ("#5fa8e8", (0, (4, 1.5))),
    "dil_conv_3x3": ("#7b3294", "-"),
    "dil_conv_5x5": ("#c77cd6", (0, (4, 1.5))),
}


class AlphaCourseError(OneLineError, ValueError):
    """Records or a metrics.jsonl that hold no usable alphas; the message says why and the fix."""


class AlphaCourse(NamedTuple):
    """The op weights over a search.

    Attributes:
        epochs: the epochs, ascending, shape (E,).
        normal: softmax(alpha) of the normal cell per epoch, shape (E, edges, ops): edges in
            DARTS order (node 0: inputs 0, 1; node 1: inputs 0, 1, 2; ...), ops in
            `PRIMITIVES` order.
        reduce: the same for the reduction cell.
    """
    epochs: np.ndarray
    normal: np.ndarray
    reduce: np.ndarray


def _steps_of(edges: int) -> Optional[int]:
    """The intermediate nodes of a cell with `edges` edges, None if no cell has that many."""
    steps = 1
    while genotypes_lib.num_edges(steps) < edges:
        steps += 1
    return steps if genotypes_lib.num_edges(steps) == edges else None


def alpha_course(records: Iterable[Mapping[str, Any]]) -> AlphaCourse:
    """The softmax of each record's raw alphas, per epoch.

    Args:
        records: metrics.jsonl records (dicts). Those without `"alphas"` are skipped; the others
            carry `"epoch"` and `"alphas": {"normal": [[ops] x edges], "reduce": [...]}`, raw
            (pre-softmax) alphas. Of several records of one epoch the last counts.

    Returns:
        An `AlphaCourse`, epochs ascending.

    Raises:
        AlphaCourseError: if no record has alphas, or a record's alphas or epoch are malformed.
    """
    by_epoch: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
    shape = None
    for record in records:
        if not isinstance(record, Mapping) or "alphas" not in record:
            continue
        epoch, alphas = record.get("epoch"), record["alphas"]
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise AlphaCourseError(f"a record with alphas has epoch {epoch!r}; expected an int")
        if not isinstance(alphas, Mapping) or not all(c in alphas for c in CELLS):
            raise AlphaCourseError(f"epoch {epoch}: 'alphas' must hold 'normal' and 'reduce'")
        cells = []
        for cell in CELLS:
            try:
                array = np.asarray(alphas[cell], dtype=np.float64)
            except (TypeError, ValueError):
                raise AlphaCourseError(f"epoch {epoch}: alphas[{cell!r}] is not a numeric "
                                       f"array") from None
            if (array.ndim != 2 or array.shape[1] != len(PRIMITIVES)
                    or _steps_of(array.shape[0]) is None):
                raise AlphaCourseError(
                    f"epoch {epoch}: alphas[{cell!r}] has shape {array.shape}; expected (edges, "
                    f"{len(PRIMITIVES)}) with edges = 14 for 4 nodes, ops in PRIMITIVES order")
            if shape is not None and array.shape != shape:
                raise AlphaCourseError(f"epoch {epoch}: alphas[{cell!r}] has shape "
                                       f"{array.shape}, other epochs {shape}")
            shape = array.shape
            cells.append(genotypes_lib.softmax(array))
        by_epoch[epoch] = (cells[0], cells[1])
    if not by_epoch:
        raise AlphaCourseError("no record has alphas: not a search's metrics, or one written "
                               "by an il_tf that did not log them")
    epochs = sorted(by_epoch)
    return AlphaCourse(epochs=np.array(epochs),
                       normal=np.stack([by_epoch[e][0] for e in epochs]),
                       reduce=np.stack([by_epoch[e][1] for e in epochs]))


def read_metrics(path: Union[str, os.PathLike]) -> List[Dict[str, Any]]:
    """The records of a metrics.jsonl, or of `<path>/metrics.jsonl` when `path` is a run directory.

    Raises:
        MetricsError: if the file is missing or holds a line that is not JSON.
        AlphaCourseError: if it is empty.
    """
    records = run_metrics.read_metrics(os.fspath(path), required=True)
    if not records:
        path = os.fspath(path)
        if not path.endswith(".jsonl"):
            path = os.path.join(path, METRICS_FILE)
        raise AlphaCourseError(f"{path} is empty: the search has not logged its first epoch "
                               f"yet")
    return records


def _edge_inputs(steps: int) -> List[Tuple[int, int]]:
    """(node, input) of every edge in DARTS order; input 0, 1 = c_{k-2}, c_{k-1}, i = node i-2."""
    return [(node, j) for node in range(steps) for j in range(node + 2)]


def _input_name(j: int, tex: bool = True) -> str:
    if j < 2:
        return (r"$c_{k-2}$", r"$c_{k-1}$")[j] if tex else ("c_{k-2}", "c_{k-1}")[j]
    return f"node {j - 2}"


def edge_labels(steps: int = 4) -> List[str]:
    """Plain-text names of a cell's edges in DARTS order, e.g. "node 2 <- c_{k-1}"."""
    return [f"node {node} <- {_input_name(j, tex=False)}" for node, j in _edge_inputs(steps)]


def _last_genotype(records: Sequence[Mapping[str, Any]]) -> Optional[Genotype]:
    for record in reversed(records):
        if isinstance(record, Mapping) and "genotype" in record:
            try:
                return Genotype.from_dict(record["genotype"], source="metrics genotype")
            except genotypes_lib.GenotypeError:
                return None
    return None


def _y_range(weights: np.ndarray) -> Tuple[float, float]:
    """One y range for all plots: the weights and the uniform 1/8, from 0 unless they all stay
    near uniform (early in a search, or a short one), where 0 would flatten every line."""
    uniform = 1.0 / len(PRIMITIVES)
    low = min(float(weights.min()) if weights.size else 0.0, uniform)
    high = max(float(weights.max()) if weights.size else 1.0, uniform)
    if low < 0.5 * high:
        low = 0.0
    pad = max(0.06 * (high - low), 1e-3)
    # Headroom above the lines for the kept op's name.
    return max(0.0, low - pad), min(1.0, high + pad + 0.12 * (high - low))


def alpha_course_figure(records: Sequence[Mapping[str, Any]],
                        genotype: Union[Genotype, str, None] = None,
                        title: Optional[str] = None):
    """A matplotlib `Figure` of the alphas' course: one small line plot per edge, both cells.

    Each cell is a triangle of plots: row i is intermediate node i, column j its input j
    (c_{k-2}, c_{k-1}, node 0, ...), as in the cell pictures. A plot shows the softmax weight
    of every op on that edge per epoch (one colour per op, one legend), on one y scale for all
    plots; a dotted line marks the uniform weight 1/8. The edges the genotype keeps are framed
    and name their op.

    Args:
        records: metrics.jsonl records; those without "alphas" are skipped (`alpha_course`).
        genotype: the genotype whose edges to mark: a `Genotype`, name or genotype.json path.
            Default: the last record's "genotype", else the one the last alphas give by the
            DARTS rule (without PC-DARTS edge normalisation).
        title: text in front of the heading, e.g. the run's name.

    Returns:
        A `matplotlib.figure.Figure` on an Agg canvas.

    Raises:
        AlphaCourseError: if the records hold no usable alphas.
    """
    _, figure, _, backend_agg = _matplotlib()
    records = list(records)
    course = alpha_course(records)
    steps = _steps_of(course.normal.shape[1])
    if genotype is not None:
        genotype = get_genotype(genotype)
    else:
        genotype = _last_genotype(records)
        if genotype is None and np.all(np.isfinite(course.normal[-1])) and np.all(
                np.isfinite(course.reduce[-1])):
            genotype = genotypes_lib.derive_genotype(
                np.log(course.normal[-1]), np.log(course.reduce[-1]), steps=steps,
                multiplier=steps)
    if genotype is not None and genotype.steps != steps:
        genotype = None  # a genotype of another cell size cannot mark these edges

    # Layout in inches: per cell a triangle of `steps` rows and `steps + 1` columns, the
    # normal cell above the reduction cell (narrow enough to stay legible in a README).
    panel_w, panel_h, gap_w, gap_h = 1.6, 1.05, 0.2, 0.38
    left, right, top, bottom, heading_h, between = 0.7, 0.15, 0.55, 0.5, 0.5, 0.62
    cols = steps + 1
    block_w = cols * panel_w + (cols - 1) * gap_w
    block_h = steps * panel_h + (steps - 1) * gap_h
    width = left + block_w + right
    height = top + 2 * (heading_h + block_h) + between + bottom
    fig = figure.Figure(figsize=(width, height))
    backend_agg.FigureCanvasAgg(fig)

    def place(x, y, w, h):  # inches from the bottom left -> figure fraction
        return (x / width, y / height, w / width, h / height)

    epochs = course.epochs
    finite = np.concatenate([course.normal.ravel(), course.reduce.ravel()])
    finite = finite[np.isfinite(finite)]
    y_min, y_max = _y_range(finite)
    x_pad = max(0.5, 0.03 * float(epochs[-1] - epochs[0]))
    marker = "o" if len(epochs) <= 12 else None
    lines = {}
    corners = []  # (x, top y) of each cell's empty upper-right corner, inches

    for c, cell in enumerate(CELLS):
        weights = getattr(course, cell)
        kept = {}
        if genotype is not None:
            for position, (op, j) in enumerate(getattr(genotype, cell)):
                kept[(position // 2, j)] = op
        block_top = height - top - c * (heading_h + block_h + between)
        fig.text(left / width, (block_top - 0.05) / height,
                 "Normal cell" if cell == "normal" else "Reduction cell",
                 ha="left", va="top", fontsize=12, fontweight="bold")
        panels_top = block_top - heading_h
        corners.append((left + 2 * (panel_w + gap_w), panels_top))
        for e, (node, j) in enumerate(_edge_inputs(steps)):
            ax = fig.add_axes(place(left + j * (panel_w + gap_w),
                                    panels_top - (node + 1) * panel_h - node * gap_h,
                                    panel_w, panel_h))
            ax.set_xlim(epochs[0] - x_pad, epochs[-1] + x_pad)
            ax.set_ylim(y_min, y_max)
            ax.axhline(1.0 / len(PRIMITIVES), color="#b0b0b0", linewidth=0.9,
                       linestyle=(0, (6, 2, 1, 2)), zorder=1)
            chosen = kept.get((node, j))
            for o, op in enumerate(PRIMITIVES):
                color, style = _COURSE_STYLE.get(op, ("#000000", "-"))
                (line,) = ax.plot(epochs, weights[:, e, o], color=color, linestyle=style,
                                  linewidth=2.2 if op == chosen else 1.2, marker=marker,
                                  markersize=2.2, zorder=3 if op == chosen else 2, label=op)
                if op != chosen:
                    lines.setdefault(op, line)
            ax.set_title(f"{_input_name(j)} → node {node}", fontsize=9, pad=2.5)
            ax.tick_params(labelsize=7.5, length=2, pad=1.5)
            ax.locator_params(axis="x", nbins=5, integer=True)
            ax.locator_params(axis="y", nbins=4)
            ax.grid(True, color="#eeeeee", linewidth=0.6, zorder=0)
            if j > 0:
                ax.tick_params(labelleft=False)
            else:
                ax.set_ylabel("weight", fontsize=8, labelpad=2)
            if node < steps - 1:
                ax.tick_params(labelbottom=False)
            else:
                ax.set_xlabel("epoch", fontsize=8, labelpad=1)
            for spine in ax.spines.values():
                spine.set_color("#222222" if chosen else "#b8b8b8")
                spine.set_linewidth(1.8 if chosen else 0.7)
            if chosen:
                ax.text(0.03, 0.96, chosen, transform=ax.transAxes, ha="left", va="top",
                        fontsize=7.5, fontweight="bold", zorder=4,
                        color=_COURSE_STYLE.get(chosen, ("#000000", "-"))[0],
                        bbox=dict(boxstyle="round,pad=0.15", facecolor="white",
                                  edgecolor="none", alpha=0.85))

    # The legend fills the empty corner of the normal cell's triangle, the notes the
    # reduction cell's.
    (legend_x, legend_top), (note_x, note_top) = corners
    fig.legend([lines[op] for op in PRIMITIVES if op in lines],
               [op for op in PRIMITIVES if op in lines], loc="upper left",
               bbox_to_anchor=(legend_x / width, legend_top / height), ncol=2, fontsize=9,
               frameon=False, handlelength=2.8, columnspacing=1.4, title="operation",
               title_fontsize=9.5, alignment="left")
    note = ["Each plot is one edge (input → node): the softmax weight of every op",
            "per epoch, on one y scale for all plots. Dash-dot grey: the uniform 1/8."]
    if genotype is not None:
        note += ["Framed, with the op's name and a thick line: the edges the genotype",
                 "keeps (per node the 2 whose strongest op other than none is strongest)."]
    fig.text(note_x / width, (note_top - 0.05) / height, "\n".join(note), ha="left", va="top",
             fontsize=8.5, color="#333333", linespacing=1.45)
    heading = "Architecture weights over the search"
    if title:
        heading = f"{title}: architecture weights"
    span = f"epochs {epochs[0]}-{epochs[-1]}" if len(epochs) > 1 else f"epoch {epochs[0]}"
    fig.text(left / width, 1 - 0.12 / height, f"{heading} ({span})", ha="left", va="top",
             fontsize=13, fontweight="bold")
    return fig


def _check_formats(formats: Sequence[str]) -> None:
    _, figure, _, backend_agg = _matplotlib()
    supported = backend_agg.FigureCanvasAgg(figure.Figure()).get_supported_filetypes()
    unknown = [fmt for fmt in formats if fmt not in supported]
    if unknown or not formats:
        raise ValueError(f"unsupported picture format(s) {unknown or list(formats)}; "
                         f"use any of {', '.join(sorted(supported))}")


def encode_alpha_course(records: Sequence[Mapping[str, Any]],
                        genotype: Union[Genotype, str, None] = None,
                        title: Optional[str] = None, formats: Sequence[str] = FORMATS,
                        dpi: int = 110) -> Dict[str, bytes]:
    """The alphas' course drawn once and encoded in each format: {format: file contents}, for
    `write_pictures`; `png_image` turns the PNG into pixels for TensorBoard.

    Args:
        records, genotype, title: as for `alpha_course_figure`.
        formats: file formats, any of "png", "svg" (or others matplotlib writes).
        dpi: resolution of raster formats.

    Raises:
        AlphaCourseError: if the records hold no usable alphas.
        ImportError: if matplotlib is missing, with the command that installs it.
        ValueError: on a picture format matplotlib cannot write.
    """
    _check_formats(formats)
    return encode_figure(alpha_course_figure(records, genotype=genotype, title=title),
                         formats, dpi)


def write_pictures(encoded: Mapping[str, bytes], out_prefix: Union[str, os.PathLike]
                   ) -> List[str]:
    """Writes `<out_prefix>.<fmt>` for each {format: contents}, replacing earlier files
    atomically (a reader never sees half a picture); returns the paths in that order."""
    out_prefix = os.fspath(out_prefix)
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    paths = []
    for fmt, data in encoded.items():
        path = f"{out_prefix}.{fmt}"
        _write_atomically(data, path)
        paths.append(path)
    return paths


def draw_alpha_course(records: Sequence[Mapping[str, Any]],
                      out_prefix: Union[str, os.PathLike],
                      genotype: Union[Genotype, str, None] = None,
                      title: Optional[str] = None, formats: Sequence[str] = FORMATS,
                      dpi: int = 110) -> List[str]:
    """Draws the alphas' course into `<out_prefix>.<fmt>`, replacing earlier files atomically.

    Meant to be called after every epoch of a search with the metrics.jsonl records so far,
    e.g. `draw_alpha_course(records, os.path.join(model_dir, "alpha_course"))`.

    Args:
        records: metrics.jsonl records; those without "alphas" are skipped.
        out_prefix: path without extension; its directory is created if missing.
        genotype: the genotype whose edges to mark (see `alpha_course_figure`).
        title: text in front of the heading.
        formats: file formats, any of "png", "svg" (or others matplotlib writes).
        dpi: resolution of raster formats.

    Returns:
        The paths written, in `formats` order.

    Raises:
        AlphaCourseError: if the records hold no usable alphas.
        ImportError: if matplotlib is missing, with the command that installs it.
        ValueError: on a picture format matplotlib cannot write.
    """
    return write_pictures(encode_alpha_course(records, genotype, title, formats, dpi),
                          out_prefix)


def png_image(png: bytes) -> np.ndarray:
    """A PNG's pixels as a uint8 (height, width, 4) RGBA array, e.g. for TensorBoard:
    `tf.summary.image(tag, png_image(png)[None], step=...)`."""
    _matplotlib()
    from PIL import Image  # pylint: disable=g-import-not-at-top  # matplotlib requires Pillow
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGBA"), dtype=np.uint8)


def alpha_course_image(records: Sequence[Mapping[str, Any]],
                       genotype: Union[Genotype, str, None] = None,
                       title: Optional[str] = None, dpi: int = 80) -> np.ndarray:
    """The alphas' course as an RGBA image for TensorBoard.

    Log it with `tf.summary.image("alpha_course", image[None], step=...)`.

    Args:
        records, genotype, title: as for `alpha_course_figure`.
        dpi: pixels per inch (80: about 770 x 1,070 pixels for DARTS's cells).

    Returns:
        A uint8 array of shape (height, width, 4).

    Raises:
        AlphaCourseError: if the records hold no usable alphas.
    """
    return png_image(encode_alpha_course(records, genotype, title, ("png",), dpi)["png"])
