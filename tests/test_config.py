"""Gin plumbing (il_tf/config.py): shipped files and their includes from any directory."""
import logging

import gin

import il_tf  # noqa: F401  (quiet TensorFlow import)
from il_tf import config


def test_include_resolves_from_any_directory_without_logging_the_misses(tmp_path, monkeypatch,
                                                                        caplog):
    """darts.gin has `include 'cifar10.gin'`: gin finds it in gin_configs/ from a directory
    that has no such file, and its package reader's "Path not found" lines for the misses on
    the way (one INFO and one ERROR per place tried) are not logged."""
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    gin.clear_config()
    try:
        config.parse(["darts.gin"])
        assert gin.query_parameter("il_tf.search.channels") == 16  # from cifar10.gin
        assert gin.query_parameter("il_tf.learning.InterleavingOptimizer.arch_lr") == 3e-4
        # Parsing again adds no directory twice to gin's search path.
        config.parse(["darts.gin"])
    finally:
        gin.clear_config()
    gin_lines = [r for r in caplog.records if r.pathname.endswith("resource_reader.py")]
    assert not gin_lines, [r.getMessage() for r in gin_lines]
    # Outside `parse`, gin's logging is untouched.
    logging.getLogger().error("Path not found: after parse")
    assert any(r.getMessage() == "Path not found: after parse" for r in caplog.records)


def test_a_fresh_process_parses_the_config_of_a_search_then_training_process(tmp_path):
    """A notebook that ran search() and then train() leaves both operative configs in the
    training run's config.gin; every tool (here tools/evaluate.py's parse, in a process that
    imported nothing else) must read it."""
    import subprocess  # pylint: disable=g-import-not-at-top
    import sys  # pylint: disable=g-import-not-at-top
    path = tmp_path / "config.gin"
    path.write_text("il_tf.learning.InterleavingOptimizer.arch_lr = 0.1\n"
                    "il_tf.search.epochs = 3\nil_tf.training.train.epochs = 2\n")
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from il_tf import config; config.parse(sys.argv[1:])",
         str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
