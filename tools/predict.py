"""Classifies image files with an exported SavedModel, using TensorFlow alone (no il_tf).

    python tools/predict.py --saved_model=runs/c10/export/cifar10/1 cat.png dog.jpg
    python tools/predict.py --saved_model=runs/c10/export/cifar10 *.jpg      # highest version
    python tools/predict.py --saved_model=... --json img.png                 # one JSON per line

This is the path a serving client takes: the file bytes go, undecoded, through the
`serving_bytes` signature (decode, resize/crop, normalise and the network are all in the
graph), exactly as TF Serving's REST API receives `{"b64": ...}` instances. It needs only
TensorFlow, so it runs where il_tf is not installed. Prints each file's top-k classes (names
where the export has them) with their probabilities; a file that cannot be read or decoded
gets one `error:` line naming it and the cause, the others are still classified, and the
exit status is then 1.
"""
import contextlib
import json
import os
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "An exported version directory "
                    "(<export_dir>/<model_name>/<N>) or its parent (the highest N is used).")
flags.DEFINE_string("signature", "serving_bytes", "The signature taking encoded images.")
flags.DEFINE_integer("batch_size", 32, "Files per call.")
flags.DEFINE_bool("json", False, "Print one JSON object per file.")
flags.mark_flag_as_required("saved_model")


class _UserError(Exception):
    """A problem the user can fix; printed as one line."""


@contextlib.contextmanager
def _quiet_stderr():
    """Hides TensorFlow's C++ start-up chatter (printed before logging can be configured);
    Python errors still surface, raised after fd 2 is back."""
    if os.environ.get("IL_TF_VERBOSE_STARTUP"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _version_dir(path: str) -> str:
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    numbers = sorted(int(n) for n in os.listdir(path) if n.isdigit()) if os.path.isdir(path) \
        else []
    if numbers:
        return os.path.join(path, str(numbers[-1]))
    raise _UserError(f"{path} is neither a SavedModel (no saved_model.pb) nor a model "
                     f"directory with numbered versions; export one with tools/export.py.")


def _first_line(error: BaseException) -> str:
    lines = [l.strip() for l in str(error).splitlines() if l.strip()]
    # TF's graph errors start with a generic line; the cause is on a later one.
    useful = [l for l in lines if not l.startswith((
        "Graph execution error", "Detected at", "<stack traces unavailable>", "[[",
        "Function call stack", "{{"))]
    return (useful or lines or [type(error).__name__])[0]


# What decode_image reads: JPEG, PNG, GIF, BMP (and WebP).
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"RIFF")


def _read_image(name: str) -> bytes:
    try:
        with open(name, "rb") as f:
            encoded = f.read()
    except OSError as error:
        raise _UserError(f"cannot read {name}: {error.strerror}.") from None
    if not encoded.startswith(_MAGIC):
        raise _UserError(f"{name} is not a JPEG, PNG, GIF or BMP image.")
    return encoded


def predict(saved_model: str, files, signature: str = "serving_bytes", batch_size: int = 32):
    """Yields (file, top-k or None, error or None) per file, in order.

    top-k is [(class index, class name or None, probability), ...]. A file that cannot be
    read or decoded gets its cause as the error; the other files are classified all the same.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    path = _version_dir(saved_model)
    try:
        loaded = tf.saved_model.load(path)
    except (OSError, ValueError, tf.errors.OpError) as error:
        raise _UserError(f"cannot load the SavedModel in {path}: {_first_line(error)}") from None
    if signature not in loaded.signatures:
        raise _UserError(f"{path} has no signature {signature!r}; it has "
                         f"{', '.join(sorted(loaded.signatures))}.")
    function = loaded.signatures[signature]
    (input_name,) = function.structured_input_signature[1].keys()

    def classify(names, encoded):
        outputs = function(**{input_name: tf.constant(encoded, tf.string)})
        classes = outputs["classes"].numpy()
        scores = outputs["scores"].numpy()
        labels = outputs["class_names"].numpy() if "class_names" in outputs else None
        return [[(int(c), None if labels is None else labels[i][j].decode("utf-8"),
                  float(scores[i][j])) for j, c in enumerate(classes[i])]
                for i in range(len(names))]

    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        encoded, errors = {}, {}
        for name in chunk:
            try:
                encoded[name] = _read_image(name)
            except _UserError as error:
                errors[name] = str(error)
        readable = [name for name in chunk if name in encoded]
        results = {}
        try:
            if readable:
                results = dict(zip(readable, classify(readable, [encoded[n] for n in readable])))
        except tf.errors.InvalidArgumentError:
            for name in readable:  # One file spoilt the batch: find which, keep the rest.
                try:
                    results[name] = classify([name], [encoded[name]])[0]
                except tf.errors.InvalidArgumentError as error:
                    errors[name] = f"cannot decode {name}: {_first_line(error)}"
        for name in chunk:
            yield name, results.get(name), errors.get(name)


def main(argv):
    files = argv[1:]
    if not files:
        raise _UserError("no image files given: python tools/predict.py --saved_model=DIR "
                         "a.png b.jpg ...")
    failed = 0
    for name, top, error in predict(FLAGS.saved_model, files, FLAGS.signature,
                                    FLAGS.batch_size):
        if error:
            failed += 1
            sys.stderr.write(f"error: {error}\n")
            continue
        if FLAGS.json:
            print(json.dumps({"file": name, "top_k": [
                {"class": c, "class_name": n, "probability": p} for c, n, p in top]}))
            continue
        best = ", ".join(f"{n if n is not None else c} {100 * p:.1f}%" for c, n, p in top)
        print(f"{name}: {best}")
    if failed:
        sys.exit(1)


def _run():
    with _quiet_stderr():
        import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
        tensorflow.config.list_physical_devices()  # Device start-up chatter, hidden too.

    def wrapped(argv):
        try:
            main(argv)
        except _UserError as error:
            sys.stderr.write(f"error: {error}\n")
            sys.exit(1)

    app.run(wrapped)


if __name__ == "__main__":
    _run()
