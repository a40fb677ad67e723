"""How il_tf reads its on/off environment variables (no TensorFlow import: deferred_imports.py
reads one before TensorFlow loads)."""
import os

OFF = ("0", "off", "false", "no")


def is_off(value) -> bool:
    """Whether an environment value spells "off" (`OFF`, any case and spacing)."""
    return value is not None and value.strip().lower() in OFF


def turned_off(name: str) -> bool:
    """Whether the environment variable `name` is set to an "off" value (unset: on)."""
    return is_off(os.environ.get(name))
