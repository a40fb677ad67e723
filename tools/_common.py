"""What every il_tf tool shares: the common flags, strict gin parsing, one-line errors.

A tool is a thin absl program (dopamine/trax style):

    from tools import _common          # or `import _common` when run as a script
    FLAGS = flags.FLAGS
    _common.define_flags(default_gin_file="train_digits.gin")

    def main(argv):
        _common.parse_gin(imports=["il_tf.training"])
        il_tf.training.train(FLAGS.model_dir)

    if __name__ == "__main__":
        _common.run(main)

Flags: `--gin_file` (repeatable; a bare name is looked up in gin_configs/), `--gin_bindings`
(repeatable), `--model_dir` (where everything of the run lives). `run` prints the one-line
message of a user-facing error (bad config, missing data or genotype, unreadable checkpoint,
diverged training) to stderr and exits with status 1 instead of a traceback.
"""
import os
import sys
from typing import Callable, Optional, Sequence, Tuple, Type

# Runnable as `python tools/x.py` from anywhere: put the repository root on the path.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import il_tf  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position  # quiet TF
from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position

from il_tf import config  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS


def define_flags(default_gin_file: Optional[str] = None, model_dir_required: bool = False,
                 default_model_dir: Optional[str] = None) -> None:
    """Defines --gin_file, --gin_bindings and --model_dir.

    Args:
      default_gin_file: used when no --gin_file is given (e.g. the offline config).
      model_dir_required: make --model_dir mandatory.
      default_model_dir: --model_dir's default when it is not required.
    """
    flags.DEFINE_multi_string(
        "gin_file", None,
        f"Gin config file(s), a path or a name in gin_configs/ (default: "
        f"{default_gin_file or 'none'}).")
    flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, e.g. 'train.epochs = 2'.")
    flags.DEFINE_string("model_dir", default_model_dir,
                        "The run directory: checkpoints, config.gin, metrics, results.")
    if model_dir_required:
        flags.mark_flag_as_required("model_dir")
    global _DEFAULT_GIN_FILE
    _DEFAULT_GIN_FILE = default_gin_file


_DEFAULT_GIN_FILE = None


def gin_files() -> Sequence[str]:
    """The --gin_file values, or the tool's default file when none was given."""
    if FLAGS.gin_file:
        return list(FLAGS.gin_file)
    return [_DEFAULT_GIN_FILE] if _DEFAULT_GIN_FILE else []


def parse_gin(extra_files: Sequence[str] = (), extra_bindings: Sequence[str] = (),
              imports: Sequence[str] = ()) -> None:
    """Parses `extra_files`, then the --gin_file files, then the bindings, strictly.

    Raises `config.ConfigError` (printed as one line by `run`) on an unknown name.
    """
    config.parse(list(extra_files) + list(gin_files()),
                 list(extra_bindings) + list(FLAGS.gin_bindings), imports=imports)


def user_errors() -> Tuple[Type[BaseException], ...]:
    """The errors whose message is meant for the user (one line, with the fix)."""
    from il_tf.data.errors import DatasetUnavailableError  # pylint: disable=g-import-not-at-top
    from il_tf.search_space.genotypes import GenotypeError  # pylint: disable=g-import-not-at-top
    from il_tf.training.errors import CheckpointError, TrainingDivergedError  # pylint: disable=g-import-not-at-top
    return (config.ConfigError, DatasetUnavailableError, GenotypeError, CheckpointError,
            TrainingDivergedError)


def fail(message: str) -> None:
    """Prints `error: <message>` (first line only) to stderr and exits with status 1."""
    lines = [l.strip() for l in str(message).splitlines() if l.strip()]
    sys.stderr.write(f"error: {lines[0] if lines else message}\n")
    sys.stderr.flush()
    sys.exit(1)


def _quiet_libraries(record) -> bool:
    """Keeps il_tf's own INFO lines and drops tfds's (one per split read) and TF's."""
    return record.levelno >= 30 or (  # 30: the standard library's WARNING
        "tensorflow_datasets" not in record.pathname and "/tensorflow/" not in record.pathname)


def run(main: Callable[[Sequence[str]], None],
        extra_errors: Sequence[Type[BaseException]] = ()) -> None:
    """`app.run(main)`, turning user-facing errors into one line on stderr and exit status 1.

    Args:
      main: the tool's main(argv).
      extra_errors: further exception types to report this way.
    """
    errors = user_errors() + tuple(extra_errors)

    def wrapped(argv):
        logging.set_verbosity(logging.INFO)
        logging.get_absl_handler().addFilter(_quiet_libraries)
        try:
            main(argv)
        except errors as error:  # pylint: disable=catching-non-exception
            fail(str(error))

    app.run(wrapped)
