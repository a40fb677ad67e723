"""Learning-strategy baselines, the chained hypergradient, and tools/compare.py.

One tiny supernet (C=2, 2 cells, 8x8 images, batches of 4); every optimiser shares the first
one's traced gradient pass. The strategies' schedules are checked by running iterations
eagerly and watching which heads move, which anchors are set and what each learner reports.
"""
import json
import os
import subprocess
import sys

import il_tf  # pylint: disable=unused-import  # quiet TensorFlow import
import gin
import numpy as np
import pytest
import tensorflow as tf

from il_tf import config
import conftest
from il_tf.learning import interleaving
from il_tf.learning import strategies

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, BATCH = 8, 4
STRATEGIES = strategies.STRATEGIES


@pytest.fixture(scope="module")
def net():
    return conftest.tiny_supernet(2, 2, SIZE)


@pytest.fixture(scope="module")
def make_opt(net):
    """make_opt(**settings): a K=2 optimiser (3 and 4 classes), 2 epochs of 2 iterations,
    all sharing one traced gradient pass; alphas reset to the module's start each time."""
    shared, alphas = [], [v.numpy() for v in net.architecture_variables]

    def make(**kw):
        for v, value in zip(net.architecture_variables, alphas):
            v.assign(value)
        opt = interleaving.InterleavingOptimizer(net, [3, 4], tf.distribute.get_strategy(),
                                                 steps_per_epoch=2, epochs=2, **kw)
        if shared:
            opt.fn = shared[0]
        else:
            shared.append(opt.fn)
        return opt

    return make


def _batch(seed, num_classes, n=BATCH):
    rng = np.random.RandomState(seed)
    return (tf.constant(rng.randn(n, SIZE, SIZE, 3).astype(np.float32)),
            tf.constant(rng.randint(0, num_classes, n).astype(np.int32)))


# ------------------------------------------------------------------------ the schedules

def test_schedule_statement():
    s = strategies.schedule
    S = strategies.Stage
    assert s("interleaved", 2, 0, 4) == [S((0,), False), S((1,), True)]
    assert s("interleaved", 2, 3, 4) == [S((0,), True), S((1,), True)]
    assert s("interleaved", 1, 3, 4) == [S((0,), False)]  # K = 1: DARTS
    # Blocked, N = 4, K = 2: learner 1 in iterations 0-1, learner 2 in 2-3 (anchor at 2).
    assert [s("blocked", 2, i, 4) for i in range(4)] == [
        [S((0,), False)] * 2, [S((0,), False)] * 2,
        [S((1,), True), S((1,), False)], [S((1,), False)] * 2]
    assert [strategies.block_learner(i, 3, 7) for i in range(7)] == [0, 0, 0, 1, 1, 2, 2]
    assert s("multitask", 3, 5, 9) == [S((0, 1, 2), False)] * 3
    assert s("single", 2, 1, 4) == [S((0,), False)] * 2
    assert strategies.hypergradient_learners("single", 3) == (0,)
    assert strategies.hypergradient_learners("blocked", 3) == (0, 1, 2)
    assert strategies.train_batches_per_learner("interleaved", 2, 3) == 3
    assert strategies.train_batches_per_learner("multitask", 2, 3) == 6
    with pytest.raises(ValueError, match="learning_strategy"):
        strategies.check("alternating")


def test_bad_settings_fail(make_opt):
    with pytest.raises(ValueError, match="learning_strategy"):
        make_opt(learning_strategy="curriculum")
    with pytest.raises(ValueError, match="exact"):
        make_opt(chained=True)  # hessian='joint'
    with pytest.raises(ValueError, match="interleaved"):
        make_opt(hessian="exact", chained=True, learning_strategy="blocked")


@pytest.mark.parametrize("name", STRATEGIES)
def test_each_strategy_follows_its_schedule(make_opt, name):
    """4 iterations (2 epochs x 2): the heads that move are the stage trainers', each
    hand-over anchors the receiving learner on the encoder it received, and the per-learner
    outputs say who trained (count) and whose hypergradient was used (val loss)."""
    opt = make_opt(order=1, learning_strategy=name)
    K, N = 2, opt.total_iterations
    # The training batches each learner can use: 1 (interleaved) or K stages x 1 step.
    assert opt.train_batches_per_learner == (1 if name == "interleaved" else 2)
    batches = [([_batch(10 * k + 1 + j, n) for j in range(opt.train_batches_per_learner)],
                _batch(10 * k + 5, n)) for k, n in enumerate([3, 4])]
    trained_ever = set()
    for i in range(N):
        plan = strategies.schedule(name, K, i, N)
        heads = [l.head.numpy() for l in opt.learners]
        anchored = [l.has_anchor.numpy() for l in opt.learners]
        encoder = opt.encoder.numpy()
        out = {k: v.numpy() for k, v in opt.replica_iteration(batches).items()}
        trainers = {k for stage in plan for k in stage.trainers}
        trained_ever |= trainers
        moved = {k for k, l in enumerate(opt.learners)
                 if not np.array_equal(l.head.numpy(), heads[k])}
        assert moved == trainers, (i, moved)
        stages_of = [sum(k in st.trainers for st in plan) for k in range(K)]
        assert list(out["train_count"]) == [BATCH * n for n in stages_of], i
        assert all(np.isfinite(out["train_loss"]))
        used = strategies.hypergradient_learners(name, K)
        assert [v != 0 for v in out["search_val_loss"]] == [k in used for k in range(K)]
        # Anchors: set exactly at hand-overs (learners never handed to stay unanchored).
        for k, learner in enumerate(opt.learners):
            handed = any(st.handover and k in st.trainers for st in plan)
            if handed:
                assert learner.has_anchor.numpy() == 1.0
            else:
                assert learner.has_anchor.numpy() == anchored[k], (i, k)
        if name == "blocked" and plan[0].handover:  # received the encoder of the last block
            np.testing.assert_array_equal(opt.learners[1].anchor.numpy(), encoder)
        if name == "interleaved" and i > 0:  # learner 1 received learner 2's encoder
            np.testing.assert_array_equal(opt.learners[0].anchor.numpy(), encoder)
            np.testing.assert_array_equal(opt.learners[1].anchor.numpy(),
                                          opt.learners[0].encoder.numpy())
        if name == "multitask":  # one shared encoder, one shared momentum buffer
            for learner in opt.learners:
                np.testing.assert_array_equal(learner.encoder.numpy(), opt.encoder.numpy())
                np.testing.assert_array_equal(learner.encoder_momentum.numpy(),
                                              opt.learners[0].encoder_momentum.numpy())
    assert int(opt.iteration.numpy()) == N
    assert int(opt.stages_done.numpy()) == N * K
    assert trained_ever == ({0} if name == "single" else {0, 1})
    if name in ("multitask", "single"):
        assert all(l.has_anchor.numpy() == 0.0 for l in opt.learners)


def test_multitask_step_is_the_summed_loss(make_opt):
    """One multitask step moves the encoder along -lr * clip(sum_k grad L_k + wd W)."""
    opt = make_opt(order=1, learning_strategy="multitask", grad_clip=1e9)
    w = opt.encoder.numpy()
    b0, b1 = _batch(1, 3), _batch(2, 4)
    alphas = [tf.convert_to_tensor(a) for a in opt.alphas]
    total = 0.0
    for learner, (x, y) in zip(opt.learners, (b0, b1)):
        wt = tf.constant(w)
        with tf.GradientTape() as tape:
            tape.watch(wt)
            loss = opt.fn.training_loss(wt, learner.head.read_value(), alphas, x, y, 1 / BATCH)
        total = total + tape.gradient(loss, wt).numpy()
    opt.weight_stage(opt.learners, [[b0], [b1]], tf.constant(False))
    lr = float(opt.learning_rate())
    expected = w - lr * (total + opt.weight_decay * w)
    np.testing.assert_allclose(opt.encoder.numpy(), expected, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------- the chained hypergradient

XI, PROXIMITY, FD_STEP = 0.1, 5.0, 1e-4  # 2 lam xi = 1: the anchor's pull dominates theta'


def _chained_setup(opt):
    """Learner 2 anchored on learner 1's encoder (as after an interleaved hand-over), with
    its own W_2, head and momentum; a batch for each learner's step and a val batch."""
    rng = np.random.RandomState(1)
    first, second = opt.learners
    w1 = first.encoder.numpy()
    first.head.assign(0.3 * rng.randn(*first.head.shape).astype(np.float32))
    second.head.assign(0.3 * rng.randn(*second.head.shape).astype(np.float32))
    second.encoder.assign(w1 + 0.02 * rng.randn(*w1.shape).astype(np.float32))
    second.encoder_momentum.assign(0.05 * rng.randn(*w1.shape).astype(np.float32))
    second.anchor.assign(w1)
    second.has_anchor.assign(1.0)
    return first, second, _batch(20, 3), _batch(21, 4), _batch(22, 4, n=BATCH - 1)


def _chained_objective(opt, alphas, a0, setup):
    """F(A) = L_val(theta'(A), A) with anchor(A) = anchor + s(A) - s(A0),
    s(A) = -xi grad_W L_1(W_1, H_1, A), written with plain eager tapes."""
    first, second, prev_batch, train, val = setup

    def grad_w(w, h, a, batch):
        w = tf.constant(w)
        with tf.GradientTape() as tape:
            tape.watch(w)
            loss = opt.fn.training_loss(w, tf.constant(h), [tf.constant(v) for v in a],
                                        batch[0], batch[1], 1.0 / int(batch[1].shape[0]))
        return tape.gradient(loss, w).numpy()

    def grads_wh(w, h, a, batch):
        w, h = tf.constant(w), tf.constant(h)
        with tf.GradientTape() as tape:
            tape.watch([w, h])
            loss = opt.fn.training_loss(w, h, [tf.constant(v) for v in a],
                                        batch[0], batch[1], 1.0 / int(batch[1].shape[0]))
        return [g.numpy() for g in tape.gradient(loss, [w, h])]

    w1, h1 = first.encoder.numpy(), first.head.numpy()
    shift = -XI * (grad_w(w1, h1, alphas, prev_batch) - grad_w(w1, h1, a0, prev_batch))
    w, h = second.encoder.numpy(), second.head.numpy()
    gw, gh = grads_wh(w, h, alphas, train)
    anchor = second.anchor.numpy() + shift
    wv = w - XI * (0.9 * second.encoder_momentum.numpy() + gw + 2 * PROXIMITY * (w - anchor))
    hv = h - XI * (0.9 * second.head_momentum.numpy() + gh + opt.weight_decay * h)
    return float(opt.fn.training_loss(tf.constant(wv), tf.constant(hv),
                                      [tf.constant(v) for v in alphas], val[0], val[1],
                                      1.0 / int(val[1].shape[0])))


def test_chained_hypergradient_matches_finite_differences(make_opt):
    """chained=True: g_2 = dF/dA including the anchor's dependence on A (learner 1's step);
    the truncated g_2 (anchor constant) is measurably off the same finite differences."""
    settings = dict(hessian="exact", weight_lr=XI, weight_lr_min=XI, proximity=PROXIMITY)
    opt = make_opt(chained=True, **settings)
    setup = _chained_setup(opt)
    first, second, prev_batch, train, val = setup
    g, _ = opt.learner_hypergradient(second, train, val, previous=(first, prev_batch))
    truncated, _ = opt.learner_hypergradient(second, train, val)  # previous=None: as before
    g = [a.numpy() for a in g]
    truncated = [a.numpy() for a in truncated]
    a0 = [a.numpy() for a in opt.alphas]
    rng = np.random.RandomState(3)
    directions = [[rng.randn(*a.shape).astype(np.float32) for a in a0] for _ in range(4)]
    directions.append(g)
    fd, ours, trunc = [], [], []
    f0 = _chained_objective(opt, a0, a0, setup)
    for u in directions:
        norm = np.sqrt(sum(np.sum(d.astype(np.float64) ** 2) for d in u))
        u = [d / norm for d in u]
        plus = _chained_objective(opt, [a + FD_STEP * d for a, d in zip(a0, u)], a0, setup)
        minus = _chained_objective(opt, [a - FD_STEP * d for a, d in zip(a0, u)], a0, setup)
        assert abs((plus - f0) - (f0 - minus)) / FD_STEP < 0.2 * abs(plus - minus) / FD_STEP \
            + 1e-3  # no kink of F inside the step
        fd.append((plus - minus) / (2 * FD_STEP))
        ours.append(sum(np.sum(a * d) for a, d in zip(g, u)))
        trunc.append(sum(np.sum(a * d) for a, d in zip(truncated, u)))
    fd, ours, trunc = map(np.array, (fd, ours, trunc))
    err = np.linalg.norm(ours - fd) / np.linalg.norm(fd)
    err_truncated = np.linalg.norm(trunc - fd) / np.linalg.norm(fd)
    assert err < 0.05, (err, err_truncated)
    assert err_truncated > 4 * err and err_truncated > 0.1, (err, err_truncated)


# ------------------------------------------------------------------------ tools/compare.py

def _fake_run(path, losses, accs, genotype_ops, seconds=2.0, inputs=(0, 1, 0, 1)):
    os.makedirs(path)
    genotype = {"format_version": 1,
                "normal": [[op, j] for op, j in zip(genotype_ops, inputs)],
                "normal_concat": [2, 3], "reduce": [["max_pool_3x3", 0], ["skip_connect", 1]] * 2,
                "reduce_concat": [2, 3]}
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"epoch": 0, "iteration": 0, "learners": ["a", "b"],
                            "val_loss": [2.0, 2.1], "val_acc": [0.2, 0.2]}) + "\n")
        for e, (l, a) in enumerate(zip(losses, accs)):
            f.write(json.dumps({"epoch": e + 1, "iteration": 5 * (e + 1),
                                "learners": ["a", "b"], "val_loss": l, "val_acc": a,
                                "val_loss_sum": sum(l), "seconds": seconds,
                                "genotype": genotype}) + "\n")
    with open(os.path.join(path, "genotype.json"), "w") as f:
        json.dump(genotype, f)


def _compare(args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "compare.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_compare_writes_table_and_plot(tmp_path):
    a, b = str(tmp_path / "interleaved"), str(tmp_path / "blocked")
    ops = ["sep_conv_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_5x5"]
    _fake_run(a, [[1.5, 1.6], [1.0, 1.2]], [[0.5, 0.4], [0.7, 0.6]], ops)
    _fake_run(b, [[1.7, 1.8]], [[0.4, 0.3]], ["max_pool_3x3"] + ops[1:], seconds=3.0)
    # Node 2's two inputs in the other order (by weight), node 3 taking node 2's output: the
    # same edges but one.
    c = str(tmp_path / "swapped")
    _fake_run(c, [[1.7, 1.8]], [[0.4, 0.3]], [ops[1], ops[0], ops[2], ops[3]], inputs=(1, 0, 0, 2))
    out = str(tmp_path / "cmp")
    result = _compare([f"--model_dir={a}", f"--model_dir={b}", f"--model_dir={c}",
                       f"--out={out}"])
    assert result.returncode == 0, result.stderr
    table = open(os.path.join(out, "compare.md")).read()
    assert table.strip() in result.stdout
    assert "| interleaved | 2 | 2.2000 | 0.700, 0.600 | 4.0 | - |" in table
    assert "| blocked | 1 | 3.5000 | 0.400, 0.300 | 3.0 | 1 |" in table  # 1 edge differs
    assert "| swapped | 1 | 3.5000 | 0.400, 0.300 | 2.0 | 1 |" in table
    assert "sep_conv_3x3" in table and "max_pool_3x3" in table
    with open(os.path.join(out, "val_curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_compare_one_line_errors(tmp_path):
    missing = _compare([f"--model_dir={tmp_path / 'nothing'}", f"--out={tmp_path / 'o'}"])
    assert missing.returncode != 0
    assert "metrics.jsonl" in missing.stderr and "Traceback" not in missing.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"epoch": 0,\n')
    corrupt = _compare([f"--model_dir={bad}", f"--out={tmp_path / 'o'}"])
    assert corrupt.returncode != 0
    assert "line 1" in corrupt.stderr and "Traceback" not in corrupt.stderr


# ------------------------------------------------------------------------ end to end

@pytest.mark.parametrize("name", STRATEGIES)
def test_shipped_offline_ablation_runs(tmp_path, name):
    """gin_configs/ablations/<name>_digits.gin, shrunk: 1 epoch of 2 iterations, C = 2, 2 cells."""
    from il_tf.learning import search as search_lib  # pylint: disable=g-import-not-at-top
    gin.clear_config()
    try:
        config.parse(
            [f"ablations/{name}_digits.gin"],
            ["il_tf.search.epochs = 1", "il_tf.search.max_steps_per_epoch = 2",
             "il_tf.search.channels = 2", "il_tf.search.layers = 2",
             "il_tf.search.batch_size = 8",
             "il_tf.search.verbose = 0", "il_tf.search.draw_pictures = False",
             f"il_tf.data.tfds_config.data_dir = '{tmp_path / 'tfds'}'"])
        assert gin.query_parameter(
            "il_tf.learning.InterleavingOptimizer.learning_strategy") == name
        record = search_lib.search(str(tmp_path / "run"))
    finally:
        gin.clear_config()
    assert record["epoch"] == 1 and np.isfinite(record["val_loss_sum"])
    assert os.path.getsize(tmp_path / "run" / "genotype.json") > 0
