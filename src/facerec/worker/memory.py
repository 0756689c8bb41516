"""Keep a worker process small: it must fit an instance with 1 GB of memory (an AWS t2.micro).

Measured with the CUDA build of torch on this 2-core machine, a warmed-up recognizer after ten batches of 32:
peak RSS 1133 MB by default, 1088 MB without triton, 982 MB with two malloc arenas as well.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # glibc's mallopt parameter number
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """glibc gives each thread that allocates its own arena (up to 8 per core); freed memory stays spread
    over them. Must run before the threads start. False where this is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        return bool(ctypes.CDLL(name).mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def skip_triton() -> None:
    """torchvision's import pulls in torch._dynamo, which loads triton (about 80 MB) where it is installed
    (the CUDA build). Inference here is eager and never compiles, so the worker tells Python it is absent."""
    if "triton" not in sys.modules:
        # typeshed types sys.modules as ModuleType values; None there is Python's documented import block.
        sys.modules["triton"] = None  # type: ignore[assignment]


def lean_worker_process() -> None:
    """Call first thing in a worker process, before torch is imported and before any thread starts."""
    skip_triton()
    arenas = limit_malloc_arenas()
    log.debug("worker_memory_settings", extra={"malloc_arenas_limited": arenas, "triton": "skipped"})
