"""The wall around TensorFlow: every workaround for its tracing, graph and memory costs.

No other il_tf module imports `tensorflow.python` or reads a private attribute of TF or
Keras; they use what this package exports, and a TensorFlow upgrade touches this folder.

What a caller gets:
- Trace once, call many times (`RuntimeFunction`, functions.py): a function traced once per
  input signature (some arguments at any size), kept only as its simplified FunctionDef in
  the runtime, its Python graph let go; `shared=True` makes every call site run that one
  definition (outputs packed into one vector, no inlining, no specialisation).
- A persistent trace cache (`RuntimeFunction(cache_key=...)`, trace_cache.py): a later
  process with the same key (configuration, code, versions) registers the stored
  definition instead of tracing; `IL_TF_TRACE_CACHE` moves it or turns it off.
- Recompute in the backward pass (`call_recomputed`, `recompute_in_backward`,
  `recompute_disabled`; recompute.py): a layer's activations recomputed when its gradient
  is needed, not kept from the forward pass.
- Lean Grappler (`step_function`, `lean_grappler_calls`; functions.py): a step that calls
  `RuntimeFunction`s is traced without AutoGraph and it and its calls are optimised with one
  Grappler round, no function optimiser and, without GPUs, no layout or memory optimiser.
- Trace-time state (tracing.py): one constant per graph for a repeated value
  (`shared_constant`) and the BN moving-statistics mode of the pass being traced
  (`moving_statistics_frozen`, `moving_statistics_deferred`, `moving_statistics_mode`).
- Keras's recursive layer listing (`flatten_layers`).
- A tool's exit without the interpreter's and TensorFlow's teardown, about a second per
  process (`exit_without_teardown`, teardown.py; `IL_TF_FAST_EXIT`), and the size of the
  cluster `TF_CONFIG` names (`cluster_size`), which decides it and the "auto" strategy.
- Process defaults, set when this package is first imported (il_tf's `__init__` imports it
  before anything else), each with the environment variable that turns it off: glibc's
  malloc arenas capped at one (malloc.py; `IL_TF_MALLOC_ARENAS`), oneDNN kernels on x86-64
  Linux (onednn.py; `TF_ENABLE_ONEDNN_OPTS`), Keras's import of matplotlib deferred to
  its first use (deferred_imports.py; `IL_TF_DEFER_IMPORTS`),
  TensorFlow imported with its start-up noise filtered from stderr (quiet.py;
  `IL_TF_VERBOSE_STARTUP`), the per-device stage of distributed input streams run without
  tf.data's autotuning, whose thread made every ended stream wait (device_streams.py;
  `IL_TF_UNTUNE_DEVICE_STREAMS`).

What it costs:
- A `RuntimeFunction` call has no gradient (use it for functions that compute their own),
  its function may capture no tensors or variables and call no other functions, and its
  definition stays registered until the object goes. With `shared=True`, every call computes
  every output.
- A recomputed layer costs one more forward pass per gradient; its forward may read no
  variables (`call_recomputed` passes their values in) and it cannot be differentiated twice
  (trace such passes inside `recompute_disabled`).
- The lean Grappler config applies to everything called inside the block; the search's
  results with it are bit-identical on the CPU (see `lean_grappler_config`).
- The trace-time switches are module-global (not per thread) and act only while a function
  is traced: a traced definition keeps what they were.
- A module that imported a deferred one early (Keras) holds the stand-in: its reads reach
  the real module, a value assigned onto the stand-in does not.
- `exit_without_teardown` runs no atexit handler and no destructor: only for a process
  whose files are all closed (a multi-worker one exits normally).
- The process defaults act only if il_tf is imported before TensorFlow; capturing stderr
  while TensorFlow starts needs a real file descriptor 2.

What to change for a new TensorFlow (or Keras):
- internals.py is the only file that touches private APIs; tests/test_tf_internals.py
  exercises each one and names it when it fails. Fix the accessor there.
- tests/test_runtime_function.py checks that a trace's graph is really released and the
  gradient registry cleaned; the search must stay bit-identical
  (`python benchmarks/search_state.py dump|compare`, on the old and the new TF).
- quiet.py's list of start-up lines (a new release prints new ones); onednn.py's note on
  TF's own oneDNN default; deferred_imports.py's `NAMES` (the matplotlib modules Keras
  imports; tests/test_deferred_imports.py fails when matplotlib runs at import); the pins in
  setup.py.
"""
# pylint: disable=g-import-not-at-top,wrong-import-position
# First, before anything imports TensorFlow: the process defaults.
from il_tf.runtime import deferred_imports
from il_tf.runtime import malloc
from il_tf.runtime import onednn
from il_tf.runtime import quiet

malloc.limit_arenas()
onednn.enable_by_default()
deferred_imports.defer()
quiet.import_tensorflow_quietly()

from il_tf.runtime import device_streams
device_streams.untune()

from il_tf.runtime.functions import RuntimeFunction
from il_tf.runtime.functions import lean_grappler_calls
from il_tf.runtime.functions import lean_grappler_config
from il_tf.runtime.functions import simplify_function_def
from il_tf.runtime.functions import step_function
from il_tf.runtime.internals import checkpoint_object_graph
from il_tf.runtime.internals import flatten_layers
from il_tf.runtime.internals import num_workers
from il_tf.runtime.recompute import call_recomputed
from il_tf.runtime.recompute import recompute_disabled
from il_tf.runtime.recompute import recompute_in_backward
from il_tf.runtime.teardown import cluster_size
from il_tf.runtime.teardown import exit_without_teardown
from il_tf.runtime.tracing import moving_statistics_deferred
from il_tf.runtime.tracing import moving_statistics_frozen
from il_tf.runtime.tracing import moving_statistics_mode
from il_tf.runtime.trace_cache import class_sources
from il_tf.runtime.trace_cache import layer_structure
from il_tf.runtime.tracing import shared_constant
