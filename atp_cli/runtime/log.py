"""Route llama.cpp's log lines into Python logging (it prints every load detail to stderr otherwise)."""

from __future__ import annotations

import ctypes
import logging

from llama_cpp import llama_cpp as llama

log = logging.getLogger("llama.cpp")

# enum ggml_log_level: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5
_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_state: dict = {"level": logging.WARNING, "last": logging.INFO}


@llama.llama_log_callback
def _on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    try:
        py_level = _state["last"] if level == 5 else _LEVELS.get(level, logging.INFO)
        _state["last"] = py_level
        if py_level >= _state["level"]:
            log.log(py_level, text.decode("utf-8", errors="replace").rstrip())
    except KeyboardInterrupt:  # ctypes would print and drop it here: it is raised after the C call instead
        _state["interrupted"] = True


def raise_pending_interrupt() -> None:
    """Raise the KeyboardInterrupt that arrived inside the log callback during the last C call, if one did.

    Called after the C calls that log (model and context creation, mtmd, decode)."""
    if _state.pop("interrupted", False):
        raise KeyboardInterrupt


def quiet_llama_logs(level: int = logging.WARNING) -> None:
    """Forward llama.cpp messages at `level` and above to the 'llama.cpp' logger; drop the rest."""
    from llama_cpp import mtmd_cpp

    _state["level"] = level
    llama.llama_log_set(_on_log, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_log_set(_on_log, ctypes.c_void_p(0))  # libmtmd (clip) logs on its own channel
    mtmd_cpp.mtmd_helper_log_set(_on_log, ctypes.c_void_p(0))
