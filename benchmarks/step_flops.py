"""Floating-point operations of the search step: one gradient pass, times passes per iteration.

    python benchmarks/step_flops.py --channels=8 --layers=5 --batch=16 --recompute=edges

prints one pass's count as one JSON line (with the per-op-type breakdown);
`benchmarks/search_step.py` imports this for its `gflop_per_iter` and `achieved_gflops`.

One pass is `SupernetFunctions._gradients` (forward, loss, backward, and with the supernet's
`recompute` the recomputed forwards of the backward pass, which are real work and counted),
traced by a plain `tf.function` at the benchmark's static shapes. TensorFlow's profiler
(`tf.compat.v1.profiler.profile` with `ProfileOptionBuilder.float_operation()`, the sum of
each op's registered "flops" statistic) gets two kinds of op wrong in this graph, so the
convolutions and matmuls are counted here from the graph's shapes and the profiler counts
the rest (elementwise, reductions, pooling and their gradients):
- `DepthwiseConv2dNativeBackpropInput` / `...BackpropFilter` have no statistic (count 0);
- `BatchMatMulV2` (the supernet's grouped 1x1 convolutions) reads the attribute `transpose_a`,
  which BatchMatMulV2 does not have (it has `adj_x`): the weight gradient a^T @ g gets the
  wrong inner dimension (8 instead of 16,384 at C=8), far too few FLOPs.
Ops with no statistic (ReLU and its gradient, FusedBatchNorm and its gradient, pads, slices,
concats, transposes, SpaceToBatchND) are left out: memory-bound, a few FLOPs per element.
The count is of the traced graph, before Grappler (which prunes dead or duplicate ops, not
the convolutions).
"""
import collections

import tensorflow as tf

# Counted here from shapes; everything else by the profiler.
_OWN_TYPES = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter",
              "DepthwiseConv2dNative", "DepthwiseConv2dNativeBackpropInput",
              "DepthwiseConv2dNativeBackpropFilter", "MatMul", "BatchMatMulV2",
              "BatchMatMulV3")


def _graph_of_pass(fn, batch: int, image_size: int, num_classes: int = 10):
    """The FuncGraph of one `fn._gradients` pass at static shapes."""
    head = fn.head_layout(num_classes)
    specs = (tf.TensorSpec([fn.weights_layout.size], tf.float32),
             tf.TensorSpec([head.size], tf.float32),
             tf.TensorSpec([fn.stats_layout.size], tf.float32),
             [tf.TensorSpec(a.shape, tf.float32) for a in fn.arch_variables],
             tf.TensorSpec([batch, image_size, image_size, 3], tf.float32),
             tf.TensorSpec([batch], tf.int32),
             tf.TensorSpec([], tf.float32))
    traced = tf.function(fn._gradients, autograph=False)  # pylint: disable=protected-access
    return traced.get_concrete_function(*specs).graph


def _own_flops(op) -> int:
    """2 * multiply-adds of a convolution or matmul (forward or gradient), from shapes."""
    t = op.type
    if t in ("Conv2D", "DepthwiseConv2dNative"):  # per output element: kh * kw (* cin)
        f = op.inputs[1].shape
        per = f[0] * f[1] * (f[2] if t == "Conv2D" else 1)
        return 2 * op.outputs[0].shape.num_elements() * per
    if t.startswith(("Conv2DBackprop", "DepthwiseConv2dNativeBackprop")):
        # As many as the forward: per element of its output (input 2, the incoming
        # gradient), kh * kw (* cin for Conv2D).
        f = op.outputs[0].shape if t.endswith("Filter") else op.inputs[1].shape
        per = f[0] * f[1] * (f[2] if t.startswith("Conv2D") else 1)
        return 2 * op.inputs[2].shape.num_elements() * per
    if t in ("MatMul", "BatchMatMulV2", "BatchMatMulV3"):
        a = op.inputs[0].shape
        k = a[-2] if op.get_attr("transpose_a" if t == "MatMul" else "adj_x") else a[-1]
        return 2 * op.outputs[0].shape.num_elements() * k
    return 0


def _profiler_flops(graph, types=None) -> int:
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output()
    if types:
        options = options.with_accounted_types(list(types))
    return int(tf.compat.v1.profiler.profile(graph, options=options.build()).total_float_ops)


def pass_flops(fn, batch: int, image_size: int, num_classes: int = 10) -> dict:
    """FLOPs of one gradient pass of `fn` (a `SupernetFunctions`) on one learner's batch.

    Returns {"total": own conv/matmul count + the profiler's count of the other ops,
    "conv_matmul": the own count, "profiler_total": the profiler's whole-graph figure (for
    comparison: too low, see the module doc), "by_type": {op type: own count}}.
    """
    graph = _graph_of_pass(fn, batch, image_size, num_classes)
    by_type = collections.Counter()
    for op in graph.get_operations():
        if op.type in _OWN_TYPES:
            by_type[op.type] += int(_own_flops(op))
    profiled = _profiler_flops(graph)
    others = profiled - _profiler_flops(graph, _OWN_TYPES)
    own = sum(by_type.values())
    return {"total": own + others, "conv_matmul": own, "profiler_total": profiled,
            "by_type": dict(by_type)}


def passes_per_iteration(opt) -> int:
    """Gradient passes (`SupernetFunctions.gradients` calls) one iteration of `opt` (an
    `InterleavingOptimizer`, past any architecture warm-up) runs, from `interleaving.py`:

    - architecture step, per learner that contributes (all; "single": learner 1 only):
      order 1: 1 (the validation gradient at W_k); order 2: the virtual step's training
      pass, the validation pass at theta', and two finite-difference passes per part
      ("joint": one part, 4 in all; "split": encoder and head apart, 6);
    - weight stages: K stages of `steps_per_stage` SGD steps, one pass per learner in the
      step (multitask: all K; otherwise 1).
    hessian="exact" differentiates `training_loss` with nested tapes instead: not counted.
    """
    from il_tf.learning import strategies  # pylint: disable=g-import-not-at-top
    if opt.order == 2 and opt.hessian == "exact":
        raise ValueError("hessian='exact' does not run the gradient pass; not counted.")
    k = opt.num_learners
    contributing = len(strategies.hypergradient_learners(opt.learning_strategy, k))
    per_learner = 1 if opt.order == 1 else (4 if opt.hessian == "joint" else 6)
    per_step = k if opt.learning_strategy == "multitask" else 1
    return contributing * per_learner + k * opt.steps_per_stage * per_step


class PassCounter:
    """Counts `fn.gradients` calls while active. Around the call that traces the iteration
    (its first), that is the number of call sites: the passes per iteration, except where
    a branch is traced but not run (strategy "blocked" traces every learner's stage)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __enter__(self):
        original = self.fn.gradients

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        self.fn.gradients = counted  # an instance attribute over the class's method
        return self

    def __exit__(self, *exc):
        del self.fn.gradients


def _main(argv):
    del argv
    import json  # pylint: disable=g-import-not-at-top
    from absl import flags  # pylint: disable=g-import-not-at-top
    from il_tf.learning import functional  # pylint: disable=g-import-not-at-top
    from il_tf.models import supernet as supernet_lib  # pylint: disable=g-import-not-at-top
    f = flags.FLAGS
    net = supernet_lib.Supernet(f.channels, f.layers, seed=0, recompute=f.recompute,
                                partial_channels=f.partial_channels)
    supernet_lib.build(net, (f.image_size, f.image_size, 3))
    counts = pass_flops(functional.SupernetFunctions(net), f.batch, f.image_size)
    counts["gflop_per_pass"] = round(counts["total"] / 1e9, 3)
    print(json.dumps(counts))


if __name__ == "__main__":
    # pylint: disable=g-import-not-at-top
    from absl import app
    from absl import flags as absl_flags
    import il_tf  # noqa: F401  (quiet TF import)
    from il_tf.models import supernet as _supernet
    absl_flags.DEFINE_integer("channels", 8, "Supernet C.")
    absl_flags.DEFINE_integer("layers", 5, "Supernet cells.")
    absl_flags.DEFINE_integer("batch", 16, "Batch of one pass.")
    absl_flags.DEFINE_integer("image_size", 32, "Image height and width.")
    absl_flags.DEFINE_enum("recompute", "edges", _supernet.RECOMPUTE_MODES,
                           "Supernet.recompute (the search's default: edges).")
    absl_flags.DEFINE_integer("partial_channels", 1, "PC-DARTS's k.")
    app.run(_main)
