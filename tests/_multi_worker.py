"""Helper of tests/test_distributed.py: one worker of a 2-worker MultiWorkerMirroredStrategy
on 127.0.0.1, or (with --single) the same search iterations in one process.

    python tests/_multi_worker.py PORT0 PORT1 INDEX OUT.npz     # a worker
    python tests/_multi_worker.py --single OUT.npz              # the reference

Each worker feeds its half of every global batch, and the halves are equal: BatchNorm
normalises with per-replica statistics (no sync BN, as DARTS's DataParallel), and its
backward pass couples the examples of a replica's batch, so only equal halves give exactly
the global batch's gradients. Each replica contributes half of the summed gradient: a lost
or double-counted replica still changes the result.
"""
import json
import os
import sys

if sys.argv[1] != "--single":
    port0, port1, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{port0}", f"127.0.0.1:{port1}"]},
        "task": {"type": "worker", "index": index}})

import il_tf  # noqa: E402,F401  pylint: disable=wrong-import-position
import keras  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position
import tensorflow as tf  # noqa: E402  pylint: disable=wrong-import-position

from il_tf import distribute  # noqa: E402  pylint: disable=wrong-import-position
from il_tf import runtime  # noqa: E402  pylint: disable=wrong-import-position
from il_tf.learning import interleaving  # noqa: E402  pylint: disable=wrong-import-position
from il_tf.models import supernet as supernet_lib  # noqa: E402  pylint: disable=wrong-import-position

SIZE, HALF, CLASSES, ITERATIONS = 8, 2, (3, 4), 2
# First order: the second-order finite-difference term magnifies float32 reduction-order
# differences ~100x and Adam turns the sign of near-zero components into whole steps;
# second order across 2 replicas is checked by tests/test_learning.py (MirroredStrategy).
ORDER = 1


def main():
    single = sys.argv[1] == "--single"
    out_path = sys.argv[2] if single else sys.argv[4]
    strategy = distribute.get_strategy()  # "auto": multi-worker from TF_CONFIG
    assert strategy.num_replicas_in_sync == (1 if single else 2), strategy
    keras.utils.set_random_seed(0)
    with strategy.scope():
        net = supernet_lib.Supernet(channels=2, layers=3, seed=0, name="supernet")
        supernet_lib.build(net, (SIZE, SIZE, 3))
        opt = interleaving.InterleavingOptimizer(
            net, list(CLASSES), strategy, steps_per_epoch=10, epochs=2, order=ORDER,
            hessian="joint", weight_lr=0.1, arch_lr=3e-3)
    rng = np.random.RandomState(0)

    def half_pair(classes):
        x = rng.normal(size=(HALF, SIZE, SIZE, 3)).astype(np.float32)
        y = np.tile(rng.randint(0, classes, size=(1, HALF)).astype(np.int32), [2, 1])
        return x, y

    @runtime.step_function
    def step(batches):
        return strategy.run(opt.replica_iteration, args=(batches,))

    initial = [np.asarray(a.numpy() if not hasattr(a, "values") else a.values[0].numpy())
               for a in opt.alphas]
    for _ in range(ITERATIONS):
        pairs = [(half_pair(c), half_pair(c)) for c in CLASSES]  # (train, val) per learner
        if single:
            batches = [([(np.concatenate([x, x]), y.reshape(-1))], (np.concatenate([xv, xv]),
                                                                    yv.reshape(-1)))
                       for (x, y), (xv, yv) in pairs]
            batches = tf.nest.map_structure(tf.constant, batches)
        else:
            def per_replica(ctx, pairs=pairs):
                r = ctx.replica_id_in_sync_group
                return [([(tf.constant(x), tf.constant(y[r]))], (tf.constant(xv), tf.constant(yv[r])))
                        for (x, y), (xv, yv) in pairs]
            batches = strategy.experimental_distribute_values_from_function(per_replica)
        step(batches)
    np.savez(out_path, *[np.asarray(a.numpy() if not hasattr(a, "values") else a.values[0].numpy())
                         for a in opt.alphas],
             init_normal=initial[0], init_reduce=initial[1],
             encoder=opt.encoder.numpy() if not hasattr(opt.encoder, "values")
             else opt.encoder.values[0].numpy())


if __name__ == "__main__":
    main()
