"""Tests of the interleaving multi-level optimiser (il_tf.learning; PAPER.md eqs. 1-4).

One tiny supernet (C=2, 2 cells, 8x8 images, batches of 4) serves every test, and every
optimiser configuration shares its traced gradient pass (one trace). References are written
here with plain `tf.GradientTape`s on `SupernetFunctions.training_loss` (eager), independent
of `InterleavingOptimizer`'s internals. float32 throughout, so finite-difference steps and
tolerances are chosen for it (stated at each test). The 2-replica MirroredStrategy check runs
in a subprocess (`tests/_two_replicas.py`: logical CPUs must be set before TensorFlow starts),
started at import so that it overlaps with the in-process tests.
"""
import json
import os
import subprocess
import sys

import il_tf  # pylint: disable=unused-import  # quiet TensorFlow import
import numpy as np
import pytest
import tensorflow as tf

import conftest
from il_tf import runtime
from il_tf.learning import interleaving
from il_tf.search_space import ops as ops_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHANNELS, LAYERS, SIZE, BATCH = 2, 2, 8, 4
MOMENTUM = 0.9


def _start_two_replicas():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "_two_replicas.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=REPO)


_TWO_REPLICAS = _start_two_replicas()


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def net():
    return conftest.tiny_supernet(CHANNELS, LAYERS, SIZE)


@pytest.fixture(scope="module")
def smooth_net():
    """The same supernet with its kinks removed (`ops.kink_free`: softplus(4x)/4 for every
    ReLU, average for max pooling), so that its loss is twice differentiable (see "eq. 4:
    g_k" below)."""
    with ops_lib.kink_free():
        return conftest.tiny_supernet(CHANNELS, LAYERS, SIZE)


def _optimizer_factory(net):
    """make(num_classes, **settings): one optimiser per configuration, reset to its initial
    state on every request; all share the first one's traced gradient pass."""
    cache, shared = {}, []

    def make(num_classes, **kw):
        key = (tuple(num_classes), tuple(sorted(kw.items())))
        if key not in cache:
            opt = interleaving.InterleavingOptimizer(
                net, list(num_classes), tf.distribute.get_strategy(), steps_per_epoch=10,
                epochs=2, **kw)
            if shared:
                opt.fn = shared[0]  # The same supernet definition: one trace for all.
            else:
                shared.append(opt.fn)
            cache[key] = (opt, [v.numpy() for v in opt.variables])
        opt, initial = cache[key]
        for v, value in zip(opt.variables, initial):
            v.assign(value)
        return opt

    return make


@pytest.fixture(scope="module")
def make_opt(net):
    return _optimizer_factory(net)


@pytest.fixture(scope="module")
def make_smooth_opt(smooth_net):
    return _optimizer_factory(smooth_net)


@pytest.fixture(autouse=True)
def _restore_alphas(net, smooth_net):
    """Every optimiser built on a net shares its alphas; each test starts from the same."""
    variables = net.architecture_variables + smooth_net.architecture_variables
    saved = [v.numpy() for v in variables]
    yield
    for v, value in zip(variables, saved):
        v.assign(value)


def _batch(seed, num_classes, n=BATCH):
    rng = np.random.RandomState(seed)
    return (tf.constant(rng.randn(n, SIZE, SIZE, 3).astype(np.float32)),
            tf.constant(rng.randint(0, num_classes, n).astype(np.int32)))


def _alphas(opt):
    return [tf.convert_to_tensor(a) for a in opt.alphas]


def _loss_and_grads(opt, w, h, alphas, batch, wrt):
    """Plain-tape reference: the training-mode mean loss and its gradients w.r.t. `wrt`
    (names among "w", "h", "a")."""
    x, y = batch
    w, h = tf.convert_to_tensor(w), tf.convert_to_tensor(h)
    alphas = [tf.convert_to_tensor(a) for a in alphas]
    with tf.GradientTape() as tape:
        tape.watch([w, h, alphas])
        loss = opt.fn.training_loss(w, h, alphas, x, y, 1.0 / int(y.shape[0]))
    sources = {"w": w, "h": h, "a": alphas}
    grads = tape.gradient(loss, [sources[k] for k in wrt],
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return loss, grads


def _state(opt):
    """Every variable of the optimiser by a readable name, as numpy."""
    out = {"alphas_normal": opt.alphas[0].numpy(), "alphas_reduce": opt.alphas[1].numpy(),
           "encoder": opt.encoder.numpy(), "stats": opt.stats.numpy(),
           "adam_m": np.concatenate([m.numpy().ravel() for m in opt.arch_optimizer.m]),
           "adam_v": np.concatenate([v.numpy().ravel() for v in opt.arch_optimizer.v]),
           "adam_step": opt.arch_optimizer.step.numpy(),
           "iteration": opt.iteration.numpy(), "stages_done": opt.stages_done.numpy()}
    for k, learner in enumerate(opt.learners):
        for name in ("head", "encoder", "stats", "anchor", "has_anchor", "encoder_momentum",
                     "head_momentum"):
            out[f"{k}.{name}"] = getattr(learner, name).numpy()
    return out


def _changed(before, after):
    return {k for k in before if not np.array_equal(before[k], after[k])}


def _rel(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# ------------------------------------------------------------------------ eq. 4: g_k
#
# What finite differences can check. The DARTS supernet's ReLUs and max pools make
# grad_theta L_train(theta, A) piecewise smooth in A and theta, with jumps where an
# activation crosses zero or a pool's argmax switches. Measured on the tiny supernet:
#  - along theta + s v/||v||, grad_A L_train jumps by ~1e-3 every ~1e-3 of s, so DARTS's
#    finite-difference Hessian-vector product (eps ||v|| = 0.01) measures those jumps, not
#    the derivative: `joint` and `split` are 90-94% off d F / dA (F(A) = L_val(theta'(A), A),
#    relative error of the directional derivatives below), `exact` 1.4%; with the ReLUs
#    smoothed but the max pools kept, still 94% (`exact` 5%).
#  - F itself jumps (by ~0.4 xi) every ~5e-3 of a unit step in A.
# So the three hypergradients are checked against central differences of F on the same tiny
# supernet made smooth (`ops.kink_free`: softplus(4x)/4, average pooling), where all three
# are approximations of one derivative (measured: joint 1.3%, split 1.3%, exact 1.4%). On the
# real (ReLU) supernet `joint` and `split` are checked to compute eq. 4's formula exactly
# (the same finite differences written out with plain tapes, at the same eps), which is also
# where the two can be told apart. FD_STEP = 1e-4 in A: float32 rounding of F (~1e-7) then
# costs ~1e-3 per directional derivative, <1% of their size.

XI = 0.025        # xi (the paper's weight lr); the second-order term is most of g_k even so
PROXIMITY = 0.5   # lam, large so that the anchor's pull on theta' shows in g_k
FD_STEP = 1e-4    # central-difference step in A along a unit direction (see above)
DIRECTIONS = 4    # random unit directions in A (the gradient's own is added per test)


def _hyper_setup(opt):
    """Learner 1 of a K=2 optimiser with a head drawn here (heads are drawn per optimiser),
    non-zero momentum buffers and an anchor; a train batch and a val batch of another size."""
    learner = opt.learners[0]
    rng = np.random.RandomState(1)
    w = learner.encoder.numpy()  # the supernet's initial weights, the same in every optimiser
    learner.head.assign(0.3 * rng.randn(*learner.head.shape).astype(np.float32))
    learner.encoder_momentum.assign(0.05 * rng.randn(*w.shape).astype(np.float32))
    learner.head_momentum.assign(0.05 * rng.randn(*learner.head.shape).astype(np.float32))
    learner.anchor.assign(w + 0.05 * rng.randn(*w.shape).astype(np.float32))
    learner.has_anchor.assign(1.0)
    return learner, _batch(10, 3), _batch(11, 3, n=BATCH - 1)


def _virtual_weights(opt, learner, alphas, train, momentum=True, anchor=True):
    """theta' = theta - xi (mu buf + grad L_tr + grad r): r's gradient is 2 lam (W - anchor)
    on the anchored encoder and wd * H on the head (PAPER.md, "The regulariser")."""
    w, h = learner.encoder.numpy(), learner.head.numpy()
    _, (gw, gh) = _loss_and_grads(opt, w, h, alphas, train, "wh")
    rw = 2 * PROXIMITY * (w - learner.anchor.numpy()) if anchor else opt.weight_decay * w
    mu = MOMENTUM if momentum else 0.0
    w1 = w - XI * (mu * learner.encoder_momentum.numpy() + gw.numpy() + rw)
    h1 = h - XI * (mu * learner.head_momentum.numpy() + gh.numpy() + opt.weight_decay * h)
    return w1, h1


def _virtual_val_loss(opt, learner, alphas, train, val, **kw):
    """F(A) = L_val(theta'(A), A), the upper-level objective eq. 4 differentiates."""
    w1, h1 = _virtual_weights(opt, learner, alphas, train, **kw)
    x, y = val
    return float(opt.fn.training_loss(w1, h1, [tf.constant(a) for a in alphas], x, y,
                                      1.0 / int(y.shape[0])))


def _directional_fd(opt, learner, train, val, directions, step=None, **kw):
    """Central differences of F along each unit direction, and the largest disagreement of
    the two one-sided differences (large if a jump of F lies within the step)."""
    alphas = [a.numpy() for a in _alphas(opt)]
    step = step or FD_STEP
    f0 = _virtual_val_loss(opt, learner, alphas, train, val, **kw)
    out, one_sided = [], 0.0
    for u in directions:
        plus = _virtual_val_loss(opt, learner, [a + step * d for a, d in zip(alphas, u)],
                                 train, val, **kw)
        minus = _virtual_val_loss(opt, learner, [a - step * d for a, d in zip(alphas, u)],
                                  train, val, **kw)
        out.append((plus - minus) / (2 * step))
        one_sided = max(one_sided, abs((plus - f0) - (f0 - minus)) / step)
    return np.array(out), one_sided


def _random_directions(opt, count=DIRECTIONS):
    rng = np.random.RandomState(2)
    return [_unit([rng.randn(*a.shape).astype(np.float32) for a in opt.alphas])
            for _ in range(count)]


def _unit(arrays):
    arrays = [np.asarray(a, np.float32) for a in arrays]
    norm = np.sqrt(sum(np.sum(a.astype(np.float64) ** 2) for a in arrays))
    return [a / norm for a in arrays]


def _project(g, directions):
    return np.array([sum(np.sum(np.asarray(gi, np.float64) * d) for gi, d in zip(g, u))
                     for u in directions])


def _flat(g):
    return np.concatenate([np.asarray(a).ravel() for a in g])


def _first_order_at_virtual(opt, learner, train, val):
    """grad_A L_val(theta', A) with theta' held fixed: eq. 4 without its Hessian term."""
    alphas = _alphas(opt)
    w1, h1 = _virtual_weights(opt, learner, alphas, train)
    _, (ga,) = _loss_and_grads(opt, w1, h1, alphas, val, "a")
    return [a.numpy() for a in ga]


@pytest.fixture(scope="module")
def hyper_reference(make_smooth_opt):
    """On the smooth net: central differences of F along random directions, and of F with the
    momentum term or the anchor left out of theta' (a g_k that ignored either would match
    those instead)."""
    opt = make_smooth_opt((3, 4), order=2, hessian="joint", weight_lr=XI, proximity=PROXIMITY)
    learner, train, val = _hyper_setup(opt)
    directions = _random_directions(opt)
    ref = {"directions": directions,
           "val_loss": _virtual_val_loss(opt, learner, _alphas(opt), train, val)}
    for name, kw in (("fd", {}), ("fd_no_momentum", {"momentum": False}),
                     ("fd_no_anchor", {"anchor": False})):
        ref[name], ref[name + "_one_sided"] = _directional_fd(opt, learner, train, val,
                                                              directions, **kw)
    ref["first_order"] = _project(_first_order_at_virtual(opt, learner, train, val),
                                  directions)
    return ref


# Relative error of the directional derivatives along the random directions (measured on the
# smooth net: joint 1.3%, split 1.3%, exact 1.4%), and of the one along g itself, ||g||.
HYPER_TOLERANCE = 0.03


def test_smooth_net_has_no_kinked_functions_left(net, smooth_net):
    """`ops.kink_free` really swapped the kinked functions (else the checks below prove
    nothing about smoothness): no max pool is left and the convs' activations are replaced;
    the real net, built outside the context, keeps both."""
    for model, kink_free in ((smooth_net, True), (net, False)):
        layers = list(runtime.flatten_layers(model))
        pools = [l.kind for l in layers if isinstance(l, ops_lib.Pool)]
        assert pools and ("max" in pools) != kink_free
        swapped = [isinstance(l, ops_lib.Composite)
                   and l.activation is not ops_lib.Composite.activation for l in layers]
        assert sum(swapped) > 10 if kink_free else not any(swapped)


@pytest.mark.parametrize("hessian", ["exact", "joint", "split"])
def test_second_order_hypergradient_matches_finite_differences(make_smooth_opt,
                                                               hyper_reference, hessian):
    """Each Hessian mode's g_k matches d/dA L_val(theta'(A), A) (eq. 4) by central
    differences, with the momentum buffer and the anchor in theta'."""
    opt = make_smooth_opt((3, 4), order=2, hessian=hessian, weight_lr=XI, proximity=PROXIMITY)
    learner, train, val = _hyper_setup(opt)
    before = _state(opt)
    g, val_loss = opt.learner_hypergradient(learner, train, val)
    assert _changed(before, _state(opt)) == set()  # computing g_k changes nothing
    # The val batch is smaller than the train batch: each loss has its own 1/batch.
    assert float(val_loss) == pytest.approx(hyper_reference["val_loss"], rel=1e-5)
    g = [a.numpy() for a in g]
    norm = np.linalg.norm(_flat(g))
    fd = hyper_reference["fd"]
    assert hyper_reference["fd_one_sided"] < 0.1 * norm  # F is smooth at the step's scale
    assert _rel(_project(g, hyper_reference["directions"]), fd) < HYPER_TOLERANCE
    # Along g itself the derivative is ||g||. (Not a step below FD_STEP: at 1e-5, F's float32
    # rounding alone (8 ulps, seen with oneDNN's kernels) already made one_sided 0.19.)
    along, one_sided = _directional_fd(opt, learner, train, val, [_unit(g)])
    assert one_sided < 0.1 * norm
    assert abs(along[0] - norm) / norm < HYPER_TOLERANCE


def test_the_finite_difference_check_can_tell(hyper_reference):
    """Leaving the momentum (measured 21% off) or the anchor (12%) out of theta', or the whole
    second-order term out of g_k (the first-order gradient at theta', 39%), would fail the
    check above."""
    fd = hyper_reference["fd"]
    for name in ("fd_no_momentum", "fd_no_anchor", "first_order"):
        assert _rel(hyper_reference[name], fd) > 3 * HYPER_TOLERANCE, name


def _eq4_finite_differences(opt, learner, train, val, split):
    """Eq. 4 as PAPER.md writes it, with plain tapes: g = grad_A L_val(theta') - xi Hv,
    Hv = [grad_A L_tr(theta + eps v) - grad_A L_tr(theta - eps v)] / (2 eps),
    eps = 0.01 / ||v||, v = grad_theta' L_val(theta'); `split`: the encoder part and the head
    part of v each with its own eps."""
    alphas = _alphas(opt)
    w, h = learner.encoder.numpy(), learner.head.numpy()
    w1, h1 = _virtual_weights(opt, learner, alphas, train)
    _, (vw, vh, ga) = _loss_and_grads(opt, w1, h1, alphas, val, "wha")
    vw, vh = vw.numpy(), vh.numpy()
    parts = [(vw, 0 * vh), (0 * vw, vh)] if split else [(vw, vh)]
    hv = [np.zeros(a.shape, np.float32) for a in alphas]
    for dw, dh in parts:
        eps = 0.01 / np.sqrt(np.sum(dw ** 2) + np.sum(dh ** 2))
        _, (gp,) = _loss_and_grads(opt, w + eps * dw, h + eps * dh, alphas, train, "a")
        _, (gm,) = _loss_and_grads(opt, w - eps * dw, h - eps * dh, alphas, train, "a")
        hv = [acc + (p.numpy() - m.numpy()) / (2 * eps) for acc, p, m in zip(hv, gp, gm)]
    return [a.numpy() - XI * b for a, b in zip(ga, hv)]


@pytest.mark.parametrize("hessian", ["joint", "split"])
def test_finite_difference_hypergradient_is_eq4(make_opt, hessian):
    """On the real (ReLU, max-pool) supernet, hessian='joint' (DARTS's, two passes) and
    'split' (the IL code's, four passes) compute eq. 4's finite-difference formula, through
    the momentum, anchored virtual step."""
    opt = make_opt((3, 4), order=2, hessian=hessian, weight_lr=XI, proximity=PROXIMITY)
    learner, train, val = _hyper_setup(opt)
    before = _state(opt)
    g, val_loss = opt.learner_hypergradient(learner, train, val)
    assert _changed(before, _state(opt)) == set()  # computing g_k changes nothing
    assert float(val_loss) == pytest.approx(
        _virtual_val_loss(opt, learner, [a.numpy() for a in _alphas(opt)], train, val),
        rel=1e-5)
    ours = _flat([a.numpy() for a in g])
    ref = _flat(_eq4_finite_differences(opt, learner, train, val, hessian == "split"))
    # float32 rounding (graph vs eager, ~1e-7) amplified by 1 / (2 eps) ~ ||v|| / 0.02
    # (measured 8e-6).
    assert _rel(ours, ref) < 1e-3
    # The check can tell joint from split (measured 1.05% apart here) and from a gradient
    # without the Hessian term (97% of g_k at this xi).
    other = _flat(_eq4_finite_differences(opt, learner, train, val, hessian != "split"))
    assert _rel(other, ref) > 5e-3
    assert _rel(_flat(_first_order_at_virtual(opt, learner, train, val)), ref) > 0.5


def test_first_order_gradient_is_the_direct_one(make_opt):
    """order=1: g_k = grad_A L_val(W_k, H_k, A) at the learner's own weights (xi = 0)."""
    opt = make_opt((3, 4), order=1, weight_lr=XI, proximity=PROXIMITY)
    learner, train, val = _hyper_setup(opt)
    g, val_loss = opt.learner_hypergradient(learner, train, val)
    loss, (ga,) = _loss_and_grads(opt, learner.encoder, learner.head, _alphas(opt), val, "a")
    assert float(val_loss) == pytest.approx(float(loss), rel=1e-5)
    for ours, ref in zip(g, ga):
        np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-4, atol=1e-6)
    assert np.abs(ga[1].numpy()).max() > 1e-3  # a real gradient, not zeros


# ------------------------------------------------------------------ gradient flow per level

def test_gradient_flow_and_hand_over(make_opt):
    """Which variable groups each step touches, and the anchors of the hand-overs (K=2)."""
    opt = make_opt((3, 4))
    a, b = opt.learners
    batches = [([_batch(20, 3)], _batch(21, 3)), ([_batch(22, 4)], _batch(23, 4))]
    # Stage (1,1) ... is preceded by the architecture step: only A and Adam's slots move.
    s0 = _state(opt)
    opt.architecture_step([(tr[0], val) for tr, val in batches])
    s1 = _state(opt)
    assert _changed(s0, s1) == {"alphas_normal", "alphas_reduce", "adam_m", "adam_v",
                                "adam_step"}
    # Stage (1,1): learner 1 trains the current encoder; no hand-over yet, so no anchor.
    opt.weight_stage(a, batches[0][0])
    s2 = _state(opt)
    assert _changed(s1, s2) == {"encoder", "stats", "0.head", "0.encoder", "0.stats",
                                "0.encoder_momentum", "0.head_momentum", "stages_done"}
    assert s2["0.has_anchor"] == 0.0 and not s2["0.anchor"].any()
    np.testing.assert_array_equal(s2["0.encoder"], s2["encoder"])  # W_1 kept
    np.testing.assert_array_equal(s2["0.stats"], s2["stats"])
    # Stage (1,2): learner 2 receives learner 1's encoder, which becomes its anchor; its
    # step is SGD on L + lam ||W - anchor||^2 + wd/2 ||H||^2 (eq. 3), clipped, momentum.
    w, h = s2["encoder"], s2["1.head"]
    _, (gw, gh) = _loss_and_grads(opt, w, h, _alphas(opt), batches[1][0][0], "wh")
    gw = gw.numpy() + 2 * opt.proximity * (w - s2["0.encoder"])
    gh = gh.numpy() + opt.weight_decay * h
    clip = min(1.0, opt.grad_clip / (np.sqrt(np.sum(gw ** 2) + np.sum(gh ** 2)) + 1e-6))
    lr = float(opt.learning_rate())
    opt.weight_stage(b, batches[1][0])
    s3 = _state(opt)
    assert _changed(s2, s3) == {"encoder", "stats", "1.head", "1.encoder", "1.stats",
                                "1.encoder_momentum", "1.head_momentum", "1.anchor",
                                "1.has_anchor", "stages_done"}
    assert s3["1.has_anchor"] == 1.0
    np.testing.assert_array_equal(s3["1.anchor"], s2["0.encoder"])
    # The step's traced pass and the Keras tape here sum in other orders: a component that is
    # a cancellation of larger terms keeps float32 rounding of the gradient's scale (seen: 2
    # of 24,894 components 1.2e-6 off, 1e-5 of the largest), not of its own size.
    scale = float(np.abs(clip * gw).max())
    np.testing.assert_allclose(s3["1.encoder_momentum"], clip * gw, rtol=1e-4,
                               atol=max(1e-7, 2e-5 * scale))
    np.testing.assert_allclose(s3["1.head_momentum"], clip * gh, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(s3["encoder"], w - lr * clip * gw, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(s3["1.head"], h - lr * clip * gh, rtol=1e-5, atol=1e-7)
    # Stage (2,1): learner 1's anchor is now learner 2's encoder; learner 2 is untouched.
    opt.weight_stage(a, batches[0][0])
    s4 = _state(opt)
    assert s4["0.has_anchor"] == 1.0
    np.testing.assert_array_equal(s4["0.anchor"], s3["1.encoder"])
    assert not {k for k in _changed(s3, s4) if k.startswith("1.") or k.startswith("alphas")}


def test_a_head_gets_gradient_only_from_its_own_learner(make_opt):
    """Learner 1's hypergradient and weight stage do not depend on learner 2's head."""
    opt = make_opt((3, 4))
    a, b = opt.learners
    train, val = _batch(30, 3), _batch(31, 3)
    g0, _ = opt.learner_hypergradient(a, train, val)
    b.head.assign(b.head.numpy() + 1.0)
    b.head_momentum.assign(b.head_momentum.numpy() + 1.0)
    g1, _ = opt.learner_hypergradient(a, train, val)
    for x, y in zip(g0, g1):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    before = _state(opt)
    opt.weight_stage(a, [train])
    after = _state(opt)
    assert not {k for k in _changed(before, after) if k.startswith("1.")}


# -------------------------------------------------------------- K = 1 is second-order DARTS

# Settings amplified from DARTS's so that every term is visible at float32: an active clip
# (the gradient norm is about 1), a weight decay that makes the clip order matter, an
# arch lr that moves A, DARTS's arch L2 (1e-3).
DARTS = dict(order=2, hessian="joint", regularizer_in_clip=False, weight_lr=0.1,
             weight_decay=0.05, grad_clip=0.3, arch_lr=3e-3, arch_weight_decay=1e-3)


def _darts_reference(opt, w, h, alphas, buf_w, buf_h, adam, train, val, regularizer_in_clip):
    """One DARTS iteration (quark0/darts: Architect.step with unrolled=True, then train()'s
    SGD step), written out with plain tapes. Returns the new state and the clip factor."""
    xi, wd, mu = opt.weight_lr, opt.weight_decay, MOMENTUM  # epoch 0 of the cosine schedule
    # _compute_unrolled_model: theta' = theta - xi (mu buf + dL_train + wd theta).
    _, (gw, gh) = _loss_and_grads(opt, w, h, alphas, train, "wh")
    w1 = w - xi * (mu * buf_w + gw.numpy() + wd * w)
    h1 = h - xi * (mu * buf_h + gh.numpy() + wd * h)
    # _backward_step_unrolled: dalpha at theta', v = dL_val/dtheta'.
    _, (vw, vh, ga) = _loss_and_grads(opt, w1, h1, alphas, val, "wha")
    vw, vh = vw.numpy(), vh.numpy()
    # _hessian_vector_product: R = 0.01 / ||v||, central differences of dL_train/dalpha.
    r = 0.01 / np.sqrt(np.sum(vw ** 2) + np.sum(vh ** 2))
    _, (gp,) = _loss_and_grads(opt, w + r * vw, h + r * vh, alphas, train, "a")
    _, (gm,) = _loss_and_grads(opt, w - r * vw, h - r * vh, alphas, train, "a")
    g = [d.numpy() - xi * (p.numpy() - m.numpy()) / (2 * r) for d, p, m in zip(ga, gp, gm)]
    # torch.optim.Adam(lr, betas, weight_decay): L2 added to the gradient, eps outside.
    lr_a, b1, b2, eps = opt.arch_optimizer.learning_rate, 0.5, 0.999, 1e-8
    step = adam["step"] + 1
    new_alphas, ms, vs = [], [], []
    for a, gi, m, v in zip(alphas, g, adam["m"], adam["v"]):
        gi = gi + opt.arch_optimizer.weight_decay * a
        m = b1 * m + (1 - b1) * gi
        v = b2 * v + (1 - b2) * gi ** 2
        denom = np.sqrt(v) / np.sqrt(1 - b2 ** step) + eps
        new_alphas.append(a - lr_a / (1 - b1 ** step) * m / denom)
        ms.append(m)
        vs.append(v)
    # train(): loss at the new alphas, clip_grad_norm_(5 in DARTS), SGD(momentum, wd).
    _, (gw, gh) = _loss_and_grads(opt, w, h, new_alphas, train, "wh")
    gw, gh = gw.numpy(), gh.numpy()
    if regularizer_in_clip:
        gw, gh = gw + wd * w, gh + wd * h
    norm = np.sqrt(np.sum(gw ** 2) + np.sum(gh ** 2))
    clip = min(1.0, opt.grad_clip / (norm + 1e-6))
    gw, gh = gw * clip, gh * clip
    if not regularizer_in_clip:
        gw, gh = gw + wd * w, gh + wd * h
    buf_w, buf_h = mu * buf_w + gw, mu * buf_h + gh
    return dict(w=w - xi * buf_w, h=h - xi * buf_h,
                alphas=new_alphas, buf_w=buf_w, buf_h=buf_h,
                adam=dict(step=step, m=ms, v=vs), arch_grad=g), clip


def test_one_learner_is_second_order_darts(make_opt):
    """Two iterations with K=1 (the second reads the momentum buffer and Adam's state) equal
    DARTS written out here; there is never an anchor."""
    opt = make_opt((3,), **DARTS)
    (learner,) = opt.learners
    strategy = tf.distribute.get_strategy()

    @runtime.step_function
    def iteration(batches):
        return strategy.run(opt.replica_iteration, args=(batches,))

    data = [(_batch(40, 3), _batch(41, 3)), (_batch(42, 3), _batch(43, 3))]
    ref = dict(w=opt.encoder.numpy(), h=learner.head.numpy(),
               alphas=[a.numpy() for a in opt.alphas],
               buf_w=np.zeros_like(opt.encoder.numpy()),
               buf_h=np.zeros_like(learner.head.numpy()),
               adam=dict(step=0, m=[np.zeros_like(a.numpy()) for a in opt.alphas],
                         v=[np.zeros_like(a.numpy()) for a in opt.alphas]))
    for it, (train, val) in enumerate(data):
        start = ref
        ref, clip = _darts_reference(opt, start["w"], start["h"], start["alphas"],
                                     start["buf_w"], start["buf_h"], start["adam"], train, val,
                                     regularizer_in_clip=False)
        assert clip < 0.9  # the clip is active, so its order relative to wd is tested
        t = tf.constant
        stats = opt.fn.gradients(t(opt.encoder.numpy()), t(learner.head.numpy()),
                                 t(opt.stats.numpy()), [t(a) for a in ref["alphas"]], *train,
                                 t(1.0 / BATCH))[5].numpy()
        iteration([([train], val)])
        s = _state(opt)
        assert s["0.has_anchor"] == 0.0 and not s["0.anchor"].any()
        assert s["iteration"] == it + 1 and s["adam_step"] == it + 1
        # Adam's first moment holds (1 - b1) * (sum_k g_k + L2 A): g_k entry by entry.
        np.testing.assert_allclose(s["adam_m"], np.concatenate(
            [m.ravel() for m in ref["adam"]["m"]]), rtol=0.02, atol=1e-6)
        np.testing.assert_allclose(s["adam_v"], np.concatenate(
            [v.ravel() for v in ref["adam"]["v"]]), rtol=0.04, atol=1e-9)
        np.testing.assert_allclose(s["alphas_normal"], ref["alphas"][0], rtol=0, atol=2e-5)
        np.testing.assert_allclose(s["alphas_reduce"], ref["alphas"][1], rtol=0, atol=2e-5)
        for name, key in (("encoder", "w"), ("0.head", "h"), ("0.encoder_momentum", "buf_w"),
                          ("0.head_momentum", "buf_h")):
            assert _rel(s[name], ref[key]) < 1e-4, name
        np.testing.assert_array_equal(s["0.encoder"], s["encoder"])
        np.testing.assert_allclose(s["stats"], stats, rtol=1e-5, atol=1e-6)
    # The check can tell the clip orders apart (the IL code's: wd inside the clip).
    other, _ = _darts_reference(opt, start["w"], start["h"], start["alphas"], start["buf_w"],
                                start["buf_h"], start["adam"], *data[-1],
                                regularizer_in_clip=True)
    assert _rel(other["w"], ref["w"]) > 1e-3


# --------------------------------------------------------- 2 replicas == 1 replica (subprocess)

def test_two_replicas_equal_one():
    """A MirroredStrategy over 2 logical CPUs runs 2 iterations (K=2) to the same state as
    the default strategy on the same global batch: second order (joint) on the kink-free
    twin of the supernet, first order on the real one; see tests/_two_replicas.py for the
    data, the cases and the tolerances."""
    try:
        out, err = _TWO_REPLICAS.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        _TWO_REPLICAS.kill()
        raise
    assert _TWO_REPLICAS.returncode == 0, err[-4000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["replicas"] == [1, 2]
    assert result["exact_refused"]
    assert set(result["cases"]) == {"twin", "real"}
    for name, case in result["cases"].items():
        assert case["anchored"] == [1.0, 1.0], name
        assert case["alphas_moved"] > 1e-5, name
        bad = {k: v for k, v in case["errors"].items() if v > case["tolerance"][k]}
        assert not bad, (name, bad, result)
