"""What every il_tf tool shares: the common flags, strict gin parsing, one-line errors.

A tool is a thin absl program (dopamine/trax style):

    from tools import _common          # or `import _common` when run as a script
    FLAGS = flags.FLAGS
    _common.define_flags(default_gin_file="train_digits.gin")

    def main(argv):
        _common.parse_gin()
        il_tf.training.train(FLAGS.model_dir)

    if __name__ == "__main__":
        _common.run(main)

Flags: `--gin_file` (repeatable; a bare name is looked up in gin_configs/), `--gin_bindings`
(repeatable), `--model_dir` (where everything of the run lives). `run` prints one line for
any error and exits non-zero instead of a traceback (`IL_TF_VERBOSE=1` shows it).
"""
import os
import shlex
import sys
from typing import Callable, Optional, Sequence

# Runnable as `python tools/x.py` from anywhere: put the repository root on the path.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

# A tool reports every error in one line (`run`), so TensorFlow's own C++ log lines (gRPC
# and collective errors of a lost worker, tf.data warnings) would only bury it; they are
# shown with IL_TF_VERBOSE=1, as the traceback is. (Read when TensorFlow loads.)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1" if os.environ.get("IL_TF_VERBOSE") else "3")

import il_tf  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position  # quiet TF
from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position

from il_tf import config  # pylint: disable=g-import-not-at-top,wrong-import-position
from il_tf import runtime  # pylint: disable=g-import-not-at-top,wrong-import-position

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


def parse_gin(extra_files: Sequence[str] = (), extra_bindings: Sequence[str] = ()) -> None:
    """Parses `extra_files`, then the --gin_file files, then the bindings, strictly.

    Raises `config.ConfigError` (printed as one line by `run`) on an unknown name.
    """
    config.parse(list(extra_files) + list(gin_files()),
                 list(extra_bindings) + list(FLAGS.gin_bindings))
    # The strategy before anything else runs a TensorFlow op: a multi-worker one can only
    # configure collective ops then (see il_tf.distribute).
    from il_tf import distribute  # pylint: disable=g-import-not-at-top
    distribute.get_strategy()


VERBOSE_ENV = "IL_TF_VERBOSE"


def fail(message: str, status: int = 1) -> None:
    """Prints `error: <message>` (its first line) to stderr and exits with `status`."""
    lines = [l.strip() for l in str(message).splitlines() if l.strip()]
    sys.stderr.write(f"error: {lines[0] if lines else message}\n")
    runtime.exit_without_teardown(status)


def _message(error: BaseException) -> str:
    """The user's line for an error: il_tf's own errors are written for users; any other is
    named by its type and first line, with where to find the whole traceback."""
    from il_tf.errors import OneLineError  # pylint: disable=g-import-not-at-top
    if isinstance(error, (OneLineError, config.ConfigError)):
        return str(error)
    lines = [l.strip() for l in str(error).splitlines() if l.strip()]
    first = lines[0] if lines else ""
    if isinstance(error, (ValueError, TypeError)) and first:
        return f"{first} (set {VERBOSE_ENV}=1 for the traceback)"
    return (f"{type(error).__name__}: {first} (an unexpected error; run again with "
            f"{VERBOSE_ENV}=1 for the traceback to report it)")


def resume_command() -> str:
    """The command line that started this process (the one that resumes its run)."""
    return " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv)


def _quiet_libraries(record) -> bool:
    """Keeps il_tf's own INFO lines and drops tfds's (one per split read) and TF's."""
    return record.levelno >= 30 or (  # 30: the standard library's WARNING
        "tensorflow_datasets" not in record.pathname and "/tensorflow/" not in record.pathname)


def run(main: Callable[[Sequence[str]], None]) -> None:
    """`app.run(main)`, with one line on stderr and a non-zero exit for every error.

    il_tf's errors (a bad config, missing data or genotype, an unreadable checkpoint, a busy
    run directory, divergence) are one line with the fix; any other error is its type and
    first line. `IL_TF_VERBOSE=1` re-raises instead, for the whole traceback. SIGINT and
    SIGTERM exit with 130 and 143 after the run loop saved a checkpoint, naming the command
    that resumes.
    """
    from il_tf.errors import RunInterrupted  # pylint: disable=g-import-not-at-top

    def wrapped(argv):
        logging.set_verbosity(logging.INFO)
        logging.get_absl_handler().addFilter(_quiet_libraries)
        try:
            main(argv)
        except RunInterrupted as error:
            fail(f"{error}; resume with: {resume_command()}", 128 + error.signal_number)
        except KeyboardInterrupt:
            fail("interrupted before a checkpoint could be saved; run the same command "
                 "again to resume from the last one.", 130)
        except Exception as error:  # pylint: disable=broad-except
            if os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
                raise
            fail(_message(error))
        runtime.exit_without_teardown(0)  # Everything is on disk: skip a second of teardown.

    app.run(wrapped)
