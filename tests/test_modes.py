"""Search and retraining modes: PC-DARTS (partial channels, edge normalisation, the weight-only
warm-up, gin_configs/pc_darts.gin), K = 3 learners with `steps_per_stage` = 2 against a
schedule written out by hand, and mixed-precision and XLA retraining.

Tiny throughout: supernets of C <= 4 and 2 cells on 8x8 images, the shipped digits, networks of
C = 8 and 3 cells, one or two epochs of two steps.
"""
import json
import os
import subprocess
import sys
import textwrap

import il_tf  # pylint: disable=unused-import  # quiet TensorFlow import
import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

import conftest
from il_tf import config
from il_tf import runtime
from il_tf.learning import interleaving
from il_tf.models import supernet as supernet_lib

SIZE, BATCH = 8, 4
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _batch(seed, num_classes, n=BATCH):
    rng = np.random.RandomState(seed)
    return (tf.constant(rng.randn(n, SIZE, SIZE, 3).astype(np.float32)),
            tf.constant(rng.randint(0, num_classes, n).astype(np.int32)))


def _records(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------------------ PC-DARTS

@pytest.fixture(scope="module")
def pc_net():
    """A partial-channel supernet (k = 4, so C = 4 leaves one channel to the ops) with the
    PC-DARTS edge betas."""
    keras.utils.set_random_seed(0)
    net = supernet_lib.Supernet(channels=4, layers=2, partial_channels=4, seed=0,
                                name="pc_supernet")
    supernet_lib.build(net, (SIZE, SIZE, 3))
    return net


def _flat_state(opt):
    return np.concatenate([np.ravel(v.numpy()) for v in opt.variables]
                          + [np.ravel(v.numpy()) for v in opt.arch_optimizer.variables])


def test_pc_supernet_has_edge_betas(pc_net):
    names = [v.name for v in pc_net.architecture_variables]
    assert len(names) == 4 and any("betas_normal" in n for n in names)


def test_arch_warmup_skips_the_architecture_step_and_resumes_exactly(pc_net, tmp_path):
    """arch_warmup_epochs = 1 of 2 iterations: iterations 0-1 leave A and Adam untouched and
    report val loss 0; iteration 2 steps A. Restored from a checkpoint taken inside the
    warm-up, the run repeats the uninterrupted one bit for bit (the decision is a function
    of the checkpointed iteration counter)."""
    for v in pc_net.architecture_variables:
        v.assign(0.5 * np.random.RandomState(0).randn(*v.shape).astype(np.float32))
    opt = interleaving.InterleavingOptimizer(
        pc_net, [3, 4], tf.distribute.get_strategy(), steps_per_epoch=2, epochs=3, order=1,
        arch_warmup_epochs=1, arch_lr=1e-2)
    assert opt.arch_warmup_iterations == 2

    def batches(i):
        return [([_batch(100 * i + 10 * k, n)], _batch(100 * i + 10 * k + 5, n))
                for k, n in enumerate([3, 4])]

    alphas0 = [a.numpy() for a in opt.alphas]
    checkpoint = tf.train.Checkpoint(optimizer=opt)
    path = None
    states = []
    for i in range(4):
        if i == 1:
            path = checkpoint.write(str(tmp_path / "ckpt"))
        out = opt.replica_iteration(batches(i))
        warm = i < 2
        assert (out["search_val_loss"].numpy() == 0).all() == warm, i
        assert int(opt.arch_optimizer.step.numpy()) == (0 if warm else i - 1), i
        moved = any(not np.array_equal(a.numpy(), a0) for a, a0 in zip(opt.alphas, alphas0))
        assert moved == (not warm), i
        assert np.isfinite(out["train_loss"].numpy()).all()
        states.append(_flat_state(opt))
    checkpoint.read(path).assert_consumed()
    assert int(opt.iteration.numpy()) == 1
    for i in range(1, 4):
        opt.replica_iteration(batches(i))
        np.testing.assert_array_equal(_flat_state(opt), states[i])


# Two logical CPUs: the warm-up without a tf.cond (the all-reduces cannot sit in one).
_MIRRORED_WARMUP = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import il_tf, keras, numpy as np
from il_tf import runtime
from il_tf.learning import interleaving
from il_tf.models import supernet as supernet_lib
strategy = tf.distribute.MirroredStrategy()
with strategy.scope():
    keras.utils.set_random_seed(0)
    net = supernet_lib.Supernet(channels=4, layers=2, partial_channels=4, seed=0)
    supernet_lib.build(net, (8, 8, 3))
    opt = interleaving.InterleavingOptimizer(net, [3, 4], strategy, steps_per_epoch=1,
                                             epochs=3, arch_warmup_epochs=1, arch_lr=1e-2)
rng = np.random.RandomState(0)
def batch(n):
    return (tf.constant(rng.randn(8, 8, 8, 3).astype(np.float32)),
            tf.constant(rng.randint(0, n, 8).astype(np.int32)))
data = [([batch(3)], batch(3)), ([batch(4)], batch(4))]
@runtime.step_function
def iteration(batches):
    out = strategy.run(opt.replica_iteration, args=(batches,))
    return {k: strategy.experimental_local_results(v)[0] for k, v in out.items()}
start = [a.numpy() for a in opt.alphas]
for i in range(2):
    val = iteration(data)["search_val_loss"].numpy()
    moved = any(not np.array_equal(a.numpy(), b) for a, b in zip(opt.alphas, start))
    print(i, (val > 0).all(), int(opt.arch_optimizer.step.numpy()), moved)
"""


def test_arch_warmup_under_two_replicas():
    env = {**os.environ, "PYTHONPATH": REPO}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_MIRRORED_WARMUP)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[-3:-1] == ["0 False 0 False", "1 True 1 True"], out.stdout


def test_bad_warmup_fails(pc_net):
    with pytest.raises(ValueError, match="arch_warmup_epochs"):
        interleaving.InterleavingOptimizer(pc_net, [3], tf.distribute.get_strategy(),
                                           steps_per_epoch=2, arch_warmup_epochs=-1)


@pytest.mark.parametrize("warmup", [0, 1])
def test_traced_second_order_search_with_partial_channels(pc_net, warmup):
    """K = 2, second order (joint Hessian term), partial channels: traced iterations (one
    trace through the warm-up's tf.cond) move the alphas and the betas after the warm-up."""
    opt = interleaving.InterleavingOptimizer(
        pc_net, [3, 4], tf.distribute.get_strategy(), steps_per_epoch=1, epochs=4, order=2,
        hessian="joint", arch_lr=1e-2, arch_warmup_epochs=warmup)
    strategy = tf.distribute.get_strategy()

    @runtime.step_function
    def iteration(batches):
        return strategy.run(opt.replica_iteration, args=(batches,))

    data = [([_batch(1 + k, n)], _batch(5 + k, n)) for k, n in enumerate([3, 4])]
    before = [a.numpy() for a in opt.alphas]
    for i in range(2):
        out = iteration(data)
        assert np.isfinite(out["train_loss"].numpy()).all()
        assert (out["search_val_loss"].numpy() > 0).all() == (i >= warmup)
    assert int(opt.arch_optimizer.step.numpy()) == 2 - warmup
    for a, b in zip(opt.alphas, before):  # alphas_normal, alphas_reduce, betas_normal, ...
        assert not np.array_equal(a.numpy(), b), a.name


def _digits_pc_darts_bindings(data_dir):
    return [f"il_tf.data.tfds_config.data_dir = '{data_dir}'",
            "il_tf.search.epochs = 2", "il_tf.search.max_steps_per_epoch = 2",
            "il_tf.search.batch_size = 8", "il_tf.search.layers = 2",
            "il_tf.search.verbose = 0", "il_tf.search.draw_pictures = False",
            "il_tf.learning.InterleavingOptimizer.arch_warmup_epochs = 1"]


def test_pc_darts_gin_values():
    config.parse(["darts.gin", "pc_darts.gin"])
    q = gin.query_parameter
    opt = "il_tf.learning.InterleavingOptimizer."
    assert [q(f"il_tf.search.{p}") for p in ("partial_channels", "batch_size", "epochs",
                                              "channels", "layers")] == [4, 256, 50, 16, 8]
    assert [q(opt + p) for p in ("order", "weight_lr", "weight_lr_min", "momentum",
                                 "weight_decay", "grad_clip", "regularizer_in_clip",
                                 "arch_lr", "arch_beta_1", "arch_beta_2", "arch_weight_decay",
                                 "arch_warmup_epochs")] == \
        [1, 0.1, 0.001, 0.9, 3e-4, 5.0, False, 6e-4, 0.5, 0.999, 1e-3, 15]
    assert len(q("il_tf.search.tasks")) == 1  # darts.gin's CIFAR-10, one learner


@pytest.mark.slow
def test_pc_darts_gin_composes_with_search_digits(data_dir, tmp_path):
    """search_digits.gin + pc_darts.gin, shrunk: a first-order partial-channel search whose
    alphas stay put through the 1-epoch warm-up and move after it."""
    from il_tf.learning import search as search_lib  # pylint: disable=g-import-not-at-top
    config.parse(["search_digits.gin", "pc_darts.gin"], _digits_pc_darts_bindings(data_dir))
    assert gin.query_parameter("il_tf.search.partial_channels") == 4
    assert gin.query_parameter("il_tf.search.channels") == 4  # search_digits.gin's, k | C
    record = search_lib.search(str(tmp_path / "run"))
    assert record["epoch"] == 2 and np.isfinite(record["val_loss_sum"])
    initial, warm, searched = _records(str(tmp_path / "run"))
    assert warm["alphas"] == initial["alphas"]  # epoch 1: weights only
    assert searched["alphas"] != warm["alphas"]
    assert os.path.getsize(tmp_path / "run" / "genotype.json") > 0


# ------------------------------------------------- K = 3 learners, steps_per_stage = 2

# The interleaving written out by hand for K = 3 learners, steps_per_stage = 2, two
# iterations (rounds). Per iteration: whose hypergradients are summed into A's step (each on
# its own first training batch "t<k>.0" and its val batch "v<k>"), then the weight stages in
# order, each (learner, its weight steps' batches, the learner whose encoder it receives and
# is anchored on, or None for the run's first stage: no hand-over, no anchor).
HAND_SCHEDULE = [
    {"hypergradients": [(0, "t0.0", "v0"), (1, "t1.0", "v1"), (2, "t2.0", "v2")],
     "stages": [(0, ["t0.0", "t0.1"], None),
                (1, ["t1.0", "t1.1"], 0),
                (2, ["t2.0", "t2.1"], 1)]},
    {"hypergradients": [(0, "t0.0", "v0"), (1, "t1.0", "v1"), (2, "t2.0", "v2")],
     "stages": [(0, ["t0.0", "t0.1"], 2),   # round 2: learner 3's encoder back to learner 1
                (1, ["t1.0", "t1.1"], 0),
                (2, ["t2.0", "t2.1"], 1)]},
]
CLASSES_3 = [3, 4, 5]


@pytest.fixture(scope="module")
def tiny_net():
    return conftest.tiny_supernet(2, 2, SIZE)


def test_three_learners_two_steps_per_stage_follow_the_hand_schedule(tiny_net):
    opt = interleaving.InterleavingOptimizer(
        tiny_net, CLASSES_3, tf.distribute.get_strategy(), steps_per_epoch=2, epochs=1,
        order=1, steps_per_stage=2, arch_lr=1e-2)
    assert opt.train_batches_per_learner == 2
    seen = []  # what the optimiser did, in order, as ("kind", ...) events

    def name_of(x, names):
        return next(n for n, b in names.items() if b[0] is x)

    original = dict(hyper=opt.learner_hypergradient, stage=opt.weight_stage,
                    step=opt._weight_step, apply=opt.arch_optimizer.apply)
    names = {}

    def hyper(learner, train_batch, val_batch, previous=None):
        held = learner.encoder.numpy()
        g, loss = original["hyper"](learner, train_batch, val_batch, previous)
        seen.append(("hyper", learner.index, name_of(train_batch[0], names),
                     name_of(val_batch[0], names), held, [x.numpy() for x in g]))
        return g, loss

    def stage(learner, train_batches, handover=None):
        received = opt.encoder.numpy()
        holders = [l.encoder.numpy() for l in opt.learners]
        heads = [l.head.numpy() for l in opt.learners]
        result = original["stage"](learner, train_batches, handover)
        seen.append(("stage", learner.index, received, holders, heads))
        return result

    def step(group, step_batches, lr):
        seen.append(("step", group[0].index, name_of(step_batches[0][0], names)))
        return original["step"](group, step_batches, lr)

    def apply(gradients, variables):
        seen.append(("apply", [g.numpy() for g in gradients]))
        return original["apply"](gradients, variables)

    opt.learner_hypergradient, opt.weight_stage = hyper, stage
    opt._weight_step, opt.arch_optimizer.apply = step, apply  # pylint: disable=protected-access

    for it, plan in enumerate(HAND_SCHEDULE):
        names.clear()
        batches = []
        for k, n in enumerate(CLASSES_3):
            train = [_batch(1000 * it + 10 * k + j, n) for j in range(2)]
            val = _batch(1000 * it + 10 * k + 5, n)
            names.update({f"t{k}.0": train[0], f"t{k}.1": train[1], f"v{k}": val})
            batches.append((train, val))
        seen.clear()
        last_encoders = [l.encoder.numpy() for l in opt.learners]
        opt.replica_iteration(batches)

        hypers = [e for e in seen if e[0] == "hyper"]
        assert [e[1:4] for e in hypers] == [tuple(h) for h in plan["hypergradients"]], it
        for e in hypers:  # each learner's hypergradient at the encoder it kept (W_k)
            np.testing.assert_array_equal(e[4], last_encoders[e[1]])
        (applied,) = [e[1] for e in seen if e[0] == "apply"]
        summed = [sum(e[5][i] for e in hypers) for i in range(len(applied))]
        for a, s in zip(applied, summed):
            np.testing.assert_allclose(a, s, rtol=1e-6, atol=1e-8)

        steps = [e[1:] for e in seen if e[0] == "step"]
        assert steps == [(k, b) for k, bs, _ in plan["stages"] for b in bs], it
        stages = [e for e in seen if e[0] == "stage"]
        assert [e[1] for e in stages] == [k for k, _, _ in plan["stages"]], it
        for (_, k, received, holders, heads), (_, _, giver) in zip(stages, plan["stages"]):
            learner = opt.learners[k]
            if giver is None:
                assert learner.has_anchor.numpy() == 0.0 and not learner.anchor.numpy().any()
            else:
                # The encoder passed is the giver's W (its last stage's end) and k's anchor.
                np.testing.assert_array_equal(received, holders[giver])
        # After the iteration: each learner is anchored on what it received this round.
        for (_, k, received, _, _), (_, _, giver) in zip(stages, plan["stages"]):
            if giver is not None:
                np.testing.assert_array_equal(opt.learners[k].anchor.numpy(), received)
                assert opt.learners[k].has_anchor.numpy() == 1.0
        # Stage by stage only the stage's learner's head moved, and it kept the encoder.
        heads_after = [s[4] for s in stages[1:]] + [[l.head.numpy() for l in opt.learners]]
        for (_, k, _, _, before), after in zip(stages, heads_after):
            moved = [j for j in range(3) if not np.array_equal(before[j], after[j])]
            assert moved == [k], (it, k, moved)
        np.testing.assert_array_equal(opt.learners[2].encoder.numpy(), opt.encoder.numpy())
    assert int(opt.iteration.numpy()) == 2 and int(opt.stages_done.numpy()) == 6


@pytest.mark.slow
def test_three_learner_search_runs_end_to_end(data_dir, tmp_path):
    """K = 3 (digits 0-4, digits 5-9, all digits), steps_per_stage = 2, one tiny epoch."""
    from il_tf.learning import search as search_lib  # pylint: disable=g-import-not-at-top
    config.parse(["search_digits.gin"], [
        f"il_tf.data.tfds_config.data_dir = '{data_dir}'",
        "il_tf.search.tasks = [@low/il_tf.data.task(), @high/il_tf.data.task(), "
        "@all/il_tf.data.task()]",
        "all/il_tf.data.task.name = 'digits'",
        "il_tf.learning.InterleavingOptimizer.steps_per_stage = 2",
        "il_tf.search.epochs = 1", "il_tf.search.max_steps_per_epoch = 2",
        "il_tf.search.channels = 2", "il_tf.search.layers = 2", "il_tf.search.batch_size = 8",
        "il_tf.search.verbose = 0", "il_tf.search.draw_pictures = False"])
    record = search_lib.search(str(tmp_path / "run"))
    assert record["learners"] == ["digits_low", "digits_high", "digits"]
    assert len(record["val_loss"]) == 3 and np.isfinite(record["val_loss_sum"])
    assert all(0.0 <= a <= 1.0 for a in record["train_acc"])
    assert os.path.getsize(tmp_path / "run" / "genotype.json") > 0


# ------------------------------------------------------- mixed precision and XLA retraining

def _retrain(data_dir, model_dir, *bindings):
    from il_tf import training  # pylint: disable=g-import-not-at-top
    config.parse(["train_digits.gin"], [
        f"il_tf.data.tfds_config.data_dir = '{data_dir}'",
        "il_tf.training.network.channels = 8", "il_tf.training.network.layers = 3",
        "il_tf.training.train.epochs = 1", "il_tf.training.train.batch_size = 32",
        "il_tf.training.train.steps_per_epoch = 2", "il_tf.training.train.steps_per_loop = 2",
        "il_tf.training.train.interactive = False", *bindings])
    return training.train(model_dir)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_retraining_runs_end_to_end(data_dir, tmp_path, precision):
    result = _retrain(data_dir, str(tmp_path / "run"),
                      f"il_tf.training.train.mixed_precision = '{precision}'")
    assert np.isfinite(result["train_loss"]) and 0.0 <= result["test_error"] <= 1.0
    assert keras.mixed_precision.global_policy().name == "float32"  # restored afterwards
    reader = tf.train.load_checkpoint(str(tmp_path / "run" / "checkpoints"))
    assert any("loss_scale" in k for k in reader.get_variable_to_shape_map())


@pytest.mark.slow
def test_jit_compiled_retraining_runs_end_to_end(data_dir, tmp_path):
    result = _retrain(data_dir, str(tmp_path / "run"), "il_tf.training.train.jit_compile = True")
    assert np.isfinite(result["train_loss"]) and 0.0 <= result["test_error"] <= 1.0
