"""The start-up noise filter (il_tf/runtime/quiet.py): what it drops and what it keeps."""
from il_tf.runtime import quiet


def test_drops_start_up_noise_and_the_cuinit_trace_only_after_cuinit():
    lines = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1764756000.1 12 port.cc:153] oneDNN custom operations are on.",
        "E0000 00:00:1764756000.2 12 cuda_executor.cc:1309] failed call to cuInit: INTERNAL: "
        "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
        "=== Source Location Trace: ===",                            # TF 2.23, after cuInit
        "xla/stream_executor/cuda/cuda_status.cc:51",
        "E0000 00:00:1764756000.3 12 some_kernel.cc:10] a real error",
        "=== Source Location Trace: ===",                            # after a real error: kept
        "some/file.cc:12",
        "Traceback (most recent call last):",
    ]
    assert quiet.without_noise(lines) == lines[5:]
