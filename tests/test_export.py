"""Tests of the SavedModel export (il_tf.export, tools/export.py, tools/predict.py).

One tiny digits run (C=8, 3 cells, 4 steps) is trained once for the module and exported
twice with tools/export.py. The export is loaded in a fresh Python process that never
imports il_tf, as TF Serving or a client would, and must give the Keras model's
probabilities (within 1e-5) for uint8 and PNG-encoded inputs at batch sizes 1 and 7.
Subprocesses that do not depend on each other are started together so they overlap.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import il_tf  # pylint: disable=unused-import  # quiet TensorFlow import
import gin
import numpy as np
import pytest
import tensorflow as tf

from il_tf import config
from il_tf import export
from il_tf import training
from il_tf.data import preprocessing as prep
from il_tf.models import network as network_lib
from il_tf.runs import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")
BATCH_SIZES = (1, 7)


def _popen(args, cwd=REPO, pythonpath=True) -> subprocess.Popen:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = REPO
    else:
        env.pop("PYTHONPATH", None)
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen, ok: bool = True, timeout: float = 240):
    out, err = process.communicate(timeout=timeout)
    if ok:
        assert process.returncode == 0, err[-3000:]
    return out, err


def _tool(name, *args, **kwargs) -> subprocess.Popen:
    return _popen([sys.executable, os.path.join(TOOLS, name), *args], **kwargs)


@pytest.fixture(autouse=True)
def clear_gin():
    yield
    gin.clear_config()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny digits run (its own tfds data_dir, built offline)."""
    root = tmp_path_factory.mktemp("export")
    model_dir = str(root / "run")
    data_dir = str(root / "tfds")
    _finish(_tool("train.py", f"--model_dir={model_dir}", "--gin_bindings=" + "\n".join([
        f"il_tf.data.tfds_config.data_dir = {data_dir!r}",
        "il_tf.training.train.epochs = 1",
        "il_tf.training.train.steps_per_epoch = 4",
        "il_tf.training.network.channels = 8",
        "il_tf.training.network.layers = 3",
    ])))
    return model_dir


@pytest.fixture(scope="module")
def exported(run_dir):
    """Two exports of the run with tools/export.py: the paths they printed."""
    paths = []
    for _ in range(2):
        out, _ = _finish(_tool("export.py", f"--model_dir={run_dir}"))
        paths.append(out.strip().splitlines()[-1])
    return paths


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """7 random 8x8 RGB images, as an array and as PNG files."""
    directory = tmp_path_factory.mktemp("images")
    images = np.random.default_rng(0).integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    files = []
    for i, image in enumerate(images):
        files.append(str(directory / f"image_{i}.png"))
        with open(files[-1], "wb") as f:
            f.write(tf.io.encode_png(image).numpy())
    np.save(directory / "images.npy", images)
    return images, files, str(directory)


# Run in a fresh interpreter, cwd outside the repository and without PYTHONPATH: only
# TensorFlow is imported, never il_tf.
_SERVE = """
import json, sys
import numpy as np
import tensorflow as tf
saved_model, directory, files, sizes = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), \
    json.loads(sys.argv[4])
loaded = tf.saved_model.load(saved_model)
images = np.load(directory + "/images.npy")
encoded = [open(f, "rb").read() for f in files]
results = {}
for n in sizes:
    for kind, signature, arguments in [
            ("uint8", "serving_default", {"images": tf.constant(images[:n])}),
            ("bytes", "serving_bytes", {"image_bytes": tf.constant(encoded[:n])})]:
        outputs = loaded.signatures[signature](**arguments)
        for key, value in outputs.items():
            value = value.numpy()
            results[f"{kind}_{n}_{key}"] = value.astype(str) if value.dtype == object else value
np.savez(directory + "/served.npz", **results)
assert "il_tf" not in sys.modules, "the SavedModel client imported il_tf"
print("il_tf imported:", "il_tf" in sys.modules)
"""


def _keras_model(run_dir):
    """The run's network restored as tools/evaluate.py does (independently of il_tf.export)."""
    config.parse([os.path.join(run_dir, "config.gin")], [])
    task = il_tf.get_task()
    model = training.network(os.path.join(run_dir, "genotype.json"), task.num_classes)
    checkpoints.read(checkpoints.model_checkpoint(model), checkpoints.resolve(run_dir),
                     partial=True)
    return model, task


@pytest.fixture(scope="module")
def served(exported, inputs):
    """The outputs of version 1 on `inputs`, computed by a fresh process without il_tf."""
    _, files, directory = inputs
    out, _ = _finish(_popen([sys.executable, "-c", textwrap.dedent(_SERVE), exported[0],
                             directory, json.dumps(files), json.dumps(BATCH_SIZES)],
                            cwd=directory, pythonpath=False))
    assert "il_tf imported: False" in out
    return dict(np.load(os.path.join(directory, "served.npz")))


def test_fresh_process_predictions_equal_the_keras_model(run_dir, inputs, served):
    images, _, _ = inputs
    model, task = _keras_model(run_dir)
    mean, std = task.normalization
    expected = {n: tf.nn.softmax(model(prep.normalize(images[:n], mean, std),
                                       training=False)).numpy() for n in BATCH_SIZES}
    names = np.array(task.class_names)
    for n in BATCH_SIZES:
        for kind in ("uint8", "bytes"):
            probabilities = served[f"{kind}_{n}_probabilities"]
            assert probabilities.shape == (n, 10)
            np.testing.assert_allclose(probabilities, expected[n], atol=1e-5, rtol=0)
            classes, scores = served[f"{kind}_{n}_classes"], served[f"{kind}_{n}_scores"]
            assert classes.shape == scores.shape == (n, 5)
            np.testing.assert_array_equal(classes[:, 0], expected[n].argmax(-1))
            np.testing.assert_allclose(scores, np.take_along_axis(probabilities, classes, -1))
            assert (np.diff(scores, axis=-1) <= 0).all()
            np.testing.assert_array_equal(served[f"{kind}_{n}_class_names"],
                                          names[classes])


def test_saved_model_cli_lists_the_documented_signatures(exported):
    out, _ = _finish(_popen(["saved_model_cli", "show", "--all", "--dir", exported[0]]))
    docs = open(os.path.join(REPO, "docs", "serving.md")).read()
    for signature, name, dtype, shape in [("serving_default", "images", "DT_UINT8",
                                           "(-1, -1, -1, 3)"),
                                          ("serving_bytes", "image_bytes", "DT_STRING", "(-1)")]:
        block = out.split(f"signature_def['{signature}']:")[1].split("signature_def[")[0]
        assert f"inputs['{name}'] tensor_info:\n        dtype: {dtype}\n        shape: " \
               f"{shape}" in block
        for output, output_dtype, output_shape in [("probabilities", "DT_FLOAT", "(-1, 10)"),
                                                   ("classes", "DT_INT32", "(-1, 5)"),
                                                   ("scores", "DT_FLOAT", "(-1, 5)"),
                                                   ("class_names", "DT_STRING", "(-1, 5)")]:
            assert f"outputs['{output}'] tensor_info:\n        dtype: {output_dtype}\n" \
                   f"        shape: {output_shape}" in block
            assert f"`{output}`" in docs
        assert f"`{signature}`" in docs and f"`{name}`" in docs
        assert "Method name is: tensorflow/serving/predict" in block


def test_exporting_twice_gives_versions_1_and_2_with_metadata(run_dir, exported):
    base = os.path.join(run_dir, "export", "digits")
    assert exported == [os.path.join(base, "1"), os.path.join(base, "2")]
    assert sorted(os.listdir(base)) == ["1", "2"]  # No temporary directories left.
    results = json.load(open(os.path.join(run_dir, "results.json")))
    for version, path in enumerate(exported, start=1):
        assert os.path.exists(os.path.join(path, "saved_model.pb"))
        meta = json.load(open(os.path.join(path, "assets.extra", export.METADATA_FILE)))
        assert meta["version"] == version and meta["model_name"] == "digits"
        assert meta["dataset"] == "digits" and meta["class_names"] == [str(i) for i in range(10)]
        assert meta["genotype"] == json.load(open(os.path.join(run_dir, "genotype.json")))
        assert meta["image_shape"] == [8, 8, 3]
        assert meta["preprocessing"]["mean"] == list(il_tf.data.digits.MEAN)
        assert meta["test_accuracy"] == pytest.approx(results["test_accuracy"])
        assert meta["il_tf_version"] == il_tf.__version__
        assert meta["checkpoint"] == "ckpt-4" and meta["epoch"] == 1
        assert set(meta["signatures"]) == {"serving_default", "serving_bytes"}


def test_predict_tool_classifies_files_with_tensorflow_alone(exported, inputs, served):
    source = open(os.path.join(TOOLS, "predict.py")).read()
    assert not re.search(r"^\s*(import|from)\s+(il_tf|_common)\b", source, re.MULTILINE)
    _, files, directory = inputs
    # The model directory: the highest version (2) is used.
    out, err = _finish(_tool("predict.py", f"--saved_model={os.path.dirname(exported[0])}",
                             "--json", *files[:3], cwd=directory, pythonpath=False))
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert [line["file"] for line in lines] == files[:3]
    # Version 2 holds the same weights as version 1.
    for i, line in enumerate(lines):
        assert [c["class"] for c in line["top_k"]] == served["bytes_7_classes"][i].tolist()
        assert [c["class_name"] for c in line["top_k"]] == [str(c) for c in
                                                             served["bytes_7_classes"][i]]
        np.testing.assert_allclose([c["probability"] for c in line["top_k"]],
                                   served["bytes_7_scores"][i], atol=1e-6)
    assert "I0000" not in err and "Traceback" not in err


def test_predict_names_each_bad_file_and_still_classifies_the_others(exported, inputs,
                                                                    served, tmp_path):
    _, files, _ = inputs
    truncated = str(tmp_path / "truncated.png")
    with open(files[0], "rb") as f:
        data = f.read()
    with open(truncated, "wb") as f:
        f.write(data[:len(data) // 2])
    text = str(tmp_path / "notes.png")
    with open(text, "w") as f:
        f.write("not an image")
    process = _tool("predict.py", f"--saved_model={exported[0]}", "--json", files[1],
                    truncated, files[2], text, pythonpath=False)
    out, err = _finish(process, ok=False)
    assert process.returncode == 1
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert [line["file"] for line in lines] == [files[1], files[2]]
    for line, i in zip(lines, (1, 2)):
        assert [c["class"] for c in line["top_k"]] == served["bytes_7_classes"][i].tolist()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "Traceback" not in err, err[-2000:]
    assert truncated in errors[0] and "stack traces" not in errors[0], errors[0]
    assert text in errors[1] and "not a JPEG, PNG" in errors[1]


def _assert_one_line_error(process, expected):
    _, err = _finish(process, ok=False)
    assert process.returncode == 1, err[-2000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err[-2000:]
    assert expected in errors[0], errors[0]


def test_bad_checkpoints_give_one_error_and_write_nothing(run_dir, exported, tmp_path):
    corrupt, missing = str(tmp_path / "corrupt"), str(tmp_path / "missing")
    for directory in (corrupt, missing):
        os.makedirs(directory)
        for name in ("config.gin", "genotype.json", "metrics.jsonl", "results.json"):
            shutil.copy(os.path.join(run_dir, name), directory)
    shutil.copytree(os.path.join(run_dir, "checkpoints"), os.path.join(corrupt, "checkpoints"))
    (data_file,) = glob.glob(os.path.join(corrupt, "checkpoints", "ckpt-4.data-*"))
    with open(data_file, "r+b") as f:
        f.truncate(os.path.getsize(data_file) // 2)
    taken = os.path.join(run_dir, "export")
    a_file = str(tmp_path / "a_file")
    with open(a_file, "w") as f:
        f.write("precious")
    processes = [
        (_tool("export.py", f"--model_dir={run_dir}", f"--export_dir={a_file}"), "is a file"),
        (_tool("export.py", f"--model_dir={corrupt}"), "cannot be read"),
        (_tool("export.py", f"--model_dir={missing}"), "no checkpoint in"),
        (_tool("export.py", f"--model_dir={run_dir}", "--version=1"), "exists"),
        (_tool("export.py", f"--model_dir={run_dir}", "--checkpoint=ckpt-99"), "not found"),
    ]
    for process, expected in processes:
        _assert_one_line_error(process, expected)
    for directory in (corrupt, missing):
        assert not os.path.exists(os.path.join(directory, "export"))
    assert sorted(os.listdir(os.path.join(taken, "digits"))) == ["1", "2"]
    assert open(a_file).read() == "precious"


def test_evaluation_transform_matches_the_input_pipeline():
    rng = np.random.default_rng(1)
    # ImageNet-style: the batched transform of decoded images == InceptionCrop.evaluate on
    # the JPEG (the training pipeline's evaluation), for landscape and portrait images.
    inception = prep.InceptionCrop(image_size=16, resize_size=20)
    for shape in [(30, 24, 3), (21, 40, 3)]:
        jpeg = tf.io.encode_jpeg(rng.integers(0, 256, shape, dtype=np.uint8))
        decoded = tf.io.decode_image(jpeg, channels=3)
        np.testing.assert_allclose(
            export.evaluation_transform(inception, decoded[None])[0].numpy(),
            inception.evaluate(jpeg).numpy(), atol=1e-6)
    # CIFAR-style: images of another size are resized as `prepare` does, then normalised.
    crop_flip = prep.CropFlip(8, prep.CIFAR10_MEAN, prep.CIFAR10_STD)
    images = rng.integers(0, 256, (3, 16, 12, 3), dtype=np.uint8)
    expected = [crop_flip.evaluate(crop_flip.prepare(tf.constant(image))).numpy()
                for image in images]
    np.testing.assert_array_equal(export.evaluation_transform(crop_flip, images).numpy(),
                                  np.stack(expected))
    at_size = images[:, :8, :8]
    np.testing.assert_array_equal(export.evaluation_transform(crop_flip, at_size).numpy(),
                                  crop_flip.evaluate(at_size).numpy())


def test_serving_module_leaves_out_the_auxiliary_head():
    model = network_lib.NetworkCIFAR("DARTS_V2", channels=8, layers=3, num_classes=10,
                                     auxiliary=True)
    module = export.ServingModule(model, prep.CropFlip(32, prep.CIFAR10_MEAN,
                                                       prep.CIFAR10_STD), top_k=20)
    auxiliary = {id(getattr(v, "value", v)) for v in model.auxiliary_head.variables}
    assert auxiliary
    assert not auxiliary & {id(v) for v in module.model_variables}
    assert len(module.model_variables) == len(model.variables) - len(auxiliary)
    assert module.top_k == 10  # Capped at the number of classes.
    outputs = module.serve_images(tf.zeros([2, 32, 32, 3], tf.uint8))
    assert set(outputs) == {"probabilities", "classes", "scores"}  # No names given.
    assert outputs["classes"].shape == (2, 10)
    empty = module.serve_images(tf.zeros([0, 32, 32, 3], tf.uint8))
    assert empty["probabilities"].shape == (0, 10) and empty["classes"].shape == (0, 10)
