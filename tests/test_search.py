"""End-to-end interleaving search on the shipped digits: outputs, learning, NaN.

Resume, signals and the run directory are tested in test_runs.py."""
import json
import os
import subprocess
import sys

import gin
import pytest

import il_tf
from il_tf.learning import search as search_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Nats: the alphas moved, not only rounded (log 8 = 2.0794 when uniform; 2.07934 at the old
# arch_lr). Measured after `run`'s 24 iterations, Eigen/oneDNN x 1/2 intra-op threads:
# normal 1.909-1.988, reduce 1.850-1.892.
MAX_ENTROPY = 2.04
TINY = dict(batch_size=16, channels=2, layers=3, max_steps_per_epoch=4, eval_batch_size=512,
            verbose=0, draw_pictures=True)


@pytest.fixture(scope="module")
def search_config(data_dir):
    gin.clear_config()
    gin.bind_parameter("il_tf.data.tfds_config.data_dir", data_dir)
    # The alphas lr of the quick search (gin_configs/search_digits.gin, 0.1, not the paper's
    # 3e-5) so that the 24 iterations of `run` visibly move them: at 3e-3 the entropy stayed
    # at 2.07934 (log 8 = 2.07944); at 0.2 it fell to 1.78/1.72 but the val losses rose.
    gin.bind_parameter("il_tf.learning.InterleavingOptimizer.arch_lr", 0.1)
    yield data_dir
    gin.clear_config()


@pytest.fixture(scope="module")
def run(search_config, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("search"))
    # Inference-mode validation (PAPER.md's model selection) needs the BN moving averages to
    # settle: 3 epochs of 8 iterations.
    record = search_lib.search(model_dir, epochs=3, **{**TINY, "max_steps_per_epoch": 8})
    return model_dir, record


def _records(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [json.loads(l) for l in f if l.strip()]


def test_writes_every_output(run):
    model_dir, _ = run
    for name in ("config.gin", "genotype.json", "genotype_best.json", "metrics.jsonl",
                 "cells/normal.png", "cells/reduce.svg", "alpha_course.png", "alpha_course.svg",
                 "checkpoints/checkpoint"):
        assert os.path.getsize(os.path.join(model_dir, name)) > 0, name
    assert any(f.startswith("events") for f in os.listdir(os.path.join(model_dir, "tensorboard")))
    assert "InterleavingOptimizer.proximity" in open(os.path.join(model_dir, "config.gin")).read()
    assert [r["epoch"] for r in _records(model_dir)] == [0, 1, 2, 3]


def test_tensorboard_shows_the_alphas_course_of_every_epoch_as_in_the_png(run):
    """One image per record (epochs 0-3); the last is the run directory's alpha_course.png."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from il_tf import visualize  # pylint: disable=g-import-not-at-top
    model_dir, _ = run
    directory = os.path.join(model_dir, "tensorboard")
    images = {}
    for name in os.listdir(directory):
        for data in tf.data.TFRecordDataset(os.path.join(directory, name)):
            event = tf.compat.v1.Event.FromString(data.numpy())
            for value in event.summary.value:
                if value.tag == "alpha_course":
                    images[event.step] = tf.io.decode_png(
                        tf.make_ndarray(value.tensor)[2], channels=4).numpy()
    steps = [r["step"] for r in _records(model_dir)]
    assert sorted(images) == steps
    with open(os.path.join(model_dir, "alpha_course.png"), "rb") as f:
        assert np.array_equal(images[steps[-1]], visualize.png_image(f.read()))
    assert not np.array_equal(images[steps[0]], images[steps[-1]])


def test_search_lowers_every_learners_val_loss_and_moves_alphas(run):
    model_dir, record = run
    first = _records(model_dir)[0]
    assert all(after < before for after, before in zip(record["val_loss"], first["val_loss"]))
    # Mean softmax entropy of each cell type's alphas (see MAX_ENTROPY).
    assert record["alpha_entropy_normal"] <= MAX_ENTROPY, record["alpha_entropy_normal"]
    assert record["alpha_entropy_reduce"] <= MAX_ENTROPY, record["alpha_entropy_reduce"]


def test_genotype_is_accepted_by_get_genotype_and_the_network(run):
    model_dir, _ = run
    genotype = il_tf.get_genotype(os.path.join(model_dir, "genotype.json"))
    assert genotype == il_tf.get_genotype(model_dir)
    net = il_tf.NetworkCIFAR(genotype, channels=4, layers=3, num_classes=5, auxiliary=False)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    assert net(tf.zeros([1, 8, 8, 3]), training=False).shape == (1, 5)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(search_config, tmp_path):
    model_dir = str(tmp_path)
    with pytest.raises(search_lib.SearchDivergedError) as error:
        search_lib.search(model_dir, epochs=2, fail_on_step=5, **{**TINY, "layers": 2})
    message = str(error.value)
    assert "\n" not in message
    assert "learner 2" in message and "weight stage" in message and "iteration 5" in message
    assert "ckpt-4" in message
    kept = il_tf.get_genotype(os.path.join(model_dir, "genotype.json"))
    assert kept is not None
    assert [r["epoch"] for r in _records(model_dir)] == [0, 1]


def test_unknown_gin_binding_fails_before_any_work(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(REPO, "tools", "search.py"),
                          f"--model_dir={tmp_path}/x", "--gin_bindings=il_tf.search.bogus = 1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "bogus" in out.stderr
    assert not os.path.exists(f"{tmp_path}/x")
