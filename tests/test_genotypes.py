"""Tests for il_tf.search_space.genotypes: the value, its JSON file, derivation, the registry."""
import json
import os

import numpy as np
import pytest

from il_tf.search_space import genotypes as g
from il_tf.search_space.ops import PRIMITIVES

OP = {name: i for i, name in enumerate(PRIMITIVES)}
# Row of each (node, input) edge in DARTS order.
ROW = {}
for _node in range(4):
    for _inp in range(_node + 2):
        ROW[(_node, _inp)] = len(ROW)


def _reference_parse(weights, steps=4):
    """DARTS's `_parse` (quark0/darts model_search.py), transcribed loop for loop."""
    none = PRIMITIVES.index("none")
    gene, start, n = [], 0, 2
    for i in range(steps):
        w = weights[start:start + n]
        edges = sorted(range(i + 2),
                       key=lambda x: -max(w[x][k] for k in range(len(w[x])) if k != none))[:2]
        for j in edges:
            k_best = None
            for k in range(len(w[j])):
                if k != none and (k_best is None or w[j][k] > w[j][k_best]):
                    k_best = k
            gene.append((PRIMITIVES[k_best], j))
        start += n
        n += 1
    return gene


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------- the value

def test_genotype_is_an_immutable_value():
    a = g.Genotype([list(e) for e in g.DARTS_V2.normal], range(2, 6),
                   list(g.DARTS_V2.reduce), [2, 3, 4, 5])
    assert a == g.DARTS_V2 and hash(a) == hash(g.DARTS_V2)
    assert a.normal[0] == ("sep_conv_3x3", 0) and a.normal_concat == (2, 3, 4, 5)
    assert a.steps == 4
    assert a != g.DARTS_V1
    with pytest.raises(AttributeError):
        a.normal = ()  # frozen


@pytest.mark.parametrize("normal, match", [
    ([("sep_conv_7x7", 0)] + [("skip_connect", 1)] * 7, r"unknown op 'sep_conv_7x7'.*valid ops: none,"),
    ([("skip_connect", 2)] + [("skip_connect", 1)] * 7, r"node 0\) has input index 2"),
    ([("skip_connect", -1)] + [("skip_connect", 1)] * 7, r"input index -1"),
    ([("skip_connect", True)] + [("skip_connect", 1)] * 7, r"must be an integer"),
    ([("skip_connect", 0)] * 7, r"normal has 7 edges"),
    ([], r"normal has 0 edges"),
    ([("skip_connect",)] * 8, r"must be a pair"),
])
def test_invalid_genotype_raises_one_line_error(normal, match):
    with pytest.raises(g.GenotypeError, match=match) as info:
        g.Genotype(normal, [2, 3, 4, 5], g.DARTS_V2.reduce, [2, 3, 4, 5])
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("concat, match", [
    ([2, 3, 4, 6], r"index 6"), ([1, 2], r"index 1"), ([], r"empty"), ([2, 2], r"repeats")])
def test_invalid_concat(concat, match):
    with pytest.raises(g.GenotypeError, match=match):
        g.Genotype(g.DARTS_V2.normal, concat, g.DARTS_V2.reduce, [2, 3, 4, 5])


# ---------------------------------------------------------------------------------- JSON file

def test_json_round_trip_and_format():
    text = g.DARTS_V2.to_json()
    data = json.loads(text)
    assert data["format_version"] == g.FORMAT_VERSION
    assert data["normal"][0] == ["sep_conv_3x3", 0]
    assert g.Genotype.from_json(text) == g.DARTS_V2
    for genotype in g.GENOTYPES.values():
        assert g.Genotype.from_dict(genotype.to_dict()) == genotype


def test_save_load_round_trip(tmp_path):
    path = tmp_path / "sub" / "genotype.json"
    assert g.PC_DARTS.save(path) == str(path)
    assert g.Genotype.load(path) == g.PC_DARTS
    g.DARTS_V1.save(path)  # overwrites
    assert g.Genotype.load(str(path)) == g.DARTS_V1
    assert os.listdir(tmp_path / "sub") == ["genotype.json"]  # no temp files left


def test_failed_save_keeps_the_earlier_file(tmp_path, monkeypatch):
    path = tmp_path / "genotype.json"
    g.DARTS_V2.save(path)

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(g.os, "replace", crash)
    with pytest.raises(OSError):
        g.PC_DARTS.save(path)
    monkeypatch.undo()
    assert g.Genotype.load(path) == g.DARTS_V2
    assert os.listdir(tmp_path) == ["genotype.json"]


def _write(tmp_path, text):
    path = tmp_path / "genotype.json"
    path.write_text(text)
    return path


def _good():
    return g.DARTS_V2.to_dict()


@pytest.mark.parametrize("make, match", [
    (lambda: '{"format_version": 1, "normal": [', r"not valid JSON"),
    (lambda: "", r"not valid JSON"),
    (lambda: "[1, 2]", r"expected a JSON object"),
    (lambda: json.dumps({k: v for k, v in _good().items() if k != "reduce"}),
     r"missing field\(s\) 'reduce'"),
    (lambda: json.dumps({k: v for k, v in _good().items() if k != "format_version"}),
     r"missing field 'format_version'"),
    (lambda: json.dumps(dict(_good(), format_version=99)),
     r"format_version 99 is newer .* upgrade il_tf"),
    (lambda: json.dumps(dict(_good(), format_version="1")), r"positive integer"),
    (lambda: json.dumps(dict(_good(), normals=[])), r"unknown field\(s\) 'normals'"),
    (lambda: json.dumps(dict(_good(), normal=[["conv_9x9", 0]] + _good()["normal"][1:])),
     r"unknown op 'conv_9x9'; valid ops: none, max_pool_3x3"),
    (lambda: json.dumps(dict(_good(), reduce=[["skip_connect", 5]] + _good()["reduce"][1:])),
     r"reduce edge 0 \(node 0\) has input index 5"),
    (lambda: json.dumps(dict(_good(), normal=_good()["normal"][:6])),
     r"normal has 6 edges but reduce has 8"),
    (lambda: json.dumps(dict(_good(), normal_concat=[2, 3, 4, 5, 6])),
     r"normal_concat has index 6; with 4 intermediate nodes \(8 edges\)"),
])
def test_bad_file_errors_name_the_file_in_one_line(tmp_path, make, match):
    path = _write(tmp_path, make())
    with pytest.raises(g.GenotypeError, match=match) as info:
        g.Genotype.load(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_unreadable_file(tmp_path):
    with pytest.raises(g.GenotypeError, match="cannot read genotype file"):
        g.Genotype.load(tmp_path / "missing.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(g.GenotypeError, match="not valid JSON"):
        g.Genotype.load(tmp_path / "bin.json")


def test_older_format_versions_are_upgraded(monkeypatch):
    # Pretend the format is at version 2, which renamed nothing but added a default field
    # step; a version-1 file must still load through the upgrade chain.
    calls = []

    def upgrade_1_to_2(data):
        calls.append(data["format_version"])
        return data

    monkeypatch.setattr(g, "FORMAT_VERSION", 2)
    monkeypatch.setitem(g._UPGRADES, 1, upgrade_1_to_2)
    old = dict(g.DARTS_V2.to_dict(), format_version=1)
    assert g.Genotype.from_dict(old) == g.DARTS_V2
    assert calls == [1]


# ---------------------------------------------------------------------------------- derivation

def _alphas(choices, default=0.0):
    """Alphas (14, 8) with `choices[(node, input)] = {op: value}`, everything else `default`."""
    a = np.full((14, len(PRIMITIVES)), default)
    for edge, ops in choices.items():
        for op, value in ops.items():
            a[ROW[edge], OP[op]] = value
    return a


def test_derive_from_hand_made_alphas_ignores_none():
    normal = _alphas({
        (0, 0): {"sep_conv_3x3": 3.0},
        (0, 1): {"skip_connect": 2.0},
        # Node 1: `none` is by far the strongest op on edge from input 2, yet that edge still
        # competes with (and here wins by) its best non-none op, dil_conv_5x5.
        (1, 2): {"none": 9.0, "dil_conv_5x5": 4.0},
        (1, 0): {"max_pool_3x3": 1.0},
        (1, 1): {"avg_pool_3x3": 0.5},
        (2, 3): {"sep_conv_5x5": 2.0},
        (2, 1): {"dil_conv_3x3": 1.5},
        (3, 4): {"skip_connect": 2.0},
        (3, 0): {"sep_conv_3x3": 1.8},
        (3, 2): {"none": 50.0},  # Strong `none` alone does not make an edge strong.
    })
    reduce = _alphas({(node, 1): {"max_pool_3x3": 2.0} for node in range(4)})
    reduce[ROW[(1, 2)], OP["avg_pool_3x3"]] = 3.0
    genotype = g.derive_genotype(normal, reduce)
    assert genotype.normal == (
        ("sep_conv_3x3", 0), ("skip_connect", 1),
        ("max_pool_3x3", 0), ("avg_pool_3x3", 1),  # Softmax: none=9 crushes dil_conv_5x5's weight.
        ("sep_conv_5x5", 3), ("dil_conv_3x3", 1),
        ("skip_connect", 4), ("sep_conv_3x3", 0),
    )
    # Strongest edge first; the second edge is a tie among the zero rows -> lowest input.
    assert genotype.reduce == (
        ("max_pool_3x3", 1), ("max_pool_3x3", 0),
        ("avg_pool_3x3", 2), ("max_pool_3x3", 1),
        ("max_pool_3x3", 1), ("max_pool_3x3", 0),
        ("max_pool_3x3", 1), ("max_pool_3x3", 0),
    )
    assert genotype.normal_concat == genotype.reduce_concat == (2, 3, 4, 5)
    assert all(op != "none" for op, _ in genotype.normal + genotype.reduce)


def test_none_strongest_on_an_edge_is_ranked_by_softmax_weight():
    # The rule ranks softmax weights, not raw alphas: a huge `none` on an edge shrinks that
    # edge's other weights, so an edge whose raw best op is larger can still lose.
    normal = _alphas({(0, 0): {"none": 5.0, "sep_conv_3x3": 2.0},
                      (0, 1): {"skip_connect": 1.0}})
    genotype = g.derive_genotype(normal, np.zeros((14, 8)))
    assert genotype.normal[:2] == (("skip_connect", 1), ("sep_conv_3x3", 0))
    # An edge whose only strong op is `none` keeps almost no weight for the others: it loses
    # to a flat edge, and is then labelled with its best non-none op.
    normal = _alphas({(0, 0): {"none": 5.0, "dil_conv_3x3": 0.1}})
    genotype = g.derive_genotype(normal, np.zeros((14, 8)))
    assert genotype.normal[:2] == (("max_pool_3x3", 1), ("dil_conv_3x3", 0))


def test_all_zero_alphas_break_ties_like_darts():
    genotype = g.derive_genotype(np.zeros((14, 8)), np.zeros((14, 8)))
    first_op = PRIMITIVES[1]  # the first non-none op
    assert genotype.normal == tuple((first_op, i) for _ in range(4) for i in (0, 1))


@pytest.mark.parametrize("seed", range(20))
def test_derive_matches_darts_parse(seed):
    rng = np.random.default_rng(seed)
    # Small integers make ties between edges and ops common; 1e-3 * N(0, 1) is DARTS's init.
    if seed % 2:
        alphas = [rng.integers(0, 3, (14, 8)).astype(float) for _ in range(2)]
    else:
        alphas = [1e-3 * rng.standard_normal((14, 8)) for _ in range(2)]
    genotype = g.derive_genotype(*alphas)
    assert list(genotype.normal) == _reference_parse(_softmax(alphas[0]))
    assert list(genotype.reduce) == _reference_parse(_softmax(alphas[1]))


@pytest.mark.parametrize("seed", range(10))
def test_derive_with_pc_darts_betas_matches_reference(seed):
    rng = np.random.default_rng(100 + seed)
    alphas = [rng.standard_normal((14, 8)) for _ in range(2)]
    betas = [rng.standard_normal(14) for _ in range(2)]
    genotype = g.derive_genotype(*alphas, betas_normal=betas[0], betas_reduce=betas[1])
    for cell, a, b in ((genotype.normal, alphas[0], betas[0]), (genotype.reduce, alphas[1], betas[1])):
        w2 = np.concatenate([_softmax(b[s:s + n]) for s, n in ((0, 2), (2, 3), (5, 4), (9, 5))])
        assert list(cell) == _reference_parse(_softmax(a) * w2[:, None])


def test_betas_change_which_edges_are_kept():
    normal = _alphas({(0, 0): {"sep_conv_3x3": 1.0}, (0, 1): {"skip_connect": 1.2}})
    plain = g.derive_genotype(normal, np.zeros((14, 8)))
    assert plain.normal[:2] == (("skip_connect", 1), ("sep_conv_3x3", 0))
    betas = np.zeros(14)
    betas[ROW[(0, 0)]] = 3.0  # edge normalisation strongly prefers input 0 of node 0
    with_betas = g.derive_genotype(normal, np.zeros((14, 8)), betas_normal=betas)
    assert with_betas.normal[:2] == (("sep_conv_3x3", 0), ("skip_connect", 1))


def test_derive_other_steps_and_multiplier():
    genotype = g.derive_genotype(np.zeros((5, 8)), np.zeros((5, 8)), steps=2, multiplier=1)
    assert genotype.steps == 2 and genotype.normal_concat == (3,)


@pytest.mark.parametrize("kwargs, match", [
    (dict(alphas_normal=np.zeros((14, 7))), r"alphas_normal has shape \(14, 7\), expected \(14, 8\)"),
    (dict(alphas_reduce=np.full((14, 8), np.nan)), r"alphas_reduce contains NaN"),
    (dict(betas_reduce=np.zeros(13)), r"betas_reduce has shape \(13,\), expected \(14,\)"),
    (dict(multiplier=5), r"multiplier"),
])
def test_derive_rejects_bad_inputs(kwargs, match):
    args = dict(alphas_normal=np.zeros((14, 8)), alphas_reduce=np.zeros((14, 8)))
    args.update(kwargs)
    with pytest.raises(g.GenotypeError, match=match):
        g.derive_genotype(**args)


# ---------------------------------------------------------------------------------- registry

def test_published_darts_v2_is_the_papers_cell():
    # DARTS (Liu et al. 2019), Fig. 4/5 and quark0/darts cnn/genotypes.py.
    v2 = g.get_genotype("DARTS_V2")
    assert v2.normal == (
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2))
    assert v2.reduce == (
        ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
        ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1))
    assert v2.normal_concat == v2.reduce_concat == (2, 3, 4, 5)
    assert g.get_genotype("DARTS") == v2


def test_registry_has_the_required_genotypes():
    for name in ("DARTS_V1", "DARTS_V2", "PC_DARTS", "PDARTS"):
        assert isinstance(g.GENOTYPES[name], g.Genotype)
        assert g.GENOTYPES[name].steps == 4
    assert g.PC_DARTS.normal[0] == ("sep_conv_3x3", 1)
    assert g.PC_DARTS.reduce[-1] == ("sep_conv_3x3", 2)
    with pytest.raises(TypeError):
        g.GENOTYPES["MINE"] = g.DARTS_V2  # read-only


@pytest.mark.parametrize("name", ["darts_v2", "Darts_V2", " DARTS_V2 ", "pc-darts", "pdarts"])
def test_get_genotype_by_name_is_case_insensitive(name):
    assert g.get_genotype(name) is g.GENOTYPES[name.strip().upper().replace("-", "_")]


def test_get_genotype_by_path_and_dir(tmp_path):
    path = g.PDARTS.save(tmp_path / "genotype.json")
    assert g.get_genotype(path) == g.PDARTS
    assert g.get_genotype(tmp_path) == g.PDARTS  # a run directory
    assert g.get_genotype(g.DARTS_V1) is g.DARTS_V1


def test_get_genotype_unknown_lists_names(tmp_path):
    with pytest.raises(g.GenotypeError, match=r"'nope' is neither a known genotype "
                                              r"\(DARTS_V1, DARTS_V2, .*PC_DARTS.*\)"):
        g.get_genotype("nope")
    bad = _write(tmp_path, "{")
    with pytest.raises(g.GenotypeError, match="not valid JSON"):
        g.get_genotype(str(bad))
