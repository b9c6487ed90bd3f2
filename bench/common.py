"""Helpers shared by the benchmark scripts in bench/ (not a benchmark itself).

    from common import session_options  # bench/ is on sys.path when a script runs as python bench/NAME.py
"""

from __future__ import annotations


def session_options(threads: int | None):
    """onnxruntime SessionOptions equal to the ones tie_lite's sessions get (tie_lite._open_session).

    `threads` intra-op threads (None or 0: onnxruntime's default, one per core), one inter-op
    thread, no spinning between operators (session.intra_op.allow_spinning = "0"), and
    onnxruntime's default graph optimization level (ORT_ENABLE_ALL). A benchmark that changes
    one of these (or adds e.g. profiling) changes the returned object and says so. Keep this
    in step with tie_lite._open_session.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options
