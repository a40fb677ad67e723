"""Tests for il_tf.visualize and tools/visualize.py: cell pictures are written and readable."""
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
