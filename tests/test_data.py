"""Tests of il_tf.data: pipelines, search splits, tasks, the shipped dataset, errors.

Fast on 2 CPU cores: the shipped digits dataset is built once into a temp data_dir, tfds
datasets that would download are replaced by `tfds.testing.mock_data`, and the 2-replica
check runs in a subprocess that configures two logical CPUs before TensorFlow starts.
"""
import hashlib
import math
import os
import subprocess
import sys
import textwrap
import time

import il_tf  # pylint: disable=unused-import  # quiet TensorFlow import
import gin
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from il_tf import data
from il_tf.data import digits
from il_tf.data import preprocessing
from il_tf.data import tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# sha256 over the digits examples (id, label, pixels) in id order, train then test.
DIGITS_SHA256 = "9c34712c02629a277a343f6435a6d09701862d18d49f6fcda9b99d4c5a402a5e"


@pytest.fixture(autouse=True)
def clear_gin():
    yield
    gin.clear_config()


def _bounds(task):
    mean, std = (np.array(v) for v in task.normalization)
    return (0 - mean) / std, (1 - mean) / std


def _check_batch(task, images, labels, batch_size):
    assert images.shape == (batch_size,) + task.image_shape
    assert images.dtype == tf.float32 and labels.dtype == tf.int32
    low, high = _bounds(task)
    x = images.numpy()
    assert np.all(x >= low - 1e-5) and np.all(x <= high + 1e-5)
    assert np.all((labels.numpy() >= 0) & (labels.numpy() < task.num_classes))


def test_digits_builds_from_scratch(data_dir):
    builder = tfds.builder("sklearn_digits", data_dir=data_dir)
    assert builder.version == "1.0.0"
    assert os.path.isdir(os.path.join(data_dir, "sklearn_digits", "1.0.0"))
    assert builder.info.splits["train"].num_examples == digits.NUM_TRAIN
    assert builder.info.splits["test"].num_examples == 1797 - digits.NUM_TRAIN
    assert builder.info.features["image"].shape == (8, 8, 1)
    images = np.stack([x for x, _ in tfds.as_numpy(
        builder.as_dataset(split="train", as_supervised=True))]) / 255.0
    np.testing.assert_allclose(images.mean(), digits.MEAN[0], atol=1e-6)
    np.testing.assert_allclose(images.std(), digits.STD[0], atol=1e-6)


def test_digits_build_from_the_shipped_file_without_scikit_learn(tmp_path, monkeypatch):
    # The images ship in il_tf (digits.npz): scikit-learn, even where it is installed, is
    # not needed (importing it fails here). The examples are exactly those that
    # scikit-learn's copy gave (`load_digits()`, pixels round(v * 255 / 16)): the digest
    # below was taken from it.
    monkeypatch.setitem(sys.modules, "sklearn", None)
    builder = tfds.builder("sklearn_digits", data_dir=str(tmp_path))
    builder.download_and_prepare()
    digest = hashlib.sha256()
    for split in ("train", "test"):
        examples = sorted((e["id"], e["label"], e["image"].tobytes()) for e in
                          tfds.as_numpy(builder.as_dataset(split=split)))
        for key, label, image in examples:
            digest.update(key + bytes([label]) + image)
    assert digest.hexdigest() == DIGITS_SHA256


def test_digits_tasks_shapes_dtypes_ranges(data_dir):
    for name, num_classes in [("digits", 10), ("digits_low", 5), ("digits_high", 5)]:
        task = data.get_task(name, data_dir=data_dir)
        assert task.num_classes == num_classes and task.image_shape == (8, 8, 3)
        assert len(task.class_names) == num_classes
        images, labels = next(iter(task.dataset("search_train", 32, training=True)))
        _check_batch(task, images, labels, 32)
        assert np.allclose(images[..., 0], images[..., 2])  # Grayscale replicated.
    low = data.get_task("digits_low", data_dir=data_dir)
    high = data.get_task("digits_high", data_dir=data_dir)
    assert set(low.class_names).isdisjoint(high.class_names)
    total = data.get_task("digits", data_dir=data_dir).num_examples("train")
    assert low.num_examples("train") + high.num_examples("train") == total
    big = tasks.digits_task(image_size=16, data_dir=data_dir)
    images, _ = next(iter(big.dataset("train", 4, training=True)))
    assert images.shape == (4, 16, 16, 3)


def test_class_subset_counts_are_the_examples_streamed(data_dir):
    """`num_examples` of a class subset (counted once per split for all the dataset's tasks)
    is the number of examples the task's own stream yields, for every role."""
    for name in ("digits_low", "digits_high", "digits_low"):
        task = data.get_task(name, data_dir=data_dir)
        for role in data.ROLES:
            streamed = sum(int(len(y)) for _, y in task.dataset(role, 512, training=False))
            assert task.num_examples(role) == streamed, (name, role)


def _ids(task, role):
    builder = task.source.builder
    split = task.splits[role]
    return [x["id"] for x in tfds.as_numpy(builder.as_dataset(split=split))]


def test_search_splits_disjoint_and_cover_train(data_dir):
    task = data.get_task("digits", data_dir=data_dir)
    search_train, search_val = _ids(task, "search_train"), _ids(task, "search_val")
    train, test = set(_ids(task, "train")), set(_ids(task, "test"))
    assert set(search_train).isdisjoint(search_val)
    assert set(search_train) | set(search_val) == train
    assert len(search_train) + len(search_val) == len(train) == task.num_examples("train")
    assert task.num_examples("search_train") == len(search_train) == 750
    assert train.isdisjoint(test)
    assert data.DEFAULT_SPLITS["search_train"] == "train[:50%]"
    assert data.DEFAULT_SPLITS["search_val"] == "train[50%:]"
    for splits in (tasks.DEFAULT_SPLITS, tasks.HOLDOUT_SPLITS):  # search never reads test
        assert "test" not in splits["search_train"] + splits["search_val"]


def test_seeded_stream_is_deterministic(data_dir):
    task = data.get_task("digits", data_dir=data_dir)

    def batches(seed):
        stream = task.dataset("search_train", 16, training=True, seed=seed, cutout=4)
        return [(x.numpy(), y.numpy()) for x, y in stream.take(3)]

    first, again, other = batches(3), batches(3), batches(4)
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def test_streams_of_a_one_file_split_read_it_once_and_equal_fresh_reads(data_dir):
    """Every training stream of a one-file split reads one memory-cached dataset per task
    (Task._one_order); its batches are those of a task that reads the file every time."""
    task = data.get_task("digits_low", data_dir=data_dir)
    fresh = data.get_task("digits_low", data_dir=data_dir)
    fresh.cache = False

    def batches(t, seed):
        stream = t.dataset("search_train", 16, training=True, seed=seed, skip_batches=2)
        return [(x.numpy(), y.numpy()) for x, y in stream.take(3)]

    for seed in (1, 2, 1):
        for (x1, y1), (x2, y2) in zip(batches(task, seed), batches(fresh, seed)):
            np.testing.assert_array_equal(x1, x2)
            np.testing.assert_array_equal(y1, y2)
    assert list(task._memory) == [task.splits["search_train"]]  # pylint: disable=protected-access
    assert not fresh._memory  # pylint: disable=protected-access


def test_training_stream_is_endless_and_eval_stream_is_one_pass(data_dir):
    task = data.get_task("digits_low", data_dir=data_dir)
    n = task.num_examples("search_val")
    batch = 64
    epochs = 2 * math.ceil(n / batch) + 1
    count = sum(1 for _ in task.dataset("search_val", batch, training=True).take(epochs))
    assert count == epochs  # Past two epochs without running out, full batches only.
    evaluation = list(task.dataset("test", batch, training=False))
    sizes = [int(y.shape[0]) for _, y in evaluation]
    n_test = task.num_examples("test")
    assert sum(sizes) == n_test and len(sizes) == math.ceil(n_test / batch)
    again = list(task.dataset("test", batch, training=False))
    for (x1, _), (x2, _) in zip(evaluation, again):  # In order, unaugmented.
        np.testing.assert_array_equal(x1.numpy(), x2.numpy())


def test_ending_an_epochs_streams_does_not_wait_for_the_autotuner(data_dir):
    """Each epoch drops its streams. With tf.data's autotuning model on, destroying a read
    iterator waited for the model thread's current period (2-44 s measured, in about half of
    the epochs): the streams run without it (`tasks._stream_options`)."""
    task = data.get_task("digits_low", data_dir=data_dir)
    for training in (True, False):
        options = task.dataset("search_val", 16, training=training).options()
        assert options.autotune.enabled is False
    waits = []
    for epoch in range(3):
        streams = [iter(task.dataset(role, 16, training=True, seed=epoch))
                   for role in ("search_train", "search_val") for _ in range(2)]
        for _ in range(8):
            for stream in streams:
                next(stream)
        time.sleep(2.0)  # The autotuner's period grows while the streams idle (an evaluation).
        start = time.perf_counter()
        del streams
        waits.append(time.perf_counter() - start)
    assert max(waits) < 1.0, waits  # Milliseconds; with the autotuner 2.0 s or more.


def test_cutout_zeroes_a_clipped_square():
    image = tf.ones((32, 32, 3))
    out = preprocessing.cutout(image, 16, tf.constant([1, 2], tf.int64)).numpy()
    zeros = (out[..., 0] == 0).sum()
    assert 64 <= zeros <= 256 and np.all(out[..., 0] == out[..., 2])
    assert preprocessing.cutout(image, 0, tf.constant([1, 2])) is image


def test_mock_cifar_and_generic_tfds_tasks():
    with tfds.testing.mock_data(num_examples=12):
        for name, num_classes in [("cifar10", 10), ("cifar100", 100)]:
            task = data.get_task(name)
            assert task.num_classes == num_classes and task.image_shape == (32, 32, 3)
            for role in data.ROLES:
                assert task.num_examples(role) == 12  # mock data: every split has 12
            images, labels = next(iter(task.dataset("search_train", 8, training=True, cutout=16)))
            _check_batch(task, images, labels, 8)
            images, labels = list(task.dataset("test", 8, training=False))[-1]
            assert images.shape == (4, 32, 32, 3)
        # A grayscale 28x28 tfds dataset by name: RGB, resized, stats estimated from data.
        mnist = data.get_task("mnist", image_size=16, classes=[3, 4, 5])
        assert mnist.num_classes == 3 and mnist.class_names == ("3", "4", "5")
        images, labels = next(iter(mnist.dataset("train", 2, training=True)))
        assert images.shape == (2, 16, 16, 3) and len(mnist.normalization[0]) == 3
        assert np.all(labels.numpy() < 3)


def test_mock_imagenet_task():
    with tfds.testing.mock_data(num_examples=4):
        task = data.get_task("imagenet2012")
        assert task.num_classes == 1000 and task.image_shape == (224, 224, 3)
        assert task.splits["test"] == "validation"
        images, labels = next(iter(task.dataset("train", 2, training=True)))
        _check_batch(task, images, labels, 2)
        images, _ = next(iter(task.dataset("test", 4, training=False)))
        assert images.shape == (4, 224, 224, 3)


def _write_images(root, classes, per_class, rng):
    for label in classes:
        os.makedirs(os.path.join(root, label))
        for i in range(per_class):
            size = rng.integers(12, 40, size=2)
            pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            path = os.path.join(root, label, f"{i}.png")
            tf.io.write_file(path, tf.io.encode_png(pixels))


def test_folder_tasks(tmp_path):
    rng = np.random.default_rng(0)
    flat = tmp_path / "flat"
    _write_images(str(flat), ["cat", "dog", "emu"], 10, rng)
    task = tasks.folder_task(str(flat), image_size=16)
    assert task.num_classes == 3 and task.class_names == ("cat", "dog", "emu")
    assert task.splits == tasks.HOLDOUT_SPLITS
    assert task.num_examples("search_train") + task.num_examples("search_val") == 24
    assert task.num_examples("test") == 6
    images, labels = next(iter(task.dataset("search_train", 4, training=True)))
    _check_batch(task, images, labels, 4)

    split = tmp_path / "split"
    _write_images(str(split / "train"), ["a", "b"], 6, rng)
    _write_images(str(split / "test"), ["a", "b"], 2, rng)
    gin.parse_config(f"il_tf.data.folder_task.root_dir = '{split}'\n"
                     "il_tf.data.folder_task.classes = ['b']")
    task = tasks.folder_task()
    assert task.num_classes == 1 and task.num_examples("train") == 6
    assert task.num_examples("test") == 2
    assert task.num_examples("search_train") + task.num_examples("search_val") == 6
    images, labels = next(iter(task.dataset("test", 8, training=False)))
    assert images.shape == (2, 32, 32, 3) and np.all(labels.numpy() == 0)


def test_gin_chooses_tasks(data_dir):
    gin.parse_config(textwrap.dedent(f"""
        il_tf.data.tfds_config.data_dir = '{data_dir}'
        low/il_tf.data.task.name = 'digits_low'
        high/il_tf.data.task.name = 'digits_high'
        il_tf.data.digits_task.image_size = 16
    """))
    chosen = []
    for scope in ("low", "high"):
        with gin.config_scope(scope):
            chosen.append(data.get_task())
    assert [t.name for t in chosen] == ["digits_low", "digits_high"]
    assert all(t.image_shape == (16, 16, 3) for t in chosen)
    assert chosen[0].source.builder.data_dir.startswith(data_dir)


def test_unprepared_dataset_stops_with_one_line(tmp_path):
    empty = str(tmp_path / "empty")
    gin.parse_config(f"il_tf.data.tfds_config.download = False")
    task = data.get_task("cifar10", data_dir=empty)
    with pytest.raises(data.DatasetUnavailableError) as error:
        task.dataset("search_train", 8, training=True)
    message = str(error.value)
    assert "\n" not in message and message.startswith("cifar10: ")
    assert empty in message and "tfds build cifar10" in message
    with pytest.raises(data.DatasetUnavailableError) as error:
        data.get_task("imagenet2012", data_dir=empty).num_examples("train")
    message = str(error.value)
    assert "\n" not in message and "ILSVRC2012_img_train.tar" in message and empty in message
    gin.parse_config("il_tf.data.folder_task.root_dir = '/nonexistent/images'")
    with pytest.raises(data.DatasetUnavailableError) as error:
        tasks.folder_task()  # Raised inside a gin configurable: still one line.
    assert "\n" not in str(error.value) and "/nonexistent/images" in str(error.value)


def _global_batches(task, steps, skip):
    one = iter(task.dataset("search_train", 16, training=True, seed=1, skip_batches=skip))
    return [tuple(t.numpy() for t in next(one)) for _ in range(steps)]


def test_pipelines_split_the_one_device_stream_by_replica(data_dir):
    """Two workers' input pipelines with two replicas each: replica r of a step gets the r-th
    quarter of the batch one device would read, past a reshuffle and after a resume's skip."""
    task = data.get_task("digits_low", data_dir=data_dir)  # 361 examples: 23 steps an epoch
    steps, skip = 30, 3
    expected = _global_batches(task, steps, skip)
    pipelines = [iter(task.dataset(
        "search_train", 4, training=True, seed=1, skip_batches=skip,
        input_context=tf.distribute.InputContext(2, pipeline, 4))) for pipeline in range(2)]
    for images, labels in expected:
        quarters = [next(pipelines[r // 2]) for r in range(4)]  # Replicas 0, 1 | 2, 3.
        np.testing.assert_array_equal(np.concatenate([x.numpy() for x, _ in quarters]), images)
        np.testing.assert_array_equal(np.concatenate([y.numpy() for _, y in quarters]), labels)


_REPLICA_SCRIPT = """
import sys
import numpy as np
from il_tf import data
from il_tf import distribute
strategy = distribute.get_strategy("mirrored", logical_cpus=2)
task = data.get_task("digits_low", data_dir=sys.argv[1])
one = iter(task.dataset("search_train", 16, training=True, seed=1, skip_batches=3))
two = iter(data.distribute_dataset(strategy, task, "search_train", 16, training=True, seed=1,
                                   skip_batches=3))
for step in range(30):  # Past the first epoch's end (23 steps).
    images, labels = next(one)
    halves = strategy.experimental_local_results(next(two)[0])
    assert [tuple(x.shape) for x in halves] == [(8, 8, 8, 3)] * 2, halves
    np.testing.assert_array_equal(np.concatenate([x.numpy() for x in halves]), images.numpy())
print("train ok")
sizes = []
for images, labels in data.distribute_dataset(strategy, task, "test", 64, training=False):
    sizes.append(sum(int(y.shape[0]) for y in strategy.experimental_local_results(labels)))
print("test", sum(sizes), task.num_examples("test"), strategy.num_replicas_in_sync)
"""


def test_two_logical_cpus_split_the_one_device_stream(data_dir):
    result = subprocess.run(
        [sys.executable, "-c", _REPLICA_SCRIPT, data_dir],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert lines["train"] == "ok"
    seen, total, replicas = lines["test"].split()
    assert seen == total and replicas == "2"


def test_training_iterator_resumes_from_a_checkpoint(data_dir, tmp_path):
    task = data.get_task("digits_low", data_dir=data_dir)
    iterator = iter(task.dataset("search_train", 16, training=True, seed=1))
    for _ in range(30):  # Past the first epoch (361 examples), into the reshuffled second.
        next(iterator)
    path = tf.train.Checkpoint(iterator=iterator).write(str(tmp_path / "it"))
    expected = [next(iterator) for _ in range(3)]
    restored = iter(task.dataset("search_train", 16, training=True, seed=1))
    tf.train.Checkpoint(iterator=restored).read(path).assert_consumed()
    for (x1, y1), (x2, y2) in zip(expected, (next(restored) for _ in range(3))):
        np.testing.assert_array_equal(x1.numpy(), x2.numpy())
        np.testing.assert_array_equal(y1.numpy(), y2.numpy())
