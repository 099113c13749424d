"""The C allocator of a command's process: freed memory kept for the next batch.

PyTorch's CPU tensors come from the C library's ``malloc``. With glibc's defaults a block of more than 128 KiB
(raised adaptively, up to 32 MiB, as blocks are freed) is mapped from the system and unmapped when freed, and free
memory above 128 KiB at the top of the heap is handed back to the system: a training or inference loop, which
allocates and frees the same activations every batch, pays for fresh zeroed pages from the kernel every batch
(page faults, system time). PyTorch's tuning guide meets this with jemalloc or TCMalloc, which must be preloaded
before the process starts; :func:`keep_freed_memory` asks glibc itself, through ``mallopt``, to serve blocks up to
:data:`MMAP_THRESHOLD` from the heap and to keep freed heap memory (:data:`TRIM_THRESHOLD`). What it costs: the
process keeps its peak heap instead of shrinking after it. What it buys is measured by
``benchmarks/allocator.py`` (docs/speed.md).

The command line applies it to every command (:func:`dermogaze.cli.main`); a library caller decides for its own
process. ``DERMOGAZE_ALLOCATOR=system`` in the environment keeps glibc's defaults, and a process whose allocator is
already chosen is left alone: a ``MALLOC_*_`` variable or a ``glibc.malloc`` tunable in the environment, or another
allocator preloaded (``LD_PRELOAD``).
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MMAP_THRESHOLD", "OPT_OUT", "TRIM_THRESHOLD", "keep_freed_memory"]

#: Blocks up to this size come from the heap (glibc's own ceiling for its adaptive threshold, on 64 bits).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of the heap is handed back to the system only beyond this size (``mallopt`` takes an int).
TRIM_THRESHOLD = 2**31 - 1

#: ``DERMOGAZE_ALLOCATOR=system`` in the environment: glibc's defaults.
OPT_OUT = "DERMOGAZE_ALLOCATOR"

# glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Environment variables by which a user has already chosen the allocator or its settings.
_CHOSEN = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # not a GNU C library (musl), or no confstr
        return False


def _allocator_chosen(environ: os._Environ[str] | dict[str, str]) -> bool:
    return (environ.get(OPT_OUT) == "system"
            or any(name in environ for name in _CHOSEN)
            or "glibc.malloc" in environ.get("GLIBC_TUNABLES", "")
            or bool(environ.get("LD_PRELOAD", "").strip()))


def keep_freed_memory(environ: os._Environ[str] | dict[str, str] | None = None) -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` for this process (see the module docstring).

    Args:
        environ: the environment to read (default: ``os.environ``).

    Returns:
        Whether the settings were applied: False off glibc (macOS, Windows, musl) or where the environment
        chooses (``DERMOGAZE_ALLOCATOR=system``, glibc's own variables, a preloaded allocator).
    """
    environ = os.environ if environ is None else environ
    if not sys.platform.startswith("linux") or not _glibc() or _allocator_chosen(environ):
        return False
    libc = ctypes.CDLL(None)  # the process's own symbols: glibc's mallopt
    # both: setting either stops glibc's adaptive mmap threshold, so the trim threshold alone would map every block
    # above 128 KiB (slower than the defaults, benchmarks/allocator.py)
    applied = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and applied
