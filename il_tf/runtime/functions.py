"""Traced functions kept only as their definition in the TF runtime, without the Python graph.

A `tf.function` keeps the Python `FuncGraph` it traced for as long as it lives: every
`Operation` and `Tensor` object, and the C++ graph with its shape-inference state. For the
supernet's gradient pass (18,600 nodes at C=8, 5 cells) that is about 140 MiB of a
1.3 GiB search step, for a FunctionDef of 3 MiB that the runtime runs by itself. Worse, a
`tf.custom_gradient` used while tracing (the supernet's recomputing backward pass records
its gradient on the tape instead, but a user's function may) registers a closure in TF's
process-wide gradient registry that keeps the whole graph alive even after the function is
gone (tensorflow/tensorflow#97697).

`RuntimeFunction` traces once per input signature, registers the FunctionDef with the eager
context under a name of its own, lets the Python graph go, and calls the definition by name
(`tf.raw_ops.PartitionedCall`), from a graph or eagerly. The definition is read by the
runtime alone, so the call has no gradient: use it for functions that compute their own
gradients, as the supernet's passes do. With `shared=True` every call site runs the one
definition (its outputs packed into one vector; see the class).

Before registering, the definition is simplified (`simplify_function_def`): identical nodes
merged, nodes that cannot reach an output dropped. TF converts a called function's whole
definition into a graph several times per call site when it prepares the calling function
(XLA's EncapsulateSubgraphsPass, Grappler's function optimiser), before any of its own
pruning: the supernet's pass, called ten times by a 2-learner search step, came out of
tracing with 18,000 nodes, 7,800 of them constants with only 324 distinct values; it is
registered with 8,600. The calls also ask Grappler for one round of its optimisers, not two,
and no function optimiser (`lean_grappler_config`); `step_function` gives the calling step the
same config.

The registration, the call options and the registry clean-up use TF internals, all in
`internals.py`.
"""
import collections
import functools
import gc
import itertools
from typing import Callable, Dict, Optional, Sequence, Tuple

import tensorflow as tf

from il_tf.runtime import internals
from il_tf.runtime import malloc
from il_tf.runtime import trace_cache

_NAMES = itertools.count()


def _node_of(reference: str) -> str:
    """The node (or argument) name in a FunctionDef input: "^n", "n:output:0" or "arg"."""
    return reference.lstrip("^").split(":", 1)[0]


def _colocated_with(node) -> list:
    """The node names in a node's colocation constraints ("_class": ["loc:@name", ...])."""
    if "_class" not in node.attr:  # (reading a missing key would add it)
        return []
    return [g.decode()[len("loc:@"):] for g in node.attr["_class"].list.s]


def _is_pure(op_type: str) -> bool:
    """A registered op without side effects (a call of a function by its name is not)."""
    return internals.op_is_stateful(op_type) is False


def simplify_function_def(definition) -> int:
    """Merges identical pure nodes of a FunctionDef and drops the nodes no output needs;
    returns how many nodes went. In place.

    Grappler does both (common_subgraph_elimination, model_pruner) when the function is
    instantiated; doing them once here shrinks every earlier conversion of the definition
    (see the module docstring). Nodes are visited in topological order, so that a node
    whose inputs were merged can merge in turn; two nodes are identical when their op,
    device, attributes, data inputs (in order) and control inputs (as a set) are. Stateful
    nodes are never merged and always kept; colocation constraints ("_class") follow the
    merges and keep the node they name.
    """
    nodes = {n.name: n for n in definition.node_def}
    users, pending = collections.defaultdict(list), {}
    for node in definition.node_def:
        sources = {_node_of(i) for i in node.input} & nodes.keys()
        pending[node.name] = len(sources)
        for source in sources:
            users[source].append(node.name)
    order = [name for name, count in pending.items() if count == 0]
    for name in order:  # Kahn's algorithm: `order` grows while it is walked
        for user in users[name]:
            pending[user] -= 1
            if not pending[user]:
                order.append(user)
    if len(order) != len(nodes):
        return 0  # a cycle (never from tracing): leave the definition alone

    merged_into: Dict[str, str] = {}

    def renamed(reference):
        control = reference.startswith("^")
        name, sep, rest = reference.lstrip("^").partition(":")
        return ("^" if control else "") + merged_into.get(name, name) + sep + rest

    first_of = {}
    for name in order:
        node = nodes[name]
        inputs = [renamed(i) for i in node.input]
        del node.input[:]
        node.input.extend(inputs)
        if not _is_pure(node.op):
            continue
        key = (node.op, node.device, tuple(i for i in inputs if not i.startswith("^")),
               tuple(sorted({i for i in inputs if i.startswith("^")})),
               tuple(sorted((k, v.SerializeToString(deterministic=True))
                            for k, v in node.attr.items())))
        if key in first_of:
            merged_into[name] = first_of[key]
        else:
            first_of[key] = name
    for node in nodes.values():  # colocation constraints name nodes too
        if "_class" in node.attr:
            groups = [renamed(g) for g in _colocated_with(node)]
            del node.attr["_class"].list.s[:]
            node.attr["_class"].list.s.extend(f"loc:@{g}".encode() for g in groups)
    for key, reference in list(definition.ret.items()):
        definition.ret[key] = renamed(reference)
    for key, name in list(definition.control_ret.items()):
        definition.control_ret[key] = merged_into.get(name, name)

    live = set()
    stack = [_node_of(r) for r in (*definition.ret.values(), *definition.control_ret.values())]
    stack += [n for n in nodes if n not in merged_into and not _is_pure(nodes[n].op)]
    while stack:
        name = stack.pop()
        if name in live or name not in nodes:
            continue
        live.add(name)
        stack.extend(_node_of(i) for i in nodes[name].input)
        stack.extend(_colocated_with(nodes[name]))
    kept = [internals.NodeDef() for n in definition.node_def if n.name in live]
    for copy, node in zip(kept, (n for n in definition.node_def if n.name in live)):
        copy.CopyFrom(node)  # copies: the originals go with the field's clearing
    removed = len(definition.node_def) - len(kept)
    del definition.node_def[:]
    definition.node_def.extend(kept)
    return removed


@functools.lru_cache(maxsize=8)
def lean_grappler_config(config_proto: bytes) -> bytes:
    """The calling context's session config with one round of Grappler's optimisers, not
    two, without its function optimiser and, on a machine without GPUs, without its layout
    and memory optimisers.

    The definitions registered here are already simplified (`simplify_function_def`); on
    the supernet's pass (C=8, 5 cells) Grappler's second round changed 46 of 7,395 nodes
    for 2 s more start-up. The function optimiser has nothing to do in a registered
    definition (it calls no functions) nor at its call sites (`_noinline`, `_nospecialize`),
    yet in the 2-learner search step it spent 1.3-1.5 s per round converting the pass at
    each of its ten call sites. On the CPU the layout and memory optimisers changed none of
    the pass's nodes for 1.1 s per instantiation, and the search's results are bit-identical
    without them. (The remapper, which also changed no node of the gradient pass, stays: the
    results differ in the last bits without it; with all three off, the quick search ended
    at another val loss.) `lean_grappler_calls` gives the calling step the same config.
    """
    config = internals.ConfigProto.FromString(config_proto)
    rewrite = config.graph_options.rewrite_options
    rewrite.meta_optimizer_iterations = internals.RewriterConfig.ONE
    rewrite.function_optimization = internals.RewriterConfig.OFF
    if not tf.config.list_logical_devices("GPU"):  # (both matter on a GPU)
        rewrite.layout_optimizer = internals.RewriterConfig.OFF
        rewrite.memory_optimization = internals.RewriterConfig.OFF
    return config.SerializeToString(deterministic=True)


def lean_grappler_calls():
    """Functions called in this thread inside the block (a context manager) run with
    `lean_grappler_config`'s config.

    For a `tf.function` that calls `RuntimeFunction`s (the search step, `step_function`):
    it is optimised the way its calls of them are, and they get the same config whether
    they were traced inside the block or not.
    """
    return internals.function_call_config_set(
        lean_grappler_config(internals.function_call_config()))


def step_function(fn: Callable) -> Callable:
    """`fn` as a `tf.function` without AutoGraph, called inside `lean_grappler_calls`: for a
    step (the search's, which runs `replica_iteration` under `strategy.run`) that calls
    `RuntimeFunction`s.

    Without AutoGraph: such a step's control flow is Python's, over Python values (learners,
    passes, options), so AutoGraph has nothing to convert, but converting the step and the
    calls inside it cost about 6 s of the 2-learner search step's 17 s trace at C=8, 5 cells.
    A tensor used as a Python bool in the step is an error.
    """
    traced = tf.function(fn, autograph=False)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with lean_grappler_calls():
            return traced(*args, **kwargs)
    return call


class RuntimeFunction:
    """`python_function(*args)` traced once per signature and run from its FunctionDef.

    Args:
      python_function: takes tensors (nested in lists/tuples) and returns a tensor or a
        nested list/tuple of tensors; it must capture no tensors or variables from outside.
      name: prefix of the registered function's name.
      relaxed: indices of arguments traced with every dimension unknown, so that one trace
        serves them at any size (e.g. heads of any number of classes).
      cache_key: what the traced definition depends on besides il_tf's code (e.g. the
        model's configuration and structure): given, the definition is kept in the
        persistent trace cache (trace_cache.py) and later processes load it instead of
        tracing. None: always traced.
      cache_sources: source files the trace depends on outside il_tf (a user's layers).
      shared: every call site runs this one definition, unchanged. Grappler copies a called
        function for each call site that leaves some of its outputs unused (for the search:
        the virtual step needs only dw, dh; the finite differences only dA) or passes it a
        constant (the loss scale), and inlines it into its caller: each copy is another
        optimised copy of the whole pass with its own executor, and the search step had
        four. So the definition is marked `_noinline` and `_nospecialize`, and its outputs
        are packed into one float32 vector inside it and unpacked at every call: a single
        output, which every call site uses. Measured on the search at C=8, 5 cells, batch
        16, second order: 300 MiB less peak memory and 13 s less start-up, for up to 20%
        more time per iteration (the passes compute the outputs a call site does not use).
        The outputs must be floating point (packed as float32: exact up to 32 bits, a
        float64 output is rounded), and at most one may have a size that is unknown when
        traced (one unknown dimension), e.g. the gradient of a relaxed argument.
    """

    def __init__(self, python_function: Callable, name: str, relaxed: Sequence[int] = (),
                 shared: bool = False, cache_key: Optional[str] = None,
                 cache_sources: Sequence[str] = ()):
        self._python_function = python_function
        self._name = name
        self._relaxed = frozenset(relaxed)
        self._shared = shared
        self._cache_key = cache_key
        self._cache_sources = tuple(cache_sources)
        self.traces = 0  # signatures traced in this process (not loaded from the cache)
        # signature -> (registered name, stateful, call outputs, unpacked outputs or None)
        self._traced: Dict[Tuple, Tuple[str, bool, list, list]] = {}

    @property
    def definitions(self) -> list:
        """The names of the registered definitions, one per traced signature."""
        return [name for name, _, _, _ in self._traced.values()]

    def __call__(self, *args):
        """The outputs, flattened (`tf.nest.flatten`) into a list of tensors."""
        args = tf.nest.map_structure(tf.convert_to_tensor, args)
        specs = [tf.nest.map_structure(lambda x, i=i: self._spec(x, i in self._relaxed), a)
                 for i, a in enumerate(args)]
        key = tuple(tf.nest.flatten(specs))
        if key not in self._traced:
            traces = self.traces
            self._traced[key] = self._trace(specs)
            if self.traces != traces:  # (a definition from the trace cache left no graph)
                # The trace's graph is a web of reference cycles; collected, its memory is
                # free inside the heap, where the step's tensors cannot reuse it.
                gc.collect()
                malloc.release_free_memory()
        name, stateful, outputs, unpacked = self._traced[key]
        call = tf.raw_ops.StatefulPartitionedCall if stateful else tf.raw_ops.PartitionedCall
        results = call(args=tf.nest.flatten(args), Tout=[o.dtype for o in outputs], f=name,
                       config_proto=lean_grappler_config(internals.function_call_config()))
        for result, spec in zip(results, outputs):
            result.set_shape(spec.shape)
        if unpacked is not None:
            return _unpack(results[0], unpacked)
        return list(results)

    @staticmethod
    def _spec(x, relaxed):
        shape = [None] * x.shape.rank if relaxed else x.shape
        return tf.TensorSpec(shape, x.dtype)

    def _trace(self, specs):
        entry = None
        if self._cache_key is not None:
            entry = trace_cache.key(self._cache_key, self._name, repr(tf.nest.flatten(specs)),
                                    self._shared, self._cache_sources)
            cached = trace_cache.load(entry)
            if cached is not None:
                definition, meta = cached
                return self._register(definition, meta["stateful"], _specs(meta["outputs"]),
                                      None if meta["unpacked"] is None
                                      else _specs(meta["unpacked"]))
        self.traces += 1
        registered_before = internals.custom_gradient_names()
        unpacked = [] if self._shared else None
        python_function = self._python_function
        if self._shared:
            def python_function(*args):  # pylint: disable=function-redefined
                outputs = tf.nest.flatten(self._python_function(*args))
                unpacked.extend(_packable_spec(o, self._name) for o in outputs)
                return _pack(outputs)
        # No autograph: the passes have no tensor-dependent Python control flow, and
        # converting every Keras call they make is tracing time for nothing.
        traced = tf.function(python_function, autograph=False)
        concrete = traced.get_concrete_function(*specs)
        if concrete.captured_inputs:
            raise ValueError(f"{self._name}: the traced function captures "
                             f"{concrete.captured_inputs}; pass those values as arguments.")
        if internals.graph_calls_functions(concrete.graph):
            raise ValueError(f"{self._name}: the traced function calls other functions "
                             "(their definitions would go with the Python graph).")
        if unpacked is not None and sum(s.shape.num_elements() is None for s in unpacked) > 1:
            raise ValueError(f"{self._name}: shared=True allows one output of unknown size, "
                             f"got {unpacked}.")
        definition = internals.FunctionDef()
        definition.CopyFrom(concrete.function_def)
        simplify_function_def(definition)
        if self._shared:
            for key in ("_noinline", "_nospecialize"):
                definition.attr[key].CopyFrom(internals.AttrValue(b=True))
        stateful = any(op.op_def.is_stateful for op in concrete.graph.get_operations())
        outputs = [tf.TensorSpec(o.shape, o.dtype) for o in concrete.outputs]
        # The trace's custom gradients were used while tracing (the definition holds the
        # gradient ops); their registry entries would keep the graph alive.
        internals.forget_custom_gradients(
            internals.custom_gradient_names() - registered_before)
        if entry is not None:
            trace_cache.store(entry, definition, {
                "stateful": stateful, "outputs": _spec_list(outputs),
                "unpacked": None if unpacked is None else _spec_list(unpacked)})
        return self._register(definition, stateful, outputs, unpacked)

    def _register(self, definition, stateful, outputs, unpacked):
        name = f"il_tf_{self._name}_{next(_NAMES)}"
        definition.signature.name = name
        internals.register_function(definition)
        return name, stateful, outputs, unpacked

    def __del__(self):
        try:
            for name in self.definitions:
                if internals.has_function(name):
                    internals.remove_function(name)
        except (AttributeError, TypeError):  # interpreter shutdown: modules already gone
            pass


def _spec_list(specs) -> list:
    """TensorSpecs as JSON: [[shape (None for unknown), dtype name], ...]."""
    return [[s.shape.as_list() if s.shape.rank is not None else None, s.dtype.name]
            for s in specs]


def _specs(stored) -> list:
    return [tf.TensorSpec(shape, tf.as_dtype(dtype)) for shape, dtype in stored]


def _packable_spec(output, function_name) -> tf.TensorSpec:
    if not output.dtype.is_floating:
        raise ValueError(f"{function_name}: shared=True packs floating-point outputs, got "
                         f"{output.dtype.name}.")
    if output.shape.rank is None or sum(d is None for d in output.shape.as_list()) > 1:
        raise ValueError(f"{function_name}: shared=True needs outputs with at most one "
                         f"unknown dimension, got shape {output.shape}.")
    return tf.TensorSpec(output.shape, output.dtype)


def _pack(outputs) -> tf.Tensor:
    """The outputs as one float32 vector (a vector output as it is: one node less)."""
    flat = [tf.cast(o, tf.float32) for o in outputs]
    return tf.concat([o if o.shape.rank == 1 else tf.reshape(o, [-1]) for o in flat], axis=0)


def _unpack(packed, specs) -> list:
    """`_pack`'s inverse, given the outputs' specs; one may have an unknown size."""
    sizes = [s.shape.num_elements() for s in specs]
    unknown = [i for i, n in enumerate(sizes) if n is None]
    if unknown:
        sizes[unknown[0]] = tf.size(packed) - sum(n for n in sizes if n is not None)
        sizes = tf.stack(sizes)
    parts = tf.split(packed, sizes, num=len(specs))
    out = []
    for part, spec in zip(parts, specs):
        if spec.shape.rank != 1:
            part = tf.reshape(part, [-1 if d is None else d for d in spec.shape.as_list()])
        out.append(tf.cast(part, spec.dtype))
    return out
