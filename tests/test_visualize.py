"""Tests for il_tf.visualize and tools/visualize.py: cell pictures are written and readable."""
import json
import os
import pathlib
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from il_tf import visualize
from il_tf.search_space import genotypes

_REPO = pathlib.Path(__file__).resolve().parents[1]
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_pictures(paths, out_dir):
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["normal.png", "normal.svg", "reduce.png", "reduce.svg"]
    for path in paths:
        assert os.path.dirname(os.path.abspath(path)) == os.path.abspath(out_dir)
        data = pathlib.Path(path).read_bytes()
        assert len(data) > 5000, path
        if path.endswith(".png"):
            assert data.startswith(_PNG_MAGIC)
        else:
            root = ET.fromstring(data)
            assert root.tag.endswith("svg")
    assert not [f for f in os.listdir(out_dir) if f.startswith(".")]  # no temp files left


def test_draw_genotype_writes_png_and_svg_with_every_op_label(tmp_path):
    out = tmp_path / "cells"
    paths = visualize.draw_genotype("DARTS_V2", out)
    _check_pictures(paths, out)
    # Text stays text in the SVG: every edge's op, and the title, can be found in it.
    svg = (out / "normal.svg").read_text()
    assert svg.count(">sep_conv_3x3<") == 5 and svg.count(">skip_connect<") == 2
    assert "dil_conv_3x3" in svg and "DARTS_V2" in svg
    reduce_svg = (out / "reduce.svg").read_text()
    assert reduce_svg.count(">max_pool_3x3<") == 5 and "stride 2" in reduce_svg


def test_cell_figure_of_a_derived_genotype_keeps_labels_apart():
    rng = np.random.default_rng(0)
    genotype = genotypes.derive_genotype(rng.normal(size=(14, 8)), rng.normal(size=(14, 8)))
    fig = visualize.cell_figure(genotype, "reduce", title="random")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ops = {op for op, _ in genotype.reduce}
    boxes = [t.get_bbox_patch().get_window_extent(renderer)
             for t in fig.axes[0].texts if t.get_text() in ops]
    assert len(boxes) == 8
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b)


def test_bad_inputs():
    with pytest.raises(genotypes.GenotypeError, match="neither a known genotype"):
        visualize.draw_genotype("NOT_A_GENOTYPE", "/nonexistent-dir-never-created")
    with pytest.raises(ValueError, match="unsupported picture format"):
        visualize.draw_genotype("DARTS_V2", "/nonexistent-dir-never-created", formats=["bmpx"])
    with pytest.raises(ValueError, match="cell must be one of"):
        visualize.cell_figure("DARTS_V2", "other")
    assert not os.path.exists("/nonexistent-dir-never-created")


def _tool(*args, cwd):
    return subprocess.run([sys.executable, str(_REPO / "tools" / "visualize.py"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=240, check=False)


def test_tool_writes_pictures_and_reports_bad_genotype_in_one_line(tmp_path):
    genotype_json = genotypes.PC_DARTS.save(tmp_path / "run" / "genotype.json")
    out = tmp_path / "pictures"
    result = _tool(f"--genotype={genotype_json}", f"--out={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    paths = result.stdout.split()
    _check_pictures(paths, out)

    (tmp_path / "bad.json").write_text('{"format_version": 1, "normal": [["conv_9x9", 0]]}')
    result = _tool("--genotype=bad.json", f"--out={out}", cwd=tmp_path)
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(error_lines) == 1 and "Traceback" not in result.stderr
    assert "missing field(s) 'normal_concat'" in error_lines[0]


# ------------------------------------------------------------------------ the alphas' course

def _records(epochs=6, favourite=4, steps=4):
    """Records as a search writes them: raw alphas that move every edge towards one op, an
    epoch-0 line before any step, and lines without alphas in between (skipped)."""
    rng = np.random.default_rng(1)
    edges = genotypes.num_edges(steps)
    start = {c: 1e-3 * rng.normal(size=(edges, 8)) for c in visualize.CELLS}
    records = []
    for epoch in range(epochs + 1):
        alphas = {}
        for cell in visualize.CELLS:
            a = start[cell].copy()
            a[:, favourite] += 0.5 * epoch
            alphas[cell] = a.tolist()
        records.append({"epoch": epoch, "iteration": 10 * epoch, "alphas": alphas})
        records.append({"epoch": epoch, "note": "a line without alphas"})
    return records


def test_alpha_course_is_the_softmax_per_epoch_and_skips_records_without_alphas():
    records = _records(epochs=6, favourite=4)
    course = visualize.alpha_course(records)
    np.testing.assert_array_equal(course.epochs, np.arange(7))
    assert course.normal.shape == course.reduce.shape == (7, 14, 8)
    for e, record in enumerate(r for r in records if "alphas" in r):
        for cell in visualize.CELLS:
            raw = np.asarray(record["alphas"][cell])
            expected = np.exp(raw) / np.exp(raw).sum(axis=1, keepdims=True)
            np.testing.assert_allclose(getattr(course, cell)[e], expected, rtol=1e-12)
    np.testing.assert_allclose(course.normal.sum(axis=-1), 1.0)
    np.testing.assert_allclose(course.normal[0], 1 / 8, atol=1e-3)  # uniform at the start
    # The favoured op (sep_conv_3x3) grows on every edge: e^3 / (e^3 + 7) at epoch 6.
    assert genotypes.PRIMITIVES[4] == "sep_conv_3x3"
    np.testing.assert_allclose(course.reduce[-1, :, 4], np.e ** 3 / (np.e ** 3 + 7), rtol=1e-2)
    assert np.all(np.diff(course.normal[:, :, 4], axis=0) > 0)


def test_alpha_course_takes_the_last_record_of_an_epoch_and_sorts_epochs():
    records = _records(epochs=2)
    later = dict(records[2], alphas={c: np.zeros((14, 8)).tolist() for c in visualize.CELLS})
    course = visualize.alpha_course([records[4], later, records[0], records[2]])
    np.testing.assert_array_equal(course.epochs, [0, 1, 2])
    assert not np.allclose(course.normal[1], 1 / 8)  # the repeated epoch 1: the last one read
    course = visualize.alpha_course([records[4], records[2], later])
    np.testing.assert_allclose(course.normal[0], 1 / 8)


def test_alpha_course_errors_are_one_line():
    with pytest.raises(visualize.AlphaCourseError, match="no record has alphas"):
        visualize.alpha_course([{"epoch": 0, "val_loss": [1.0]}])
    with pytest.raises(visualize.AlphaCourseError, match=r"shape \(14, 7\)"):
        visualize.alpha_course([{"epoch": 1, "alphas": {"normal": np.zeros((14, 7)).tolist(),
                                                        "reduce": np.zeros((14, 8)).tolist()}}])
    with pytest.raises(visualize.AlphaCourseError, match="'normal' and 'reduce'"):
        visualize.alpha_course([{"epoch": 1, "alphas": {"normal": []}}])
    with pytest.raises(visualize.AlphaCourseError, match="epoch"):
        visualize.alpha_course([{"alphas": _records(1)[0]["alphas"]}])


def _check_png_svg(paths, prefix):
    assert [os.path.basename(p) for p in paths] == [os.path.basename(prefix) + ".png",
                                                     os.path.basename(prefix) + ".svg"]
    png = pathlib.Path(paths[0]).read_bytes()
    assert png.startswith(_PNG_MAGIC) and len(png) > 20000
    svg = pathlib.Path(paths[1]).read_text()
    assert ET.fromstring(svg).tag.endswith("svg")
    return svg


def test_draw_alpha_course_writes_png_and_svg_and_replaces_them(tmp_path):
    records = _records(epochs=4)
    prefix = tmp_path / "run" / "alpha_course"
    paths = visualize.draw_alpha_course(records[:4], prefix)
    first = pathlib.Path(paths[0]).read_bytes()
    paths = visualize.draw_alpha_course(records, prefix)  # the next epoch rewrites it
    svg = _check_png_svg(paths, prefix)
    assert pathlib.Path(paths[0]).read_bytes() != first
    assert sorted(os.listdir(tmp_path / "run")) == ["alpha_course.png", "alpha_course.svg"]
    # Text stays text: the heading, every op in the legend, every edge's title.
    assert "epochs 0-4" in svg and "Normal cell" in svg and "Reduction cell" in svg
    for op in genotypes.PRIMITIVES:
        assert f">{op}<" in svg, op
    for j in range(3):  # node 3's edges from the other nodes, in both cells
        assert svg.count(f">node {j} → node 3<") == 2
    # The kept edges (derived: sep_conv_3x3 everywhere) are named in their plots.
    assert svg.count(">sep_conv_3x3<") == 1 + 2 * 8


def test_draw_alpha_course_marks_the_given_genotypes_edges(tmp_path):
    svg = _check_png_svg(visualize.draw_alpha_course(_records(2), tmp_path / "a",
                                                     genotype="DARTS_V2"), tmp_path / "a")
    assert svg.count(">max_pool_3x3<") == 1 + 5 and svg.count(">dil_conv_3x3<") == 1 + 1
    # Without a genotype argument, the last record's genotype (a search logs it every epoch).
    records = _records(2)
    records[-2]["genotype"] = genotypes.PDARTS.to_dict()
    svg = _check_png_svg(visualize.draw_alpha_course(records, tmp_path / "c"), tmp_path / "c")
    assert svg.count(">dil_conv_5x5<") == 1 + 3 and svg.count(">avg_pool_3x3<") == 1 + 1
    with pytest.raises(ValueError, match="unsupported picture format"):
        visualize.draw_alpha_course(_records(2), tmp_path / "b", formats=["bmpx"])
    assert not list(tmp_path.glob("b*"))


def test_alpha_course_image_for_tensorboard():
    image = visualize.alpha_course_image(_records(3), dpi=50)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 4
    assert 300 < image.shape[0] < 1500 and 300 < image.shape[1] < 1500
    assert image[..., 3].min() == 255  # opaque, on white
    assert len(np.unique(image[..., :3].reshape(-1, 3), axis=0)) > 20  # lines in colour


def _write_run(run_dir, records):
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def test_tool_draws_a_run_directory(tmp_path):
    run = tmp_path / "run"
    _write_run(run, _records(epochs=3))
    genotypes.PC_DARTS.save(run / "genotype.json")
    result = _tool("--model_dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    paths = [str(tmp_path / p) for p in result.stdout.split()]  # relative to the run's cwd
    _check_pictures(paths[:4], run / "cells")
    svg = _check_png_svg(paths[4:], run / "alpha_course")
    assert "run: architecture weights" in svg
    assert svg.count(">sep_conv_5x5<") == 1 + 4  # PC_DARTS's reduction cell keeps 3 + normal 1

    out = tmp_path / "pictures"
    result = _tool("--run_dir=run", f"--out={out}", "--formats=png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ["alpha_course.png", "normal.png", "reduce.png"]

    # Before its first epoch ends a search has no genotype.json: the course alone, with a note.
    (run / "genotype.json").unlink()
    result = _tool("--model_dir=run", "--out=early", "--formats=svg", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no genotype.json yet" in result.stderr
    assert os.listdir(tmp_path / "early") == ["alpha_course.svg"]


@pytest.mark.parametrize("content, message", [
    (None, "metrics.jsonl not found"),
    ("", "metrics.jsonl is empty"),
    ('{"epoch": 0, "val_loss": [1.0]}\n', "metrics.jsonl: no record has alphas"),
    ('{"epoch": 0,\n', "metrics.jsonl line 1 is not JSON"),
])
def test_tool_on_a_run_without_alphas_fails_in_one_line(tmp_path, content, message):
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "metrics.jsonl").write_text(content)
    result = _tool(f"--model_dir={run}", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert os.listdir(run) == ([] if content is None else ["metrics.jsonl"])
