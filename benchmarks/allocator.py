"""Does keeping freed memory in glibc's malloc (dermogaze.allocator) make the CPU commands faster?

Run by hand from a repository checkout (never timed in tests; the runs alternate, on a quiet machine)::

    .venv/bin/python benchmarks/allocator.py [--out runs/allocator] [--epochs 3] [--repeats 3] [--threads 1 2]
        [--summary]

The script writes and prepares the demo's synthetic dataset (:data:`dermogaze.experiments.demo.run.DEMO_DATA`) into
``OUT/data`` (reused when there), then runs, each in a fresh ``python -m dermogaze`` process, ``--repeats`` times
in turn for every thread count and allocator setting:

* ``train --preset demo`` for ``--epochs`` epochs (the demo trains 14), and
* ``evaluate`` of that run's ``best.pt`` on the test split (160 images, deletion, insertion and view stability on
  the first 16, as the demo: inference, not training),

under three settings of the C allocator:

* ``glibc defaults``: ``DERMOGAZE_ALLOCATOR=system``;
* ``freed memory kept``: what every command does (:func:`dermogaze.allocator.keep_freed_memory`);
* ``trim threshold alone``: ``MALLOC_TRIM_THRESHOLD_`` set as dermogaze sets it, without the mmap threshold (glibc
  then stops raising that threshold, and every block above 128 KiB is mapped and unmapped: why both are set).

For each it reports the median wall time, CPU time (user and system), minor page faults and peak resident memory of
the process (``os.wait4``), and the ratio of each to glibc's defaults. Without ``--summary`` the table is printed;
with it, ``benchmarks/results/allocator.md`` and ``.json`` are written.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmarks
from bench_train import _cpu_name, _load_average  # noqa: E402
from dermogaze.allocator import MMAP_THRESHOLD, OPT_OUT, TRIM_THRESHOLD  # noqa: E402
from dermogaze.experiments.demo.run import DEMO_DATA, DEMO_FAITHFULNESS, prepare_demo_data  # noqa: E402
from dermogaze.files import write_json, write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

#: Setting name → the environment variables that make it.
SETTINGS: dict[str, dict[str, str]] = {
    "glibc defaults": {OPT_OUT: "system"},
    "freed memory kept": {},
    "trim threshold alone": {"MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)},
}
#: What each process reports, and how it is printed.
FIGURES = {"wall_s": "wall s", "user_s": "user s", "sys_s": "system s", "minor_faults": "minor faults",
           "max_rss_mb": "peak RSS MB"}


def measure(argv: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``python -m dermogaze ARGV`` and return its wall time and the resources of that process alone."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dermogaze", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"dermogaze {shlex.join(argv)} failed ({proc.returncode}):\n{stderr[-2000:]}")
    return {"wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime, "minor_faults": usage.ru_minflt,
            "max_rss_mb": usage.ru_maxrss / 1024}


def run(out: Path, epochs: int, repeats: int, threads: list[int]) -> dict[str, Any]:
    """Every (command, threads, setting) ``repeats`` times, alternating; the medians."""
    cache = prepare_demo_data(out / "data", DEMO_DATA, progress=False)
    samples: dict[tuple[str, int, str], list[dict[str, float]]] = {}
    for repeat in range(repeats):
        for n in threads:
            for setting, extra in SETTINGS.items():
                env = {k: v for k, v in os.environ.items() if k != OPT_OUT and not k.startswith("MALLOC_")}
                env.update(extra, OMP_NUM_THREADS=str(n))
                folder = out / f"run_{n}t_{setting.replace(' ', '_')}"
                commands = {
                    "train": ["train", "--preset", "demo", "--data", str(cache), "--out", str(folder), "--device",
                              "cpu", "--workers", "0", "--no-progress", "--overwrite", "-o", f"train.epochs={epochs}"],
                    "evaluate": ["evaluate", "--checkpoint", str(folder / "best.pt"), "--split", "test", "--device",
                                 "cpu", "--out", str(folder / "eval"), "--faithfulness", str(DEMO_FAITHFULNESS),
                                 "--no-progress"],
                }
                for command, argv in commands.items():
                    figures = measure(argv, env)
                    samples.setdefault((command, n, setting), []).append(figures)
                    print(f"repeat {repeat + 1}/{repeats}, {n} thread(s), {setting}: {command} "
                          f"{figures['wall_s']:.1f} s", flush=True)
    rows = []
    for (command, n, setting), runs in samples.items():
        median = {key: statistics.median(r[key] for r in runs) for key in FIGURES}
        rows.append({"command": command, "threads": n, "setting": setting, "runs": len(runs), **median})
    for row in rows:
        base = next(r for r in rows if (r["command"], r["threads"], r["setting"])
                    == (row["command"], row["threads"], "glibc defaults"))
        row["wall_ratio"] = row["wall_s"] / base["wall_s"]
        row["cpu_ratio"] = (row["user_s"] + row["sys_s"]) / (base["user_s"] + base["sys_s"])
    return {"rows": rows}


def table(rows: list[dict[str, Any]]) -> str:
    head = ["command", "threads", "setting", *FIGURES.values(), "wall / defaults", "CPU / defaults"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["command"], str(r["threads"]), r["setting"], f"{r['wall_s']:.1f}", f"{r['user_s']:.1f}",
                 f"{r['sys_s']:.2f}", f"{r['minor_faults']:,.0f}", f"{r['max_rss_mb']:.0f}", f"{r['wall_ratio']:.2f}",
                 f"{r['cpu_ratio']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="allocator", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/allocator"), help="data and runs")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of each run (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats (default 3): medians")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="OMP_NUM_THREADS of the runs")
    parser.add_argument("--summary", action="store_true", help="write benchmarks/results/allocator.{md,json}")
    args = parser.parse_args(argv)
    before = _load_average()
    result = run(args.out, args.epochs, args.repeats, args.threads)
    command = "python benchmarks/allocator.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    result.update(command=command, cpu=_cpu_name(), load_average=[before, _load_average()],
                  written=time.strftime("%Y-%m-%d %H:%M"), epochs=args.epochs, repeats=args.repeats,
                  mmap_threshold=MMAP_THRESHOLD, trim_threshold=TRIM_THRESHOLD)
    text = table(result["rows"])
    print(text)
    if args.summary:
        write_json(result, RESULTS / "allocator.json")
        write_text("\n".join([
            "# Keeping freed memory in glibc's malloc: the CPU commands side by side",
            "",
            f"Command: `{command}`  ",
            f"Machine: {result['cpu']}; load average before/after {before} / {result['load_average'][1]}; "
            f"written {result['written']}.",
            "",
            f"The demo preset on the demo's synthetic data: `dermogaze train` for {args.epochs} epochs, then "
            "`dermogaze evaluate` of its `best.pt` on the 160 test images (the costly explanation measures on 16, "
            f"as the demo), each in a fresh process, the settings alternating, the median of {args.repeats} runs. "
            "`freed memory kept` is what every command does "
            f"(`dermogaze.allocator`: glibc's mmap threshold fixed at {MMAP_THRESHOLD >> 20} MiB, its trim threshold "
            f"at {TRIM_THRESHOLD:,} bytes); `glibc defaults` is `{OPT_OUT}=system`; `trim threshold alone` sets "
            "`MALLOC_TRIM_THRESHOLD_` only. Ratios against glibc's defaults (below 1: faster).",
            "",
            text,
            "",
        ]), RESULTS / "allocator.md")
        print(f"wrote {RESULTS / 'allocator.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
