"""Training-step benchmark: dermogaze against the straightforward baseline (issue 6), as a script.

The same measurement as ``dermogaze bench`` (``make bench``), with the same options; run by hand::

    .venv/bin/python benchmarks/bench_train.py [--batch 8] [--repeats 3] [--json bench.json] ...

See :mod:`dermogaze.bench` for what is measured and ``benchmarks/baseline.py`` for the baseline.
"""

from __future__ import annotations

import sys

from dermogaze.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
