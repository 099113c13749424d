"""``dermogaze.allocator``: glibc's malloc keeps the memory a loop frees, the command line asks it to, a chosen
allocator is left alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dermogaze import allocator

GLIBC = sys.platform.startswith("linux") and allocator._glibc()  # where mallopt exists

#: In a fresh interpreter: the allocation pattern of a loop (arrays of 1-25 MiB, all pages written, freed, six
#: times), and the page faults it took, with or without :func:`keep_freed_memory`.
_PATTERN = """
import json, resource, sys
import numpy as np
from dermogaze.allocator import keep_freed_memory
applied = keep_freed_memory()
sizes = [(i * 7919) % (24 << 20) + (1 << 20) for i in range(12)]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):
    arrays = [np.ones(size // 8) for size in sizes]
    del arrays
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _pattern(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k != allocator.OPT_OUT and not k.startswith("MALLOC_")}
    proc = subprocess.run([sys.executable, "-c", _PATTERN], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_a_loop_that_frees_and_allocates_again_takes_fewer_page_faults():
    kept, system = _pattern(), _pattern(**{allocator.OPT_OUT: "system"})
    assert kept["applied"] and not system["applied"]
    # glibc's defaults hand most of the freed memory back to the kernel and fault it in again each time
    assert kept["faults"] < 0.5 * system["faults"], (kept, system)


@pytest.mark.parametrize("environ", [
    {"DERMOGAZE_ALLOCATOR": "system"},
    {"MALLOC_TRIM_THRESHOLD_": "131072"},
    {"MALLOC_MMAP_THRESHOLD_": "65536"},
    {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"},
    {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
], ids=["opt-out", "trim", "mmap", "tunable", "preloaded"])
def test_an_allocator_chosen_in_the_environment_is_left_alone(environ):
    assert allocator.keep_freed_memory(environ) is False


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_applied_where_nothing_is_chosen():
    assert allocator.keep_freed_memory({"GLIBC_TUNABLES": "glibc.pthread.rseq=0", "LD_PRELOAD": " "}) is True


def test_every_command_asks_for_it(monkeypatch, capsys):
    import dermogaze.cli as cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True))
    assert cli.main(["model", "list"]) == 0
    assert calls == [True]
