"""Dumps the search state after 3 iterations on tiny supernets, to check a change (or a new
TensorFlow) leaves the search bit-identical (il_tf/runtime's contract).

    python benchmarks/search_state.py dump before.npz     # on the old code / TF
    python benchmarks/search_state.py dump after.npz      # on the new
    python benchmarks/search_state.py compare before.npz after.npz

Five settings cover every recompute mode, both Hessian approximations, the exact and chained
hypergradient, first order, PC-DARTS and a baseline strategy; each dumps every step output,
every optimiser variable and one inference-mode evaluation.
"""
import sys

import numpy as np

SIZE, BATCH = 8, 4
SETTINGS = [  # name, supernet options, optimiser options, learners
    ("edges_k2_joint", dict(recompute="edges"), dict(order=2, hessian="joint"), 2),
    ("ops_k2_split", dict(recompute="ops"), dict(order=2, hessian="split"), 2),
    ("cells_k1_first", dict(recompute="cells"), dict(order=1), 1),
    ("k2_exact_chained", dict(recompute="edges"), dict(order=2, hessian="exact", chained=True),
     2),
    ("pc_k2_multitask", dict(recompute="edges", partial_channels=2),
     dict(order=2, learning_strategy="multitask"), 2),
]


def dump(path):
    import il_tf  # pylint: disable=g-import-not-at-top,unused-import  # quiet TF import
    import keras  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from il_tf import runtime  # pylint: disable=g-import-not-at-top
    from il_tf.learning import interleaving  # pylint: disable=g-import-not-at-top
    from il_tf.models import supernet as supernet_lib  # pylint: disable=g-import-not-at-top

    strategy, results = tf.distribute.get_strategy(), {}
    for name, net_kw, opt_kw, learners in SETTINGS:
        keras.utils.set_random_seed(0)
        net = supernet_lib.Supernet(4, 3, seed=0, **net_kw)
        supernet_lib.build(net, (SIZE, SIZE, 3))
        opt = interleaving.InterleavingOptimizer(net, [3] * learners, strategy,
                                                 steps_per_epoch=5, epochs=2, **opt_kw)
        rng = np.random.RandomState(0)

        def batch():
            return (tf.constant(rng.randn(BATCH, SIZE, SIZE, 3).astype(np.float32)),
                    tf.constant(rng.randint(0, 3, BATCH).astype(np.int32)))

        @runtime.step_function
        def iteration(batches):
            return strategy.run(opt.replica_iteration, args=(batches,))  # pylint: disable=cell-var-from-loop

        for it in range(3):
            batches = [([batch() for _ in range(opt.train_batches_per_learner)], batch())
                       for _ in range(learners)]
            for key, value in iteration(batches).items():
                results[f"{name}/it{it}/{key}"] = value.numpy()
        for i, v in enumerate(opt.variables):
            results[f"{name}/var{i}/{v.name}"] = v.numpy()
        loss, correct = opt.evaluate_batch(opt.learners[0], *batch())
        results[f"{name}/eval"] = np.array([loss.numpy(), correct.numpy()])
        print(name, "done", file=sys.stderr)
    np.savez(path, **results)


def compare(path_a, path_b) -> int:
    a, b = np.load(path_a), np.load(path_b)
    if sorted(a.files) != sorted(b.files):
        print("different arrays:", sorted(set(a.files) ^ set(b.files)))
        return 1
    differing = [k for k in a.files if a[k].dtype != b[k].dtype or a[k].tobytes() != b[k].tobytes()]
    print(f"{len(a.files)} arrays, {sum(a[k].size for k in a.files)} values; "
          f"{len(differing)} differ{': ' + ', '.join(differing) if differing else ''}")
    return 1 if differing else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "dump":
        dump(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
