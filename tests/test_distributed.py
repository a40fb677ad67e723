"""Multi-worker search: two worker processes on 127.0.0.1 end with identical alphas that
equal a one-process run on the same global batches."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_multi_worker.py")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_workers_match_one_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    ports = [str(_free_port()), str(_free_port())]
    workers = [subprocess.Popen([sys.executable, SCRIPT, *ports, str(i), str(tmp_path / f"w{i}.npz")],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for i in range(2)]
    single = subprocess.run([sys.executable, SCRIPT, "--single", str(tmp_path / "one.npz")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-3000:]
    for w in workers:
        out, _ = w.communicate(timeout=600)
        assert w.returncode == 0, out.decode()[-3000:]
    w0, w1, one = (np.load(tmp_path / f) for f in ("w0.npz", "w1.npz", "one.npz"))
    # The same on both workers, to the last bit or so: the collective all-reduce may sum in a
    # different order on each worker (measured: 3 of 112 alphas 1 ulp apart).
    for key in ("arr_0", "arr_1", "encoder"):
        np.testing.assert_allclose(w0[key], w1[key], rtol=1e-6, atol=1e-9)
    # The alphas (first order, see _multi_worker.py): Adam moves each by about lr = 3e-3 per
    # step; the runs agree to 1/30 of a step.
    for key in ("arr_0", "arr_1"):
        np.testing.assert_allclose(w0[key], one[key], rtol=0, atol=1e-4)
    np.testing.assert_allclose(w0["encoder"], one["encoder"], rtol=0, atol=1e-3)
    # The alphas really moved (a test that cannot fail otherwise would prove nothing).
    for key, init in (("arr_0", "init_normal"), ("arr_1", "init_reduce")):
        assert np.abs(one[key] - one[init]).max() > 4e-3  # about two Adam steps of 3e-3


def _user_env():
    # As a user's shell: no TF_CONFIG of ours, no log level set by this process's il_tf.
    return {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "TF_CPP_MIN_LOG_LEVEL")}


def _worker_env(ports, index):
    env = _user_env()
    env["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
        "task": {"type": "worker", "index": index}})
    return env


def _search_tool(model_dir, data_dir):
    """The README's multi-machine command (without TF_CONFIG), tiny: 2 epochs of 2 iterations,
    a line per iteration, a lost worker noticed within 3 minutes (a busy machine can keep a worker from a collective for a minute)."""
    bindings = [f"il_tf.data.tfds_config.data_dir = '{data_dir}'", "il_tf.search.epochs = 2",
                "il_tf.search.max_steps_per_epoch = 2", "il_tf.search.channels = 2",
                "il_tf.search.layers = 2", "il_tf.search.batch_size = 8",
                "il_tf.search.eval_batch_size = 512", "il_tf.search.verbose = 0",
                "il_tf.search.log_every_steps = 1", "il_tf.search.draw_pictures = True",
                "il_tf.get_strategy.collective_timeout = 180"]
    return [sys.executable, os.path.join(os.path.dirname(SCRIPT), "..", "tools", "search.py"),
            f"--model_dir={model_dir}"] + [f"--gin_bindings={b}" for b in bindings]


def _start_workers(cmd, ports):
    return [subprocess.Popen(cmd, env=_worker_env(ports, i), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in range(2)]


@pytest.fixture(scope="module")
def two_worker_run(data_dir, tmp_path_factory):
    """An uninterrupted two-worker search: (its run directory, each worker's stdout)."""
    model_dir = str(tmp_path_factory.mktemp("two_workers") / "run")
    workers = _start_workers(_search_tool(model_dir, data_dir), [_free_port(), _free_port()])
    outputs = [w.communicate(timeout=900) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    return model_dir, [out for out, _ in outputs]


@pytest.mark.slow
def test_two_workers_run_the_search_tool_into_one_run_dir_written_once(two_worker_run):
    """The README's multi-machine command, on 127.0.0.1: each worker runs tools/search.py
    with its own TF_CONFIG and the same --model_dir; the chief alone writes it."""
    model_dir, (chief_out, worker_out) = two_worker_run
    assert "search done" in chief_out and worker_out.strip() == ""  # One display, the chief's.
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        assert [json.loads(line)["epoch"] for line in f] == [0, 1, 2]  # Each epoch once.
    names = sorted(os.listdir(os.path.join(model_dir, "checkpoints")))
    assert names == ["checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index",
                     "ckpt-4.data-00000-of-00001", "ckpt-4.index"]
    for name in ("genotype.json", "genotype_best.json", "config.gin", "alpha_course.png"):
        assert os.path.getsize(os.path.join(model_dir, name)) > 0


@pytest.mark.slow
def test_a_killed_worker_stops_the_other_in_one_line_and_the_same_commands_resume(
        data_dir, tmp_path, two_worker_run):
    reference, _ = two_worker_run
    model_dir = str(tmp_path / "run")
    cmd = _search_tool(model_dir, data_dir)
    chief, worker = _start_workers(cmd, [_free_port(), _free_port()])
    _kill_in_epoch_2(chief, worker)
    _, err = chief.communicate(timeout=600)
    assert chief.returncode == 1, err[-3000:]
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert "Traceback" not in err and len(lines) == 1, err[-3000:]
    assert lines[0].startswith("error: another worker stopped or cannot be reached"), lines
    assert "start every worker again with its same command to resume from ckpt-2" in lines[0]
    # The same commands, again: the run ends where the uninterrupted one did.
    workers = _start_workers(cmd, [_free_port(), _free_port()])
    for w in workers:
        _, err = w.communicate(timeout=900)
        assert w.returncode == 0, err[-3000:]
    _assert_same_final_state(model_dir, reference)


def _kill_in_epoch_2(watched, victim):
    """SIGKILLs `victim` once `watched` has saved epoch 1 (ckpt-2) and run an iteration of
    epoch 2."""
    seen = []
    for line in watched.stdout:
        seen.append(line)
        if any(l.startswith("epoch 2/2") for l in seen) and line.strip().startswith("step 1/"):
            victim.kill()
            break
    victim.wait(timeout=60)


def _assert_same_final_state(model_dir, reference):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        assert [json.loads(line)["epoch"] for line in f] == [0, 1, 2]
    readers = [tf.train.load_checkpoint(os.path.join(d, "checkpoints", "ckpt-4"))
               for d in (model_dir, reference)]
    keys = sorted(k for k in readers[0].get_variable_to_shape_map()
                  if k != "_CHECKPOINTABLE_OBJECT_GRAPH")
    assert keys == sorted(k for k in readers[1].get_variable_to_shape_map()
                          if k != "_CHECKPOINTABLE_OBJECT_GRAPH")
    assert any("alpha" in k for k in keys), keys
    # Two workers' all-reduce may sum in either order (see above): equal to float rounding.
    for key in keys:
        np.testing.assert_allclose(readers[0].get_tensor(key), readers[1].get_tensor(key),
                                   rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_one_process_on_two_logical_cpus_equals_two_workers_and_resumes(
        data_dir, tmp_path, two_worker_run):
    """The same search as the two workers, as one process mirroring over two logical CPUs
    (two replicas, the same global batches split the same way): killed in epoch 2 and
    resumed with the same command, it ends where the uninterrupted two-worker run did, at
    second order with the joint Hessian."""
    reference, _ = two_worker_run
    model_dir = str(tmp_path / "run")
    cmd = _search_tool(model_dir, data_dir) + [
        "--gin_bindings=il_tf.get_strategy.kind = 'mirrored'",
        "--gin_bindings=il_tf.get_strategy.logical_cpus = 2"]
    env = _user_env()
    run = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    _kill_in_epoch_2(run, run)
    assert not os.path.exists(os.path.join(model_dir, "checkpoints", "ckpt-4.index"))
    finished = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "search done" in finished.stdout, finished.stdout[-3000:]
    _assert_same_final_state(model_dir, reference)
