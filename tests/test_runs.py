"""The run loop's promises (il_tf.runs), tested by their outcomes.

- A run killed at any moment (SIGKILL mid-epoch, during a checkpoint write, during the
  epoch's evaluation) or stopped by SIGINT, and restarted with the same command, ends with
  every checkpoint value, the genotype and the metrics of an uninterrupted run.
- Checkpoints: a non-finite state is never saved; a truncated newest checkpoint falls back
  to the previous one; a missing or garbled index file is rebuilt; a directory whose
  checkpoints are all unreadable is refused without touching it.
- One process per run directory; a diverged run exits non-zero with nothing non-finite on
  disk and no genotype; the user reads one line for each error.

The end-to-end runs are the real tools in subprocesses (tools/search.py, tools/train.py)
on the shipped digits, tiny; the runs of one test are started together where they are
independent, so that they overlap on the two cores.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KILL_ENV = "IL_TF_TEST_KILL_AT"
TIMING = ("seconds", "images_per_second")


# ----------------------------------------------------------------------------- helpers

def _search_cmd(model_dir, data_dir, *extra):
    bindings = [f"il_tf.data.tfds_config.data_dir = '{data_dir}'",
                "il_tf.search.epochs = 2", "il_tf.search.max_steps_per_epoch = 3",
                "il_tf.search.channels = 2", "il_tf.search.layers = 2",
                "il_tf.search.batch_size = 8", "il_tf.search.eval_batch_size = 512",
                "il_tf.search.verbose = 0", "il_tf.search.log_every_steps = 1",
                "il_tf.search.draw_pictures = False", "il_tf.search.checkpoint_every_steps = 2",
                "il_tf.learning.InterleavingOptimizer.arch_lr = 0.003", *extra]
    return [sys.executable, os.path.join(REPO, "tools", "search.py"),
            f"--model_dir={model_dir}"] + [f"--gin_bindings={b}" for b in bindings]


def _train_cmd(model_dir, data_dir, *extra):
    # Default drop path (0.2 ramped) and cutout (16 px on 8x8 digits is most of the image:
    # use 4) so that both random draws are exercised; 2 epochs of 5 steps.
    bindings = [f"il_tf.data.tfds_config.data_dir = '{data_dir}'",
                "il_tf.training.train.epochs = 2", "il_tf.training.train.steps_per_epoch = 5",
                "il_tf.training.train.steps_per_loop = 2", "il_tf.training.train.cutout = 4",
                "il_tf.training.train.checkpoint_every_steps = 3",
                "il_tf.training.train.drop_path_prob = 0.5",
                "il_tf.training.train.interactive = False", *extra]
    return [sys.executable, os.path.join(REPO, "tools", "train.py"),
            f"--model_dir={model_dir}"] + [f"--gin_bindings={b}" for b in bindings]


def _start(cmd, kill_at=None):
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    if kill_at:
        env[KILL_ENV] = kill_at
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(process, returncode=0, timeout=600):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == returncode, (process.returncode, err[-3000:])
    return out, err


def _run(cmd, kill_at=None, returncode=0):
    return _finish(_start(cmd, kill_at), returncode)


def _checkpoint_values(model_dir):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    reader = tf.train.load_checkpoint(path)
    keys = sorted(k for k in reader.get_variable_to_shape_map()
                  if k != "_CHECKPOINTABLE_OBJECT_GRAPH")
    return os.path.basename(path), {k: reader.get_tensor(k) for k in keys}


def _metrics(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _tensorboard_scalars(model_dir):
    """{(tag, step, value)} of the run's TensorBoard events: a point written again by a
    resumed run (its epoch redone) must carry the uninterrupted run's value."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    directory = os.path.join(model_dir, "tensorboard")
    points = set()
    for name in os.listdir(directory):
        for data in tf.data.TFRecordDataset(os.path.join(directory, name)):
            event = tf.compat.v1.Event.FromString(data.numpy())
            for value in event.summary.value:
                if (value.metadata.plugin_data.plugin_name == "scalars"
                        and value.tag.rsplit("/", 1)[-1] not in TIMING):
                    points.add((value.tag, event.step, float(tf.make_ndarray(value.tensor))))
    return points


def _assert_same_run(resumed, uninterrupted, outputs=("genotype.json",)):
    name_a, values_a = _checkpoint_values(resumed)
    name_b, values_b = _checkpoint_values(uninterrupted)
    assert name_a == name_b
    assert values_a.keys() == values_b.keys()
    differ = [k for k in values_a if not np.array_equal(values_a[k], values_b[k])]
    assert not differ, f"{len(differ)} of {len(values_a)} checkpoint values differ: {differ[:5]}"
    assert _metrics(resumed) == _metrics(uninterrupted)
    assert _tensorboard_scalars(resumed) == _tensorboard_scalars(uninterrupted)
    for name in outputs:
        with open(os.path.join(resumed, name)) as a, open(os.path.join(uninterrupted, name)) as b:
            assert a.read() == b.read(), name


def _one_error_line(err):
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert "Traceback" not in err, err[-3000:]
    assert lines and lines[-1].startswith("error: "), err[-3000:]
    return lines[-1]


# ----------------------------------------------------------------------------- search

class _Background:
    """A run started now and waited for once, by whichever test needs it first."""

    def __init__(self, cmd):
        self.process = _start(cmd)
        self.output = None

    def __call__(self):
        if self.output is None:
            self.output = _finish(self.process)
        return self.output


@pytest.fixture(scope="module")
def uninterrupted_search(data_dir, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("search") / "run")
    return model_dir, _Background(_search_cmd(model_dir, data_dir))


@pytest.mark.slow
def test_search_killed_at_every_kind_of_moment_ends_as_an_uninterrupted_run(
        data_dir, tmp_path, uninterrupted_search):
    reference, reference_process = uninterrupted_search
    model_dir = str(tmp_path / "run")
    cmd = _search_cmd(model_dir, data_dir)
    # 2 epochs x 3 iterations, checkpoints at 2, 3, 4, 6. Killed after iteration 1 (before any
    # checkpoint), while writing ckpt-4, while evaluating epoch 2; then SIGINT; then done.
    _run(cmd, kill_at="step:1", returncode=-signal.SIGKILL)
    assert not os.path.exists(os.path.join(model_dir, "checkpoints"))
    _run(cmd, kill_at="save:4", returncode=-signal.SIGKILL)
    _run(cmd, kill_at="eval:2", returncode=-signal.SIGKILL)
    assert _prefixes(model_dir)[-1].endswith("ckpt-4")  # Epoch 2's end was not saved.
    reference_process()
    _run(cmd)
    _assert_same_run(model_dir, reference, ("genotype.json", "genotype_best.json"))


@pytest.mark.slow
def test_sigint_saves_exits_130_with_the_resume_command_and_resumes_exactly(
        data_dir, tmp_path, uninterrupted_search):
    reference, reference_process = uninterrupted_search
    model_dir = str(tmp_path / "run")
    cmd = _search_cmd(model_dir, data_dir)
    process = _start(cmd)
    deadline = time.time() + 600
    for line in process.stdout:  # One line per iteration (log_every_steps = 1).
        if line.strip().startswith("step 1/"):
            process.send_signal(signal.SIGINT)
            break
        assert time.time() < deadline
    _, err = _finish(process, returncode=130)
    line = _one_error_line(err)
    assert "SIGINT" in line and "resume with: " in line
    resume = line.split("resume with: ", 1)[1]
    assert f"--model_dir={model_dir}" in resume
    assert os.listdir(os.path.join(model_dir, "checkpoints"))
    reference_process()
    resumed = subprocess.run(resume, shell=True, cwd=REPO, capture_output=True, text=True,
                             timeout=600)  # The printed command, as the user would paste it.
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(model_dir, reference)


_LEARNERS = {
    1: ["il_tf.search.tasks = [@all/il_tf.data.task()]", "all/il_tf.data.task.name = 'digits'"],
    2: [],  # search_digits.gin's digits_low, digits_high
    3: ["il_tf.search.tasks = [@low/il_tf.data.task(), @high/il_tf.data.task(), "
        "@all/il_tf.data.task()]", "all/il_tf.data.task.name = 'digits'"],
}


@pytest.mark.slow
@pytest.mark.parametrize("strategy, learners, steps_per_stage", [
    ("interleaved", 1, 1),  # DARTS
    ("blocked", 3, 2),      # 6 iterations in blocks of 2: resumed at the hand-over at 4
    ("multitask", 2, 1),
    ("single", 2, 1),
])
def test_every_strategy_and_learner_count_resumes_exactly(
        data_dir, tmp_path, strategy, learners, steps_per_stage):
    extra = [f"il_tf.learning.InterleavingOptimizer.learning_strategy = '{strategy}'",
             f"il_tf.learning.InterleavingOptimizer.steps_per_stage = {steps_per_stage}",
             *_LEARNERS[learners]]
    reference = str(tmp_path / "uninterrupted")
    model_dir = str(tmp_path / "run")
    uninterrupted = _start(_search_cmd(reference, data_dir, *extra))
    # Killed after iteration 5 (epoch 2, its checkpoint at 4 kept), then resumed.
    _run(_search_cmd(model_dir, data_dir, *extra), kill_at="step:5",
         returncode=-signal.SIGKILL)
    assert _prefixes(model_dir)[-1].endswith("ckpt-4")
    _finish(uninterrupted)
    _run(_search_cmd(model_dir, data_dir, *extra))
    _assert_same_run(model_dir, reference, ("genotype.json", "genotype_best.json"))
    assert len(_metrics(reference)[-1]["val_loss"]) == learners


@pytest.mark.slow
def test_rerunning_a_finished_search_prints_its_summary_without_work(
        data_dir, uninterrupted_search):
    reference, reference_process = uninterrupted_search
    reference_process()
    # The tool ends without the interpreter's teardown (il_tf.runtime.teardown): its last
    # TensorBoard points and records are on disk all the same.
    records = _metrics(reference)
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert {r["step"] for r in records} <= {step for _, step, _ in _tensorboard_scalars(reference)}
    before = _checkpoint_values(reference)
    with open(os.path.join(reference, "metrics.jsonl")) as f:
        metrics = f.read()
    out, _ = _run(_search_cmd(reference, data_dir))
    assert "nothing to do" in out and "search done: best epoch" in out
    assert "next: python tools/train.py --genotype=" in out
    assert "nan" not in out.lower()
    after = _checkpoint_values(reference)
    assert before[0] == after[0]
    with open(os.path.join(reference, "metrics.jsonl")) as f:
        assert f.read() == metrics


@pytest.mark.slow
def test_diverged_search_exits_nonzero_and_leaves_nothing_nonfinite_and_no_genotype(
        data_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    # A weight learning rate that blows the supernet up within the first epoch.
    cmd = _search_cmd(model_dir, data_dir,
                      "il_tf.learning.InterleavingOptimizer.weight_lr = 1e30")
    _, err = _run(cmd, returncode=1)
    line = _one_error_line(err)
    assert "non-finite" in line and "weight_lr" in line, line
    assert not os.path.exists(os.path.join(model_dir, "genotype.json"))
    assert not os.path.exists(os.path.join(model_dir, "genotype_best.json"))
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    for prefix in _prefixes(model_dir):
        reader = tf.train.load_checkpoint(prefix)
        for key in reader.get_variable_to_shape_map():
            value = reader.get_tensor(key)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                assert np.all(np.isfinite(value)), (prefix, key)


@pytest.mark.slow
def test_the_divergence_hint_is_a_command_that_resumes_the_run(data_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    # Iteration 3 is epoch 2's first; ckpt-2 and ckpt-3 were saved before it.
    _, err = _run(_search_cmd(model_dir, data_dir, "il_tf.search.fail_on_step = 3"),
                  returncode=1)
    line = _one_error_line(err)
    assert "learner 2" in line and "iteration 3" in line, line
    assert "the last good checkpoint ckpt-3" in line, line
    binding = line.split("--gin_bindings='", 1)[1].split("'", 1)[0]
    out, _ = _run(_search_cmd(model_dir, data_dir, binding))
    assert "resuming from ckpt-3" in out and "search done" in out
    assert [r["epoch"] for r in _metrics(model_dir)] == [0, 1, 2]
    assert "weight_lr = 0.0125" in open(os.path.join(model_dir, "config.gin")).read()


def _prefixes(model_dir):
    directory = os.path.join(model_dir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(os.path.join(directory, n[:-len(".index")]) for n in os.listdir(directory)
                  if n.endswith(".index"))


@pytest.mark.slow
def test_a_broken_newest_checkpoint_or_index_is_survived_and_ends_as_uninterrupted(
        data_dir, tmp_path, uninterrupted_search):
    reference, reference_process = uninterrupted_search
    model_dir = str(tmp_path / "run")
    cmd = _search_cmd(model_dir, data_dir)
    _run(cmd, kill_at="eval:2", returncode=-signal.SIGKILL)  # ckpt-2, -3, -4 on disk.
    newest = _prefixes(model_dir)[-1]
    assert newest.endswith("ckpt-4")
    data = newest + ".data-00000-of-00001"
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    with open(os.path.join(model_dir, "checkpoints", "checkpoint"), "wb") as f:
        f.write(b"\xff\xfe garbled \x00")
    reference_process()
    out, err = _run(cmd)
    assert "ckpt-4 cannot be used" in err and "resuming from ckpt-3" in err, err[-2000:]
    assert "resuming from ckpt-3" in out
    _assert_same_run(model_dir, reference)


@pytest.mark.slow
def test_a_run_dir_whose_checkpoints_are_all_unreadable_is_refused_untouched(
        data_dir, tmp_path, uninterrupted_search):
    reference, reference_process = uninterrupted_search
    reference_process()
    model_dir = str(tmp_path / "run")
    shutil.copytree(reference, model_dir)
    for prefix in _prefixes(model_dir):
        with open(prefix + ".index", "wb") as f:
            f.write(b"not a checkpoint")
    os.remove(os.path.join(model_dir, "checkpoints", "checkpoint"))
    before = {n: open(os.path.join(model_dir, n), "rb").read()
              for n in ("metrics.jsonl", "genotype.json")}
    cmd = _search_cmd(model_dir, data_dir)
    _, err = _run(cmd, returncode=1)
    line = _one_error_line(err)
    assert "no readable checkpoint" in line and "mv " in line, line
    for name, content in before.items():
        assert open(os.path.join(model_dir, name), "rb").read() == content
    # Following the hint keeps the broken run aside and starts over.
    move = "mv " + line.split("mv ", 1)[1].split(")", 1)[0]
    subprocess.run(move, shell=True, check=True)
    _run(cmd)
    _assert_same_run(model_dir, reference)
    for name, content in before.items():
        assert open(os.path.join(model_dir + ".broken", name), "rb").read() == content


# ----------------------------------------------------------------------------- retraining

@pytest.mark.slow
def test_retraining_killed_mid_epoch_ends_as_uninterrupted_with_drop_path_and_cutout(
        data_dir, tmp_path):
    reference = str(tmp_path / "reference")
    model_dir = str(tmp_path / "run")
    reference_process = _Background(_train_cmd(reference, data_dir))
    cmd = _train_cmd(model_dir, data_dir)
    # 2 epochs x 5 steps in loops of at most 2 steps, cut at the checkpoints (every 3 steps
    # and at epoch ends): 2, 3, 5 | 6, 8, 9, 10. Killed after step 8 (resumes from ckpt-6,
    # inside epoch 2) and while writing ckpt-9.
    _run(cmd, kill_at="step:8", returncode=-signal.SIGKILL)
    _run(cmd, kill_at="save:9", returncode=-signal.SIGKILL)
    _run(cmd)
    reference_process()
    _assert_same_run(model_dir, reference, ("genotype.json",))
    with open(os.path.join(model_dir, "results.json")) as a, \
            open(os.path.join(reference, "results.json")) as b:
        ours, theirs = json.load(a), json.load(b)
    assert ours["test_error"] == theirs["test_error"]


# ----------------------------------------------------------------------------- run directory

_HOLD = """
import sys, time
import il_tf
from il_tf.runs import RunDir
with RunDir(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_busy_run_dir_is_refused_in_one_line_naming_the_holder(data_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, model_dir, "300"], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        _, err = _run(_search_cmd(model_dir, data_dir), returncode=1)
        line = _one_error_line(err)
        assert "in use by another run" in line and f"pid {holder.pid}" in line, line
        assert not os.path.exists(os.path.join(model_dir, "metrics.jsonl"))
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_run_is_taken_over_with_a_line(tmp_path, caplog):
    from il_tf.runs import RunDir  # pylint: disable=g-import-not-at-top
    model_dir = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, model_dir, "300"], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    with RunDir(model_dir) as run_dir:
        with open(run_dir.join(".lock")) as f:
            assert json.load(f)["pid"] == os.getpid()
    assert f"held by pid {holder.pid}" in caplog.text and "taking it over" in caplog.text


def test_a_file_as_model_dir_is_one_line(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("precious")
    _, err = _run([sys.executable, os.path.join(REPO, "tools", "search.py"),
                   f"--model_dir={path}"], returncode=1)
    assert "is a file, not a directory" in _one_error_line(err)
    assert path.read_text() == "precious"


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("binding, expected", [
    ("il_tf.search.epochs = 'two'", "il_tf.search.epochs = 'two' is not a valid value"),
    ("il_tf.learning.InterleavingOptimizer.hessian = 'bogus'", "hessian must be one of"),
    ("il_tf.data.task.name = 'no_such_dataset'", "no_such_dataset"),
])
def test_bad_values_are_one_line_and_write_nothing(tmp_path, binding, expected):
    model_dir = str(tmp_path / "run")
    extra = ["il_tf.search.tasks = [@il_tf.data.task()]"] if "task.name" in binding else []
    _, err = _run([sys.executable, os.path.join(REPO, "tools", "search.py"),
                   f"--model_dir={model_dir}", f"--gin_bindings={binding}",
                   *[f"--gin_bindings={b}" for b in extra]], returncode=1)
    line = _one_error_line(err)
    assert expected in line, line
    for name in ("checkpoints", "metrics.jsonl", "genotype.json"):
        assert not os.path.exists(os.path.join(model_dir, name))


# ----------------------------------------------------------------------------- units

def test_keeper_refuses_a_nonfinite_state_and_rebuilds_a_missing_index(tmp_path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from il_tf.errors import TrainingDivergedError  # pylint: disable=g-import-not-at-top
    from il_tf.runs import checkpoints  # pylint: disable=g-import-not-at-top
    v = tf.Variable([1.0, 2.0])
    keeper = checkpoints.Keeper(tf.train.Checkpoint(v=v), [v], str(tmp_path), max_to_keep=2)
    for step in (1, 2, 3):
        v.assign([float(step), 0.0])
        keeper.save(step)
    assert [os.path.basename(p) for p in checkpoints.numbered(str(tmp_path))] == [
        "ckpt-2", "ckpt-3"]
    v.assign([np.nan, 0.0])
    with pytest.raises(TrainingDivergedError, match="non-finite"):
        keeper.save(4)
    assert not os.path.exists(tmp_path / "ckpt-4.index")
    os.remove(tmp_path / "checkpoint")
    assert os.path.basename(keeper.restore()) == "ckpt-3"
    np.testing.assert_array_equal(v.numpy(), [3.0, 0.0])
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-3")


def test_metrics_trim_drops_records_after_the_restored_step_and_a_cut_line(tmp_path):
    from il_tf.runs import metrics  # pylint: disable=g-import-not-at-top
    log = metrics.MetricsLog(str(tmp_path))
    path = tmp_path / metrics.METRICS_FILE
    path.write_text('{"epoch": 1, "step": 3}\n{"epoch": 2, "step": 6}\n{"epoch": 3, "st')
    log.trim(3)
    assert path.read_text() == '{"epoch": 1, "step": 3}\n'


class _Counter:
    """A tiny program for the loop alone: w += (seed, step)-derived noise each step."""

    def __new__(cls, *args, **kwargs):
        from il_tf import runs  # pylint: disable=g-import-not-at-top

        class Counter(runs.Program):
            stats = ("sum",)
            epochs, steps_per_epoch, steps_per_call = 2, 3, 2

            def __init__(self):
                import tensorflow as tf  # pylint: disable=g-import-not-at-top
                self.w = tf.Variable(0.0)
                self.epoch = None

            def checkpoint_objects(self):
                return {"w": self.w}

            def start_epoch(self, epoch, step):
                self.epoch = epoch

            def run_steps(self, step, count):
                for s in range(step, step + count):
                    self.w.assign_add(float(np.random.default_rng(s).normal()))
                return np.array([float(self.w.numpy())])

            def images_per_step(self):
                return 1

            def progress_values(self, totals, images_per_second):
                return {"sum": float(totals[0])}

            def end_epoch(self, epoch, totals):
                return {"w": float(self.w.numpy())}

            def epoch_line(self, record):
                return f"w {record['w']}"

            def write_outputs(self, record, records):
                with open(os.path.join(self.run_dir_path, "output.txt"), "w") as f:
                    f.write(str(record["w"]))

        return Counter(*args, **kwargs)


def test_a_non_chief_worker_writes_nothing_into_the_run_dir(tmp_path, capsys):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from il_tf import runs  # pylint: disable=g-import-not-at-top
    program = _Counter()
    program.run_dir_path = str(tmp_path / "run")
    with runs.RunDir(program.run_dir_path, chief=False) as run_dir:
        result = runs.RunLoop(run_dir, program, tf.distribute.get_strategy(),
                              checkpoint_every_steps=2).run()
    assert result["epoch"] == 2 and result["w"] == float(program.w.numpy())
    assert not os.path.exists(program.run_dir_path)
    assert capsys.readouterr().out == ""
    chief = _Counter()
    chief.run_dir_path = str(tmp_path / "chief")
    with runs.RunDir(chief.run_dir_path) as run_dir:
        runs.RunLoop(run_dir, chief, tf.distribute.get_strategy(),
                     checkpoint_every_steps=2).run()
    assert float(open(os.path.join(chief.run_dir_path, "output.txt")).read()) == \
        float(program.w.numpy())
