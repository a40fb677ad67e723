r"""Draws the normal and reduction cells of a genotype as PNG and SVG.

  python tools/visualize.py --genotype=DARTS_V2 --out=cells/darts_v2
  python tools/visualize.py --genotype=runs/search/genotype.json --out=runs/search/cells

--genotype is a published name (DARTS_V1, DARTS_V2, PC_DARTS, PDARTS, ...; any case) or a
genotype.json written by the search. Writes normal.png, normal.svg, reduce.png and reduce.svg
into --out and prints their paths.
"""
import sys

from absl import app
from absl import flags

_GENOTYPE = flags.DEFINE_string(
    "genotype", None, "A published genotype name (e.g. DARTS_V2) or a genotype.json path.")
_OUT = flags.DEFINE_string("out", "cells", "Directory to write the pictures into.")
_FORMATS = flags.DEFINE_list("formats", ["png", "svg"], "Picture formats to write.")
flags.mark_flag_as_required("genotype")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Imported here so that --help is quick and a missing dependency is one line, not a trace.
    try:
        from il_tf import visualize  # pylint: disable=g-import-not-at-top
        paths = visualize.draw_genotype(_GENOTYPE.value, _OUT.value, formats=_FORMATS.value)
    except (ValueError, ImportError, OSError) as e:  # GenotypeError is a ValueError.
        print(f"visualize: error: {e}", file=sys.stderr)
        sys.exit(1)
    for path in paths:
        print(path)


if __name__ == "__main__":
    app.run(main)
