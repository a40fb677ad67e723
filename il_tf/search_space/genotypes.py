"""Discrete DARTS cells: the `Genotype` value, its JSON file, derivation and published cells.

A genotype names, for every intermediate node of a normal and of a reduction cell, the two
incoming edges kept after search: `(op_name, input_index)` pairs where inputs 0 and 1 are the
cell's inputs c_{k-2} and c_{k-1} and input i >= 2 is intermediate node i - 2. The concat lists
say which states (same numbering) are concatenated into the cell's output.

This module needs numpy only (no TensorFlow), so it is cheap to use from any tool.

On disk a genotype is versioned JSON (`genotype.json`), in the spirit of tunas's `schema_io`:
every file carries `"format_version"`; a reader upgrades older versions step by step
(`_UPGRADES`) so files written by earlier il_tf releases keep loading, and refuses versions
newer than it knows with a message saying to upgrade il_tf.
"""
import dataclasses
import json
import operator
import os
import tempfile
import types
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from il_tf.search_space.ops import PRIMITIVES

# The version `Genotype.to_dict` writes. Bump it when the layout changes and add an upgrade
# from the previous version to `_UPGRADES`, so that old genotype.json files keep loading.
FORMAT_VERSION = 1

# _UPGRADES[v] turns a version-v dict into a version-(v + 1) dict (tunas-style migration).
# Version 1 is the first format; there is nothing to upgrade yet.
_UPGRADES: Dict[int, Callable[[Dict[str, Any]], Dict[str, Any]]] = {}

_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
_NONE = "none"

Edge = Tuple[str, int]


class GenotypeError(ValueError):
    """A genotype (or its file, or the alphas it is derived from) is invalid; one-line message."""


def _valid_ops() -> str:
    return ", ".join(PRIMITIVES)


def _as_int(value: Any, what: str) -> int:
    # bool is an int subclass; `True` as an input index is a malformed file, not input 1.
    if isinstance(value, bool):
        raise GenotypeError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise GenotypeError(f"{what} must be an integer, got {value!r}") from None


def _check_edges(cell: str, edges: Any) -> Tuple[Edge, ...]:
    """Validates one cell's edge list and returns it as a tuple of (str, int) tuples."""
    if isinstance(edges, (str, bytes)) or not isinstance(edges, Iterable):
        raise GenotypeError(f"{cell} must be a list of [op_name, input_index] pairs, got {edges!r}")
    edges = list(edges)
    if not edges or len(edges) % 2:
        raise GenotypeError(
            f"{cell} has {len(edges)} edges; a cell needs exactly 2 per intermediate node "
            f"(8 for DARTS's 4 nodes)")
    result = []
    for position, edge in enumerate(edges):
        node = position // 2
        where = f"{cell} edge {position} (node {node})"
        if isinstance(edge, (str, bytes)) or not isinstance(edge, Sequence) or len(edge) != 2:
            raise GenotypeError(f"{where} must be a pair [op_name, input_index], got {edge!r}")
        op, index = edge
        if not isinstance(op, str) or op not in PRIMITIVES:
            raise GenotypeError(f"{where} has unknown op {op!r}; valid ops: {_valid_ops()}")
        index = _as_int(index, f"{where} input index")
        # Node `node` sees the two cell inputs and the intermediate nodes before it.
        if not 0 <= index < node + 2:
            raise GenotypeError(
                f"{where} has input index {index}; node {node} can only read inputs "
                f"0..{node + 1} (0, 1 = the cell inputs, i >= 2 = intermediate node i-2)")
        result.append((str(op), index))
    return tuple(result)


def _check_concat(cell: str, concat: Any, steps: int) -> Tuple[int, ...]:
    if isinstance(concat, (str, bytes)) or not isinstance(concat, Iterable):
        raise GenotypeError(f"{cell} must be a list of state indices, got {concat!r}")
    concat = tuple(_as_int(c, f"{cell} entry") for c in concat)
    if not concat:
        raise GenotypeError(f"{cell} is empty; a cell must output at least one node")
    if len(set(concat)) != len(concat):
        raise GenotypeError(f"{cell} {list(concat)} repeats a node")
    for c in concat:
        if not 2 <= c < steps + 2:
            raise GenotypeError(
                f"{cell} has index {c}; with {steps} intermediate nodes ({2 * steps} edges) "
                f"it must be in 2..{steps + 1}")
    return concat


@dataclasses.dataclass(frozen=True)
class Genotype:
    """A discrete DARTS cell pair; immutable, hashable, compared by value.

    Args:
        normal: `(op_name, input_index)` pairs, two per intermediate node in node order (8 for
            DARTS's 4 nodes). Op names are from `PRIMITIVES`; node i reads inputs 0..i+1.
        normal_concat: states concatenated into the normal cell's output (DARTS: 2, 3, 4, 5).
        reduce: as `normal`, for the reduction cell.
        reduce_concat: as `normal_concat`, for the reduction cell.

    Raises:
        GenotypeError: on an unknown op, an input index a node cannot read, an odd or empty
            edge list, cells with different numbers of nodes, or a concat index that is not an
            intermediate node.

    The fields are the positional order of DARTS's namedtuple, so `Genotype(*darts_genotype)`
    converts one. Lists and ranges are accepted and stored as tuples.
    """

    normal: Tuple[Edge, ...]
    normal_concat: Tuple[int, ...]
    reduce: Tuple[Edge, ...]
    reduce_concat: Tuple[int, ...]

    def __post_init__(self):
        normal = _check_edges("normal", self.normal)
        reduce = _check_edges("reduce", self.reduce)
        if len(normal) != len(reduce):
            raise GenotypeError(
                f"normal has {len(normal)} edges but reduce has {len(reduce)}; both cells need "
                f"2 per intermediate node and the same number of nodes (8 edges for DARTS)")
        object.__setattr__(self, "normal", normal)
        object.__setattr__(self, "reduce", reduce)
        object.__setattr__(
            self, "normal_concat", _check_concat("normal_concat", self.normal_concat,
                                                 len(normal) // 2))
        object.__setattr__(
            self, "reduce_concat", _check_concat("reduce_concat", self.reduce_concat,
                                                 len(reduce) // 2))

    @property
    def steps(self) -> int:
        """Number of intermediate nodes per cell (4 in DARTS)."""
        return len(self.normal) // 2

    def to_dict(self) -> Dict[str, Any]:
        """The JSON-ready dict of the current format version."""
        return {
            "format_version": FORMAT_VERSION,
            "normal": [[op, index] for op, index in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, index] for op, index in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "genotype") -> "Genotype":
        """Builds a genotype from a parsed JSON dict of any known format version.

        Args:
            data: the dict, as `to_dict` writes it (or an older version of it).
            source: what to call the data in error messages (e.g. the file's path).

        Raises:
            GenotypeError: on a missing or unknown field, an unknown (newer) format version,
                or an invalid genotype.
        """
        if not isinstance(data, Mapping):
            raise GenotypeError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if "format_version" not in data:
            raise GenotypeError(f"{source}: missing field 'format_version'")
        version = data["format_version"]
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise GenotypeError(f"{source}: format_version must be a positive integer, "
                                f"got {version!r}")
        if version > FORMAT_VERSION:
            raise GenotypeError(
                f"{source}: format_version {version} is newer than this il_tf reads "
                f"(up to {FORMAT_VERSION}); upgrade il_tf")
        data = dict(data)
        while version < FORMAT_VERSION:
            data = _UPGRADES[version](data)
            version += 1
            data["format_version"] = version
        missing = [f for f in _FIELDS if f not in data]
        if missing:
            raise GenotypeError(f"{source}: missing field(s) {', '.join(map(repr, missing))}")
        unknown = sorted(set(data) - set(_FIELDS) - {"format_version"})
        if unknown:
            raise GenotypeError(f"{source}: unknown field(s) {', '.join(map(repr, unknown))}; "
                                f"expected {', '.join(('format_version',) + _FIELDS)}")
        try:
            return cls(**{f: data[f] for f in _FIELDS})
        except GenotypeError as e:
            raise GenotypeError(f"{source}: {e}") from None

    def to_json(self) -> str:
        """The genotype as versioned JSON text (one edge per line, diff-friendly)."""
        d = self.to_dict()
        lines = ["{", f'  "format_version": {d["format_version"]},']
        for cell in ("normal", "reduce"):
            edges = ",\n".join(f"    {json.dumps(e)}" for e in d[cell])
            lines.append(f'  "{cell}": [\n{edges}\n  ],')
            comma = "," if cell == "normal" else ""
            lines.append(f'  "{cell}_concat": {json.dumps(d[cell + "_concat"])}{comma}')
        lines.append("}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_json(cls, text: Union[str, bytes], source: str = "genotype JSON") -> "Genotype":
        """Parses `to_json` output (any known format version).

        Raises:
            GenotypeError: if the text is not JSON or not a valid genotype.
        """
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise GenotypeError(f"{source}: not valid JSON ({e})") from None
        return cls.from_dict(data, source=source)

    def save(self, path: Union[str, os.PathLike]) -> str:
        """Writes the genotype to `path` atomically and returns the path.

        The text goes to a temporary file in the same directory which then replaces `path`,
        so a crash leaves either the previous file or the new one, never half of one.
        Missing parent directories are created.
        """
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".genotype-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Genotype":
        """Reads a genotype.json written by `save` (any known format version).

        Raises:
            GenotypeError: if the file cannot be read or is not a valid genotype.
        """
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                text = f.read()
        except OSError as e:
            raise GenotypeError(f"{path}: cannot read genotype file ({e.strerror})") from None
        return cls.from_json(text, source=path)


# ----------------------------------------------------------------------------------------------
# Derivation from architecture parameters (the DARTS rule).


def num_edges(steps: int) -> int:
    """Edges of a cell with `steps` intermediate nodes: node i has i + 2 inputs (14 for 4)."""
    return sum(i + 2 for i in range(steps))


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax: DARTS's op weights from raw alphas."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _as_array(value: Any, name: str, shape: Tuple[int, ...]) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise GenotypeError(f"{name} must be a numeric array ({e})") from None
    if array.shape != shape:
        layout = ("edges in DARTS order x ops in PRIMITIVES order" if len(shape) == 2
                  else "one per edge in DARTS order")
        raise GenotypeError(f"{name} has shape {array.shape}, expected {shape} ({layout})")
    if not np.all(np.isfinite(array)):
        raise GenotypeError(f"{name} contains NaN or infinite values; the search diverged")
    return array


def _parse_cell(weights: np.ndarray, steps: int) -> List[Edge]:
    """DARTS's `_parse`: per node the 2 edges whose best non-none op weight is largest."""
    none = PRIMITIVES.index(_NONE) if _NONE in PRIMITIVES else None
    masked = weights.copy()
    if none is not None:
        masked[:, none] = -np.inf
    edges = []
    start = 0
    for node in range(steps):
        rows = masked[start:start + node + 2]
        strength = rows.max(axis=1)
        # A stable sort on the negated strength: ties keep the lower input first, exactly as
        # Python's stable `sorted(..., key=-max)` in DARTS does.
        kept = np.argsort(-strength, kind="stable")[:2]
        for j in kept:
            # argmax returns the first maximum: DARTS keeps the first op on a tie (strict >).
            edges.append((PRIMITIVES[int(np.argmax(rows[j]))], int(j)))
        start += node + 2
    return edges


def _edge_weights(betas: np.ndarray, steps: int) -> np.ndarray:
    """PC-DARTS edge normalisation: per node, a softmax over its incoming edges' betas."""
    out = np.empty_like(betas)
    start = 0
    for node in range(steps):
        end = start + node + 2
        out[start:end] = softmax(betas[start:end])
        start = end
    return out


def derive_genotype(alphas_normal: Any,
                    alphas_reduce: Any,
                    steps: int = 4,
                    multiplier: int = 4,
                    betas_normal: Optional[Any] = None,
                    betas_reduce: Optional[Any] = None) -> Genotype:
    """The discrete cells that architecture parameters select, by the DARTS rule.

    Each row of alphas is turned into op weights by a softmax. For every intermediate node the
    two incoming edges whose strongest non-`none` op weight is largest are kept, each labelled
    with that op (`none` is never chosen, even where it is strongest). Ties go as DARTS's stable
    sort sends them: the lower input index, then the earlier op in `PRIMITIVES`. With PC-DARTS
    edge normalisation the op weights of each edge are first multiplied by the softmax of the
    node's incoming betas.

    Args:
        alphas_normal: raw architecture parameters of the normal cell, shape (14, 8) for 4 nodes:
            rows in DARTS edge order (node 0: inputs 0, 1; node 1: inputs 0, 1, 2; ...), columns
            in `PRIMITIVES` order. Anything numpy can convert (e.g. a tf.Variable in eager mode).
        alphas_reduce: the same for the reduction cell.
        steps: intermediate nodes per cell.
        multiplier: how many of the last intermediate nodes are concatenated into the output.
        betas_normal: optional PC-DARTS edge-normalisation parameters of the normal cell, one per
            edge (14,). None means no edge normalisation.
        betas_reduce: the same for the reduction cell.

    Returns:
        The `Genotype`, with concat = the last `multiplier` nodes ([2, 3, 4, 5] for DARTS).

    Raises:
        GenotypeError: on a wrong shape or non-finite values.
    """
    steps = _as_int(steps, "steps")
    multiplier = _as_int(multiplier, "multiplier")
    if steps < 1 or not 1 <= multiplier <= steps:
        raise GenotypeError(f"need steps >= 1 and 1 <= multiplier <= steps, "
                            f"got steps={steps}, multiplier={multiplier}")
    shape = (num_edges(steps), len(PRIMITIVES))
    cells = []
    for name, alphas, betas in (("alphas_normal", alphas_normal, betas_normal),
                                ("alphas_reduce", alphas_reduce, betas_reduce)):
        weights = softmax(_as_array(alphas, name, shape))
        if betas is not None:
            betas_name = "betas_" + name.split("_")[1]
            weights = weights * _edge_weights(
                _as_array(betas, betas_name, shape[:1]), steps)[:, None]
        cells.append(_parse_cell(weights, steps))
    concat = list(range(2 + steps - multiplier, steps + 2))
    return Genotype(normal=cells[0], normal_concat=concat, reduce=cells[1], reduce_concat=concat)


# ----------------------------------------------------------------------------------------------
# Published genotypes (CIFAR-10 searches in the DARTS space), as reported by their authors.

_CONCAT = (2, 3, 4, 5)

# DARTS (Liu et al., ICLR 2019), first-order search: quark0/darts cnn/genotypes.py `DARTS_V1`.
DARTS_V1 = Genotype(
    normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0),
            ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 0), ("skip_connect", 2)],
    normal_concat=_CONCAT,
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1),
            ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2),
            ("skip_connect", 2), ("avg_pool_3x3", 0)],
    reduce_concat=_CONCAT,
)

# DARTS second-order search, the paper's reported cell (2.76% CIFAR-10 error, 3.3M params).
DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0),
            ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=_CONCAT,
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1),
            ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2),
            ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=_CONCAT,
)

# PC-DARTS (Xu et al., ICLR 2020), searched on CIFAR-10: yuhuixu1993/PC-DARTS `PC_DARTS_cifar`.
PC_DARTS = Genotype(
    normal=[("sep_conv_3x3", 1), ("skip_connect", 0),
            ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
            ("sep_conv_5x5", 0), ("sep_conv_3x3", 1),
            ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)],
    normal_concat=_CONCAT,
    reduce=[("sep_conv_5x5", 1), ("max_pool_3x3", 0),
            ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
            ("sep_conv_3x3", 0), ("sep_conv_3x3", 3),
            ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)],
    reduce_concat=_CONCAT,
)

# PC-DARTS searched directly on ImageNet: yuhuixu1993/PC-DARTS `PC_DARTS_image`.
PC_DARTS_IMAGENET = Genotype(
    normal=[("skip_connect", 1), ("sep_conv_3x3", 0),
            ("sep_conv_3x3", 0), ("skip_connect", 1),
            ("sep_conv_3x3", 1), ("sep_conv_3x3", 3),
            ("sep_conv_3x3", 1), ("dil_conv_5x5", 4)],
    normal_concat=_CONCAT,
    reduce=[("sep_conv_3x3", 0), ("skip_connect", 1),
            ("dil_conv_5x5", 2), ("max_pool_3x3", 1),
            ("sep_conv_3x3", 2), ("sep_conv_3x3", 1),
            ("sep_conv_5x5", 0), ("sep_conv_3x3", 3)],
    reduce_concat=_CONCAT,
)

# P-DARTS (Chen et al., ICCV 2019), CIFAR-10: chenxin061/pdarts genotypes.py `PDARTS`.
PDARTS = Genotype(
    normal=[("skip_connect", 0), ("dil_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("sep_conv_3x3", 3),
            ("sep_conv_3x3", 0), ("dil_conv_5x5", 4)],
    normal_concat=_CONCAT,
    reduce=[("avg_pool_3x3", 0), ("sep_conv_5x5", 1),
            ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
            ("max_pool_3x3", 0), ("dil_conv_3x3", 1),
            ("dil_conv_3x3", 1), ("dil_conv_5x5", 3)],
    reduce_concat=_CONCAT,
)

# Name -> genotype; names are matched case-insensitively, with "-" read as "_".
# NASNet and AmoebaNet are not here: their cells use ops outside the DARTS space
# (sep_conv_7x7, conv_7x1_1x7) and five nodes.
GENOTYPES: Mapping[str, Genotype] = types.MappingProxyType({
    "DARTS_V1": DARTS_V1,
    "DARTS_V2": DARTS_V2,
    "DARTS": DARTS_V2,  # The cell the DARTS paper reports; its repository's default.
    "PC_DARTS": PC_DARTS,
    "PC_DARTS_IMAGENET": PC_DARTS_IMAGENET,
    "PDARTS": PDARTS,
})


def genotype_names() -> List[str]:
    """The registered names, in registration order."""
    return list(GENOTYPES)


def _normalise_name(name: str) -> str:
    return name.strip().upper().replace("-", "_")


def get_genotype(name_or_path: Union[str, os.PathLike, Genotype]) -> Genotype:
    """A published genotype by name, or one read from a genotype.json.

    Args:
        name_or_path: a registered name (case-insensitive, e.g. "darts_v2", "PC-DARTS"), a path
            to a genotype.json, a directory holding one (a search run's model_dir), or a
            `Genotype`, returned as is.

    Returns:
        The `Genotype`.

    Raises:
        GenotypeError: if it is neither a known name nor a readable genotype file; the message
            lists the known names.
    """
    if isinstance(name_or_path, Genotype):
        return name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise GenotypeError(f"expected a genotype name or path, got {type(name_or_path).__name__}")
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, str):
        key = _normalise_name(text)
        if key in GENOTYPES:
            return GENOTYPES[key]
    if os.path.isdir(text) and os.path.isfile(os.path.join(text, "genotype.json")):
        return Genotype.load(os.path.join(text, "genotype.json"))
    if os.path.isfile(text):
        return Genotype.load(text)
    raise GenotypeError(f"{text!r} is neither a known genotype ({', '.join(GENOTYPES)}) "
                        f"nor a genotype.json file")
