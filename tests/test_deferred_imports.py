"""Keras's import of matplotlib waits for its first use (il_tf/runtime/deferred_imports.py),
and then matplotlib works as an imported one does. Checked in fresh processes: this one
imported everything long ago."""
import os
import subprocess
import sys

import pytest

_PROBE = """
import os
import sys
import il_tf
import keras
real = sorted(n for n in ("matplotlib", "matplotlib.figure", "matplotlib.pyplot")
              if type(sys.modules.get(n)).__name__ == "module")
print("loaded at import:", real)
if sys.argv[1] == "use":
    import numpy as np
    from il_tf import visualize
    visualize.draw_genotype("DARTS_V2", sys.argv[2])  # il_tf's own drawing (Agg)
    keras.visualization.plot_image_gallery(                 # Keras's, through pyplot
        np.zeros((2, 8, 8, 3), np.uint8), value_range=(0, 255), path=sys.argv[2] + "/g.png")
    import matplotlib.pyplot
    matplotlib.pyplot.figure()
    print("used:", sorted(os.listdir(sys.argv[2])))
if sys.argv[1] == "submodule":  # matplotlib modules that are not deferred, imported first
    import importlib.util
    found = importlib.util.find_spec("matplotlib.ticker")  # locating imports nothing
    assert found.origin.endswith("ticker.py") and "matplotlib.ticker" not in sys.modules
    import matplotlib.ticker  # imported by matplotlib's own __init__ on the way
    from matplotlib import ticker
    import matplotlib.scale
    assert ticker is matplotlib.ticker is sys.modules["matplotlib.ticker"]
    assert matplotlib.scale.NullFormatter is ticker.NullFormatter  # one ticker, run once
    import matplotlib.sankey  # not imported on the way
    for module in (ticker, matplotlib.sankey):
        assert type(module.__spec__.loader).__name__ == "SourceFileLoader", module
        assert module.__loader__ is module.__spec__.loader, module
    import matplotlib.pyplot  # still deferred: it hangs on the real package
    matplotlib.pyplot.figure()
    print("submodule:", ticker.MaxNLocator(4).tick_values(0, 1).tolist(),
          type(matplotlib.sankey.Sankey).__name__)
"""


def _probe(*args, **env):
    environment = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-c", _PROBE, *args],
                         env=environment, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module", autouse=True)
def installed():
    pytest.importorskip("matplotlib")


def test_importing_il_tf_and_keras_does_not_run_matplotlib():
    assert "loaded at import: []" in _probe("import")
    # Without the stand-ins Keras really imports them (what the deferral saves).
    out = _probe("import", IL_TF_DEFER_IMPORTS="0")
    assert "loaded at import: ['matplotlib', 'matplotlib.figure', 'matplotlib.pyplot']" in out


def test_deferred_modules_work_when_used(tmp_path):
    out = _probe("use", str(tmp_path))
    assert "used: ['g.png', 'normal.png', 'normal.svg', 'reduce.png', 'reduce.svg']" in out
    for name in ("g.png", "normal.png"):
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name


def test_a_submodule_imported_before_the_package_is_used_works():
    """`import il_tf` then `import matplotlib.ticker` (a notebook's next cell): the real
    package is imported first, so the submodule is not run half under the stand-in."""
    assert "submodule: [0.0, 0.25, 0.5, 0.75, 1.0] type" in _probe("submodule")
