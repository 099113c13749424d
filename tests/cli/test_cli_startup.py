"""``dermogaze --help`` and ``--version`` start at once: they import no library code and no heavy dependency; nor
does ``dermogaze COMMAND --help`` (``ACTION --help`` of a command group), for any command.

The parser lists every command by its help line and adds only the arguments of the command that ``argv`` names
(its module under ``dermogaze.cli``); each command imports the library code it uses when it runs. The choices and
defaults a command's parser shows come from :mod:`dermogaze.config` (``bench``'s from
``benchmarks/bench_train_options.py``). The checks look at ``sys.modules`` of a fresh interpreter, not at a clock.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dermogaze.cli import COMMANDS, build_parser, main

#: Dependencies that a start-up must not import.
HEAVY = ("torch", "numpy", "matplotlib", "sklearn", "pandas", "gradio", "optuna", "scipy", "skimage", "PIL")
#: The checkout, where ``dermogaze bench`` finds its script.
REPO_ROOT = Path(__file__).resolve().parents[2]

#: Run in a fresh interpreter: import the package and the command line, build the parser, run ``--version``
#: and ``--help``, and print the heavy modules loaded.
_PROBE = f"""
import contextlib, io, json, sys
import dermogaze
import dermogaze.cli
from dermogaze.cli import build_parser, main
from dermogaze.cli import apps, common, data, experiments, explain, model, train  # the modules themselves are light
build_parser()
for argv in (["--version"], ["--help"]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as exc:
            assert exc.code == 0, (argv, exc.code)
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in {HEAVY!r})))
"""


#: Run in a fresh interpreter: ``dermogaze ARGV... --help``, and print the heavy modules loaded.
_HELP_PROBE = f"""
import contextlib, io, json, sys
from dermogaze.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        main([*sys.argv[1:], "--help"])
    except SystemExit as exc:
        assert exc.code == 0, exc.code
assert out.getvalue().startswith("usage: "), out.getvalue()
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in {HEAVY!r})))
"""


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


def _help_targets() -> list[tuple[str, ...]]:
    """Every command, and every action of a command group (``data synth``, ``sweep show``...)."""
    targets = []
    for name in COMMANDS:
        targets.append((name,))
        command = next(a for a in build_parser(name)._actions if a.dest == "command").choices[name]
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                targets.extend((name, sub) for sub in action.choices)
    return targets


def test_start_up_imports_no_heavy_dependency():
    proc = _run("-c", _PROBE)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []


@pytest.mark.parametrize("argv", _help_targets(), ids=" ".join)
def test_command_help_imports_no_heavy_dependency(argv):
    proc = _run("-c", _HELP_PROBE, *argv)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []


def test_help_lists_every_command():
    proc = _run("-m", "dermogaze", "--help")
    assert proc.returncode == 0, proc.stderr
    listed = re.findall(r"^    (\S+)", proc.stdout, flags=re.MULTILINE)  # "    NAME   help line"
    assert listed == list(COMMANDS)


def test_version():
    proc = _run("-m", "dermogaze", "--version")
    assert proc.returncode == 0 and proc.stdout.startswith("dermogaze "), proc


def test_parser_lists_every_command_without_arguments():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == list(COMMANDS)
    assert all(len(p._actions) == 1 for p in sub.choices.values())  # -h only: no command module imported


@pytest.mark.parametrize("command", [name for name in COMMANDS if name != "bench"])  # bench's --help: test_bench
def test_each_command_builds_its_arguments(command, capsys):
    sub = next(a for a in build_parser(command)._actions if a.dest == "command")
    assert sub.choices[command]._actions[1:], command  # more than -h
    with pytest.raises(SystemExit) as exc:
        main(["-v", command, "--help"])  # a top-level flag before the command
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: dermogaze {command} ")


def test_model_help_names_the_registered_variants():
    """``model summary --help`` names the variants from the configuration's list, which must be the registry's."""
    from dermogaze.config import MODEL_NAMES
    from dermogaze.models import list_models

    assert list(MODEL_NAMES) == list_models()


def test_applying_a_model_imports_no_scikit_learn():
    """``predict``, ``explain`` and ``serve`` apply a model: scikit-learn is imported by the metrics that use it,
    when they compute (evaluation, training, the out-of-distribution fit), not by these commands' modules."""
    probe = ("import json, sys\nimport dermogaze.apps.predict, dermogaze.explain.run, dermogaze.apps.serve\n"
             "print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] == 'sklearn')))")
    proc = _run("-c", probe)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []
