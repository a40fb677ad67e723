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
        config.parse(["darts.gin"], imports=["il_tf.learning.search"])
        assert gin.query_parameter("il_tf.search.channels") == 16  # from cifar10.gin
        assert gin.query_parameter("il_tf.learning.InterleavingOptimizer.arch_lr") == 3e-4
        # Parsing again adds no directory twice to gin's search path.
        config.parse(["darts.gin"], imports=["il_tf.learning.search"])
    finally:
        gin.clear_config()
    gin_lines = [r for r in caplog.records if r.pathname.endswith("resource_reader.py")]
    assert not gin_lines, [r.getMessage() for r in gin_lines]
    # Outside `parse`, gin's logging is untouched.
    logging.getLogger().error("Path not found: after parse")
    assert any(r.getMessage() == "Path not found: after parse" for r in caplog.records)
