"""il_tf turns TensorFlow's oneDNN kernels on by default on x86-64 Linux (il_tf/runtime/onednn.py),
and a user's TF_ENABLE_ONEDNN_OPTS wins. Checked in fresh processes: TensorFlow reads the setting
once per process."""
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
    reason="il_tf changes TensorFlow's oneDNN default on x86-64 Linux only")

_PROBE = ("import il_tf\n"
          "from il_tf.runtime import internals\n"
          "print('onednn', internals.onednn_enabled())\n")


def _onednn_enabled(setting):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return out.split("onednn ")[-1].strip() == "True"


def test_onednn_on_by_default():
    assert _onednn_enabled(None)


def test_users_setting_wins():
    assert not _onednn_enabled("0")
