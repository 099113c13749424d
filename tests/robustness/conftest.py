"""The robustness tier: the ``dermogaze`` command line against crafted bad inputs and faults, as a user meets them.

Every case runs ``python -m dermogaze ...`` in subprocesses (:mod:`.cli_probe`) and is a test id; the modules
are the classes of defect an outside user meets:

* ``data-loss`` (``test_data_loss.py``): a fault or a mistake must not destroy or corrupt what is on disk:
  SIGKILL at epoch-end write boundaries then ``--resume``, two ``train`` on one folder, a fresh ``train`` over an
  earlier run's ``best.pt``, a failed re-``prepare`` over a good cache, two images whose names map to one record.
* ``wrong-results`` (``test_wrong_results.py``): input that would silently give wrong numbers must be refused (or
  read right): 16-bit PNGs, Part 2 feature values outside [0, 1], NaN checkpoints, nonsense hyperparameters, an
  empty validation split.
* ``tracebacks`` (``test_tracebacks.py``): user errors must end in one ``dermogaze: error:`` line, never a
  traceback: bad overrides and flags, ``--out`` under or equal to a file, closed pipes, decompression bombs,
  broken images and checkpoints, missing caches and splits.
* ``network`` (``test_network.py``): what is on disk must not need the network: resume / evaluate / explain of a
  run configured with ``model.weights=imagenet`` while downloads fail.
* ``server`` (``test_server.py``, over HTTP to a ``dermogaze serve`` subprocess: :mod:`.server_probe`): every request
  gets a correct result or one clear error and the server keeps serving; its memory stays bounded under 20 clients
  at once; a stopped server leaves no file.
* ``bounds`` (``test_bounds.py``): a number no machine could finish or hold (a billion bootstrap resamples, a
  100 000 px cache, 10^12 epochs, a scanpath of raw gaze samples) is refused before any work, with its limit and
  why; a value at its limit runs.
* ``messages`` (``test_messages.py``): a refusal says what is wrong in the user's terms, in its one line: label
  spellings, implausible ages, empty folders, repeated ids or columns, byte-order marks, a bootstrap too small
  to mean anything, an empty preset list.
* ``checkpoints`` (``test_checkpoints.py``): a checkpoint with one field wrong (calibration, structures,
  normalisation, input size, weights, progress, resume state) or a file that is not one is refused by every reader
  (evaluate, explain, predict, export, serve, ``train --resume``) in one line naming the file and the field.
* ``special-files`` (``test_special_files.py``): outputs that are devices, FIFOs, sockets or folders are refused and
  kept; such inputs are named as what they are, without blocking; a full disk loses nothing; two ``prepare`` into
  one folder: the second is refused naming the first's pid.

The figure of the tier, clean / total per class, closes pytest's report (:func:`pytest_terminal_summary`).
Cases that train beyond the shared tiny run are marked ``slow``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from .cli_probe import Probe

#: The class of defect of each test module.
CLASSES = {
    "test_data_loss.py": "data-loss",
    "test_wrong_results.py": "wrong-results",
    "test_tracebacks.py": "tracebacks",
    "test_network.py": "network",
    "test_server.py": "server",
    "test_bounds.py": "bounds",
    "test_messages.py": "messages",
    "test_checkpoints.py": "checkpoints",
    "test_special_files.py": "special-files",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every case of this folder ``robustness``: ``make test`` leaves the tier to ``make test-robustness``."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.robustness)


@pytest.fixture(scope="session")
def probe_session(tmp_path_factory: pytest.TempPathFactory) -> Probe:
    """One :class:`~.cli_probe.Probe` per session: the scratch folder and the shared inputs (built on first use).

    The package under test is this checkout's, or the one in the folder ``$DERMOGAZE_PROBE_SRC`` names (the
    ``src`` of another checkout: how many cases an older version passes, for a before/after count per class).
    """
    import dermogaze

    src = os.environ.get("DERMOGAZE_PROBE_SRC") or Path(dermogaze.__file__).resolve().parents[1]
    return Probe(sys.executable, Path(src), tmp_path_factory.mktemp("robustness"))


@pytest.fixture
def probe(probe_session: Probe) -> Probe:
    """The session's probe, its list of commands emptied for this case."""
    probe_session.commands = []
    return probe_session


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Clean / total per class of the robustness cases that ran: a case is clean when its test passed."""
    clean: dict[str, bool] = {}  # node id -> passed, with no failure or error in any phase
    for outcome in ("passed", "failed", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            if outcome != "passed" or report.when == "call":
                clean[report.nodeid] = clean.get(report.nodeid, True) and outcome == "passed"
    counts: dict[str, list[int]] = {}
    for nodeid, ok in clean.items():
        path = Path(nodeid.split("::")[0])
        if "robustness" in path.parts and path.name in CLASSES:
            clean_total = counts.setdefault(CLASSES[path.name], [0, 0])
            clean_total[0] += ok
            clean_total[1] += 1
    if counts:
        parts = [f"{cls} {counts[cls][0]}/{counts[cls][1]}" for cls in CLASSES.values() if cls in counts]
        overall = f"{sum(c for c, _ in counts.values())}/{sum(t for _, t in counts.values())}"
        terminalreporter.write_line(f"robustness, clean / total: {', '.join(parts)}; overall {overall}")
