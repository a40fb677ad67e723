r"""Draws the cells of a genotype, and the alphas' course of a search run, as PNG and SVG.

  python tools/visualize.py --model_dir=runs/search
  python tools/visualize.py --genotype=DARTS_V2 --out=cells/darts_v2
  python tools/visualize.py --genotype=runs/search/genotype.json --out=runs/search/cells

--model_dir (alias --run_dir) is a search run directory: the cells of its genotype.json go to
<model_dir>/cells/ (normal.png, normal.svg, reduce.png, reduce.svg) and the alphas' course
drawn from its metrics.jsonl (every edge's softmax weight of each op per epoch) to
<model_dir>/alpha_course.png and .svg. With --out, everything goes into --out instead.

--genotype is a published name (DARTS_V1, DARTS_V2, PC_DARTS, PDARTS, ...; any case) or a
genotype.json; with --model_dir it replaces the run's genotype.json for the cells and the
edges marked in the course. Prints the paths written.

Unlike the other tools this one takes no --gin_file / --gin_bindings: it reads files a run
wrote and configures nothing.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=g-import-not-at-top,wrong-import-position
import _common

from absl import app
from absl import flags

from il_tf import visualize
from il_tf.search_space import genotypes
# pylint: enable=g-import-not-at-top,wrong-import-position

_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "A search run directory: draws its genotype's cells and the alphas' "
    "course from its metrics.jsonl.")
flags.DEFINE_alias("run_dir", "model_dir")
_GENOTYPE = flags.DEFINE_string(
    "genotype", None, "A published genotype name (e.g. DARTS_V2) or a genotype.json path.")
_OUT = flags.DEFINE_string(
    "out", None, "Directory to write the pictures into (default: cells/ beside the genotype "
    "of --genotype alone, else the run directory).")
_FORMATS = flags.DEFINE_list("formats", ["png", "svg"], "Picture formats to write.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    model_dir, genotype = _MODEL_DIR.value, _GENOTYPE.value
    if not model_dir and not genotype:
        raise app.UsageError("give --model_dir=<search run directory> or --genotype=<name or "
                             "genotype.json>")
    paths = []
    if model_dir:
        # Read everything before writing anything: a bad run directory leaves no half output.
        records = visualize.read_metrics(model_dir)
        try:
            visualize.alpha_course(records)
        except visualize.AlphaCourseError as e:
            raise visualize.AlphaCourseError(
                f"{os.path.join(model_dir, visualize.METRICS_FILE)}: {e}") from None
        if genotype is None and os.path.isfile(os.path.join(model_dir, "genotype.json")):
            genotype = os.path.join(model_dir, "genotype.json")
        if genotype is not None:
            genotype = genotypes.get_genotype(genotype)
            paths += visualize.draw_genotype(
                genotype, _OUT.value or os.path.join(model_dir, "cells"), formats=_FORMATS.value)
        else:
            print(f"{model_dir}: no genotype.json yet; drawing the alphas' course alone",
                  file=sys.stderr)
        prefix = os.path.join(_OUT.value or model_dir, visualize.ALPHA_COURSE)
        paths += visualize.draw_alpha_course(
            records, prefix, genotype=genotype,
            title=os.path.basename(os.path.normpath(model_dir)), formats=_FORMATS.value)
    else:
        paths += visualize.draw_genotype(genotype, _OUT.value or "cells", formats=_FORMATS.value)
    for path in paths:
        print(path)


if __name__ == "__main__":
    _common.run(main)
