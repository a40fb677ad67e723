"""Learning strategies: who trains the shared encoder at each weight stage of an iteration.

Every strategy runs the same iteration shape as interleaving learning, so that the budget is
the same: one architecture step, then K stages of `steps_per_stage` SGD steps on the encoder
(K = the number of learners). They differ only in which learners' losses drive each stage
and whether the stage starts with a hand-over (anchor = the encoder received, eq. 3):

  interleaved  stage k: learner k; hand-over at every stage but the run's very first
               (the paper: 1 -> 2 -> ... -> K -> 1 ...).
  blocked      one round (M = 1): the run's N = epochs * steps_per_epoch iterations are cut
               into K blocks; in block k (iterations [k N / K, (k+1) N / K)) learner k takes
               every stage of the iteration (K * steps_per_stage steps), so a block is one
               long stage; hand-over (anchor) only at the first stage of blocks 2..K.
  multitask    every stage: the sum of all K learners' losses (each a batch mean, on the
               learner's own batch) at one shared encoder; each head gets its own loss's
               gradient; no anchors (plain weight decay on the encoder).
  single       DARTS on learner 1 alone: learner 1 takes every stage; the other learners'
               data, heads and hypergradients are not used (their epoch-end metrics stay
               those of an untrained head on the initial encoder).

The architecture step: interleaved, blocked and multitask sum every learner's hypergradient
(eq. 4) at its own W_k (blocked: a learner whose block has not come yet still has the initial
encoder and an untrained head; multitask: every W_k is the shared encoder); single uses
learner 1's alone.

`schedule` is the plain-Python statement of the above (what tests check);
`InterleavingOptimizer` implements the same in the graph, with the position in the run taken
from its checkpointed `iteration`.
"""
import dataclasses
from typing import List, Tuple

STRATEGIES = ("interleaved", "blocked", "multitask", "single")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One weight stage: the learners whose losses (summed) train the encoder, and whether
    it starts with a hand-over (the single trainer anchors on the encoder it receives)."""
    trainers: Tuple[int, ...]
    handover: bool


def check(name: str) -> str:
    if name not in STRATEGIES:
        raise ValueError(f"learning_strategy must be one of {STRATEGIES}, got {name!r}.")
    return name


def block_learner(iteration, num_learners: int, total_iterations: int):
    """The learner whose block holds `iteration` (blocked); Python ints or int64 tensors."""
    block = (iteration * num_learners) // max(int(total_iterations), 1)
    if isinstance(block, int):
        return min(block, num_learners - 1)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.minimum(block, num_learners - 1)


def blocked_handover(iteration, num_learners: int, total_iterations: int):
    """True at the first iteration of blocks 2..K (Python ints or int64 tensors)."""
    k = block_learner(iteration, num_learners, total_iterations)
    previous = block_learner(iteration - 1, num_learners, total_iterations)
    if isinstance(k, int):
        return k > 0 and previous != k
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.logical_and(k > 0, tf.not_equal(previous, k))


def schedule(name: str, num_learners: int, iteration: int,
             total_iterations: int) -> List[Stage]:
    """The K weight stages of `iteration` (0-based) under strategy `name`."""
    check(name)
    k_all = range(num_learners)
    if name == "interleaved":
        return [Stage((k,), num_learners > 1 and (iteration > 0 or k > 0)) for k in k_all]
    if name == "blocked":
        k = block_learner(iteration, num_learners, total_iterations)
        first = blocked_handover(iteration, num_learners, total_iterations)
        return [Stage((k,), first and s == 0) for s in k_all]
    if name == "multitask":
        return [Stage(tuple(k_all), False) for _ in k_all]
    return [Stage((0,), False) for _ in k_all]  # single


def hypergradient_learners(name: str, num_learners: int) -> Tuple[int, ...]:
    """The learners whose eq. 4 hypergradients are summed in the architecture step."""
    return (0,) if check(name) == "single" else tuple(range(num_learners))


def train_batches_per_learner(name: str, num_learners: int, steps_per_stage: int) -> int:
    """Distinct training batches a learner can use per iteration: interleaved,
    `steps_per_stage`; the others run K stages on one learner's (or every learner's)
    batches, K * `steps_per_stage`. Fewer given are cycled (reused)."""
    return steps_per_stage * (1 if check(name) == "interleaved" else num_learners)
