"""Say so, once per process, when mmbuild's kernels are really being compiled.

The first run on a machine compiles every kernel it uses (tens of seconds in all) and later runs
load them from numba's disk cache; without a word a new user would think the first run hung. So
the first time in a process that one of mmbuild's kernels is compiled rather than loaded, this
module

- logs one INFO line (logger ``mmbuild.kernels.compile_notice``), and
- when stderr is a terminal and ``MMBUILD_PROGRESS`` is not ``0`` (the switch of the calibration
  bar, ``mmbuild.calib.calibrator.PROGRESS_ENV``), writes one line to stderr:
  ``mmbuild: compiling kernels for this CPU (first run only; cached in /path)``.

It listens to numba's ``"numba:compile"`` event. Numba broadcasts that event only around a real
compilation: ``Dispatcher.compile`` returns before it when the overload is already in memory or is
loaded from the disk cache (so in numba 0.68's ``numba/core/dispatcher.py``; a test checks both
cases on the installed numba, in two processes sharing one cache). Compilations of functions
outside mmbuild (a user's own ``@njit`` code) are not announced. The listener is registered when
``mmbuild.kernels`` is imported, before any kernel.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

from numba.core import config as numba_config
from numba.core import event as numba_event

__all__ = ["MESSAGE", "PROGRESS_ENV", "CompileNotice", "notice"]

logger = logging.getLogger(__name__)

#: ``MMBUILD_PROGRESS=0`` switches the stderr line off, as it does the calibration bar.
PROGRESS_ENV = "MMBUILD_PROGRESS"
MESSAGE = "compiling kernels for this CPU (first run only; cached in {where})"

# Modules whose jitted functions are mmbuild's kernels: the package, and the micro-kernel modules
# it generates and imports under this prefix (mmbuild.kernels.cpu.codegen.load_module).
_KERNEL_MODULE_PREFIXES = ("mmbuild.", "_mmbuild_generated_")


class CompileNotice(numba_event.Listener):
    """The ``"numba:compile"`` listener: announces the first compilation of an mmbuild kernel."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.announced = False

    def on_start(self, event: numba_event.Event) -> None:
        dispatcher = (event.data or {}).get("dispatcher")
        if self.announced or not _is_kernel(dispatcher):
            return
        with self._lock:
            if self.announced:
                return
            self.announced = True
        message = MESSAGE.format(where=_cache_location(dispatcher))
        logger.info("%s (the first of them: %s)", message, _qualname(dispatcher))
        if _stderr_line_shown():
            sys.stderr.write(f"mmbuild: {message}\n")
            sys.stderr.flush()

    def on_end(self, event: numba_event.Event) -> None:
        pass


def _is_kernel(dispatcher: Any) -> bool:
    module = getattr(getattr(dispatcher, "py_func", None), "__module__", None) or ""
    return module.startswith(_KERNEL_MODULE_PREFIXES)


def _qualname(dispatcher: Any) -> str:
    func = dispatcher.py_func
    return f"{func.__module__}.{func.__qualname__}"


def _cache_location(dispatcher: Any) -> str:
    """``NUMBA_CACHE_DIR`` when set, else where numba caches this kernel (``__pycache__`` beside
    its source file, or numba's per-user directory when that is not writable)."""
    root = getattr(numba_config, "CACHE_DIR", "")  # NUMBA_CACHE_DIR, read when numba loaded
    if root:
        return str(root)
    path = getattr(getattr(dispatcher, "_cache", None), "cache_path", None)
    return str(path) if path else "numba's cache directory"


def _stderr_line_shown() -> bool:
    return os.environ.get(PROGRESS_ENV, "1") != "0" and bool(
        getattr(sys.stderr, "isatty", lambda: False)()
    )


#: The listener of this process (``notice.announced`` tells whether it has spoken).
notice = CompileNotice()
numba_event.register("numba:compile", notice)
