"""The one progress display of a run: a Keras progress bar on a terminal, plain lines in a log.

On a terminal (stdout is a TTY) each epoch gets a `keras.utils.Progbar`; otherwise (output
sent to a file or a pipe) there are no control codes, only a plain line every
`log_every_steps` steps and one at each epoch's end.
"""
import sys
import time
from typing import Mapping, Optional


class Progress:
    """Shows a run's progress.

    Args:
      steps_per_epoch: steps in an epoch.
      epochs: epochs of the run.
      interactive: None decides from `sys.stdout.isatty()`.
      log_every_steps: without a terminal, a line at most this often.
      enabled: False prints nothing (non-chief workers).
    """

    def __init__(self, steps_per_epoch: int, epochs: int, interactive: Optional[bool] = None,
                 log_every_steps: int = 50, enabled: bool = True):
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.log_every_steps = max(1, log_every_steps)
        self.enabled = enabled
        self._bar = None
        self._epoch = 0
        self._last = 0
        self._start = time.perf_counter()

    def line(self, text: str) -> None:
        """A line of its own (closing a bar first, if one is drawn)."""
        if self.enabled:
            print(text, flush=True)

    def start_epoch(self, epoch: int, step: int) -> None:
        """`epoch` is 0-based; `step` is where in it the run starts (resumed runs)."""
        self._epoch, self._last = epoch, step
        self._start = time.perf_counter()
        if not self.enabled:
            return
        resumed = f" (resumed at step {step})" if step else ""
        if self.interactive:
            import keras  # pylint: disable=g-import-not-at-top
            print(f"Epoch {epoch + 1}/{self.epochs}{resumed}", flush=True)
            self._bar = keras.utils.Progbar(self.steps_per_epoch, stateful_metrics=None)
            if step:
                self._bar.update(step)
        else:
            print(f"epoch {epoch + 1}/{self.epochs}{resumed}", flush=True)

    def update(self, step: int, values: Mapping[str, float]) -> None:
        """`step`: steps done in the epoch; `values`: what to show (running means)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(step, list(values.items()), finalize=False)
        elif step - self._last >= self.log_every_steps:
            self._last = step
            text = "  ".join(f"{k} {_fmt(v)}" for k, v in values.items())
            print(f"  step {step}/{self.steps_per_epoch}  {text}", flush=True)

    def end_epoch(self, text: str) -> None:
        """Closes the epoch's bar and prints the epoch's summary line."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self.steps_per_epoch, finalize=True)
            self._bar = None
        print(f"epoch {self._epoch + 1}/{self.epochs}: {text}", flush=True)


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
